"""Delivery's promise (tracking/delivery.py): every spooled record reaches MLflow once, in order,
whatever fails on the way. Checked against the in-process stand-in (tests/mlflow_standin.py),
which holds every metric point it was sent and fails on demand; without conftest.py, so that
`make mutate` runs this whole file (the slow outage tests included) for each mutant in
seconds. tests/test_tracking.py checks the same code against the real server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from face_generation.config import compose
from face_generation.tracking.delivery import (
    CANDIDATE_TAG,
    CHAMPION_HEADING,
    EXPERIMENT_KIND_TAG,
    LOCAL_KEY_TAG,
    REFUSAL_TAG,
    SETTINGS_TAG,
    TRAINING_KIND,
    crown_champion,
    deliver_spool,
    http_settings,
)
from face_generation.tracking.spool import Event, Spool, new_local_key
from tests.mlflow_standin import Fault, MlflowStandin, MlflowState, running_standin

EXPERIMENT, START_MS = "delivery", 1_000
REGISTERED = "face_generation-tiny"
BATCH_PATH = "runs/log-batch"
DATASET = {  # a dataset record as training spools it
    "kind": "dataset",
    "name": "faces",
    "digest": "d41d8cd9",
    "source": "data/packed",
    "profile": {"rows": 10},
    "context": "training",
}


@pytest.fixture
def standin() -> Iterator[MlflowStandin]:
    yield from running_standin()


@pytest.fixture(scope="module")
def tracking() -> DictConfig:
    """The default `tracking` group (5 s requests, no HTTP retries: the spool retries)."""
    return compose("config", []).tracking


def with_settings(tracking: DictConfig, **values: Any) -> DictConfig:
    merged = OmegaConf.merge(tracking, values)
    assert isinstance(merged, DictConfig)
    return merged


def new_spool(root: Path, standin: MlflowStandin, **meta: Any) -> Spool:
    return Spool.create(
        root,
        new_local_key(),
        {
            "tracking_uri": standin.uri,
            "experiment": EXPERIMENT,
            "run_name": "tiny",
            "run_id": None,
            "start_time": START_MS,
            **meta,
        },
    )


def metrics(step: int, **values: float) -> Event:
    return {"kind": "metrics", "step": step, "timestamp": 10_000 + step, "metrics": values}


def losses(steps: Sequence[int]) -> list[Event]:
    return [metrics(step, loss=1.0 / (step + 1), lr=0.1 + step) for step in steps]


def add_artifact(spool: Spool, name: str, content: bytes, to: str | None) -> Event:
    path = spool.reserve_dir("files") / name
    path.write_bytes(content)
    return spool.append({"kind": "artifact", "path": str(path.relative_to(spool.dir)), "to": to})


def add_image(spool: Spool, key: str, step: int, timestamp: int) -> Event:
    path = spool.reserve_dir("files") / "grid.png"
    Image.new("RGB", (4, 4), (step, 0, 0)).save(path)
    record = {"kind": "image", "key": key, "step": step, "timestamp": timestamp}
    return spool.append({**record, "path": str(path.relative_to(spool.dir))})


def add_model(spool: Spool, name: str, registered: str | None = REGISTERED, **extra: Any) -> Event:
    """A model folder as mlflow.pyfunc.save_model leaves it (an MLmodel file and weights)."""
    folder = spool.reserve_dir("models") / name
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors: {}\nmodel_uuid: local\n")
    (folder / "weights.bin").write_bytes(b"\x01\x02")
    record = {
        "kind": "model",
        "path": str(folder.relative_to(spool.dir)),
        "name": name,
        "registered_model_name": registered,
        "version_description": "trained for 3 steps",
        "version_tags": {"data_hash": "h1"},
        "model_description": "faces from noise",
        "step": 3,
        **extra,
    }
    return spool.append(record)


def version_record(fd: str, champion: bool = True) -> Event:
    return {
        "kind": "version",
        "registered_model_name": REGISTERED,
        "tags": {"fd": fd, "data_hash": "h1", CANDIDATE_TAG: "true"},
        "champion": {"alias": "champion", "metric": "fd", "data_hash": "h1"} if champion else None,
    }


def fill(spool: Spool) -> None:
    """One record of every kind, as a training and its evaluation log them."""
    spool.append({"kind": "params", "params": {"lr": "0.1", "model.depth": "3"}})
    spool.append({"kind": "tags", "tags": {"phase": "train"}})
    for record in losses(range(3)):
        spool.append(record)
    add_artifact(spool, "grid.png", b"png bytes", "samples")
    add_image(spool, "samples/grid", 2, 20_000)
    spool.append(DATASET)
    add_model(spool, "generator")
    spool.append({**metrics(3, fd=2.5), "model": "generator"})
    spool.append(version_record("2.5"))
    spool.append({"kind": "status", "status": "FINISHED", "timestamp": 30_000})


def deliver(spool: Spool, tracking: DictConfig) -> list[Event]:
    return deliver_spool(spool, tracking)


def artifact_names(state: MlflowState, run_id: str) -> list[str]:
    """The run's artifacts and its models' files, without ids (an image's name ends in a uuid)."""
    names = []
    for path in state.artifacts:
        path = re.sub(rf"^\d+/{run_id}/artifacts/", "", path)
        path = re.sub(r"^\d+/models/m-[0-9a-f]{32}/artifacts/", "model:", path)
        names.append(re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<uuid>", path))
    return sorted(names)


def snapshot(state: MlflowState) -> dict[str, Any]:
    """What a user sees of the run in MLflow, comparable between two deliveries."""
    run = state.only_run()
    models = [m for m in state.logged_models.values() if m["status"] == "LOGGED_MODEL_READY"]
    return {
        "metrics": sorted((p["key"], p["step"], p["value"], p["timestamp"]) for p in run.metrics),
        "model metrics": [p["key"] for p in run.metrics if p["model_id"] is not None],
        "params": run.params,
        "tags": {
            k: v for k, v in run.tags.items() if k not in ("mlflow.loggedImages", LOCAL_KEY_TAG)
        },
        "local key tag": LOCAL_KEY_TAG in run.tags,
        "status": (run.info["status"], run.info.get("end_time"), run.info["start_time"]),
        # an image's thumbnail (.webp) is made after its .png: see the outage test
        "artifacts": [n for n in artifact_names(state, run.run_id) if not n.endswith(".webp")],
        "datasets": run.datasets,
        "ready models": [(m["name"], m["source_run_id"] == run.run_id) for m in models],
        "versions": {
            name: [(v["version"], v["tags"], v.get("description")) for v in versions]
            for name, versions in state.versions.items()
        },
        "aliases": state.aliases,
        "experiments": [(e["name"], e.get("tags")) for e in state.experiments.values()],
    }


# Everything, in order. --------------------------------------------------------------------------


def test_every_kind_of_record_reaches_mlflow_in_order(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    fill(spool)
    last = spool.next_seq - 1
    spool = reopened(spool)  # records read back from disk, as sync reads them
    assert deliver(spool, tracking) == []

    state = standin.state
    run = state.only_run()
    assert (spool.run_id, spool.meta["experiment_id"]) == (run.run_id, run.info["experiment_id"])
    assert (spool.pending, spool.delivered_seq) == ([], last)
    assert not (spool.dir / "files").exists() or not any((spool.dir / "files").iterdir())
    (experiment,) = state.experiments.values()
    assert experiment["name"] == EXPERIMENT
    assert experiment["tags"] == [{"key": EXPERIMENT_KIND_TAG, "value": TRAINING_KIND}]
    assert run.info["run_name"] == "tiny" and run.info["start_time"] == START_MS
    assert run.tags[LOCAL_KEY_TAG] == spool.key and run.tags["phase"] == "train"
    assert run.params == {"lr": "0.1", "model.depth": "3"}
    assert state.history(run.run_id, "loss") == [(s, 1.0 / (s + 1)) for s in range(3)]
    assert state.history(run.run_id, "lr") == [(s, 0.1 + s) for s in range(3)]
    assert [p["timestamp"] for p in run.metrics[:2]] == [10_000, 10_000]
    assert (run.info["status"], run.info["end_time"]) == ("FINISHED", 30_000)

    assert state.artifacts[
        f"{experiment['experiment_id']}/{run.run_id}/artifacts/samples/grid.png"
    ] == (b"png bytes")
    names = artifact_names(state, run.run_id)
    assert "images/samples~grid+step+2+timestamp+20000+<uuid>.png" in names
    assert [n for n in names if n.startswith("model:")] == ["model:MLmodel", "model:weights.bin"]

    (dataset,) = run.datasets
    assert dataset == {
        "tags": [{"key": "mlflow.data.context", "value": "training"}],
        "dataset": {
            "name": "faces",
            "digest": "d41d8cd9",
            "source_type": "local",
            "source": json.dumps({"uri": "data/packed"}),
            "profile": json.dumps({"rows": 10}),
        },
    }

    (model,) = state.logged_models.values()
    assert (model["name"], model["source_run_id"], model["status"]) == (
        "generator",
        run.run_id,
        "LOGGED_MODEL_READY",
    )
    assert {"key": LOCAL_KEY_TAG, "value": f"{spool.key}/9"} in model["tags"]
    assert run.model_outputs == [{"model_id": model["model_id"], "step": 3}]
    uploaded = state.artifacts[
        f"{model['artifact_uri'].removeprefix('mlflow-artifacts:/')}/MLmodel"
    ]
    assert f"run_id: {run.run_id}" in uploaded.decode()
    assert f"model_id: {model['model_id']}" in uploaded.decode()
    assert [p["model_id"] for p in run.metrics if p["key"] == "fd"] == [model["model_id"]]
    assert [p["model_id"] for p in run.metrics if p["key"] == "loss"] == [None] * 3

    assert state.registered[REGISTERED]["description"] == "faces from noise"
    (version,) = state.versions[REGISTERED]
    assert (version["source"], version["run_id"]) == (f"models:/{model['model_id']}", run.run_id)
    assert version["tags"] == {"data_hash": "h1", "fd": "2.5", CANDIDATE_TAG: "true"}
    assert version["description"].startswith("trained for 3 steps\n\n" + CHAMPION_HEADING)
    assert state.aliases[REGISTERED] == {"champion": "1"}
    assert spool.model_state(9) == {
        "model_id": model["model_id"],
        "artifact_location": model["artifact_uri"],
        "uploaded": True,
        "version": "1",
    }


# Outages. ---------------------------------------------------------------------------------------


def acknowledged_but_missing(spool: Spool, records: list[Event], state: MlflowState) -> list[Event]:
    """The acknowledged metrics, params and tags records that the server does not hold."""
    run = state.runs.get(spool.run_id or "")
    points = {(p["key"], p["step"], p["value"]) for p in run.metrics} if run else set()
    missing = []
    for record in records:
        if record["seq"] > spool.delivered_seq:
            break
        if record["kind"] == "metrics":
            held = all((k, record["step"], v) in points for k, v in record["metrics"].items())
        elif record["kind"] in ("params", "tags"):
            logged = (run.params if record["kind"] == "params" else run.tags) if run else {}
            held = record[record["kind"]].items() <= logged.items()
        else:
            continue
        if not held:
            missing.append(record)
    return missing


def reopened(spool: Spool) -> Spool:
    spool.release()
    again = Spool.open(spool.dir.parent, spool.key)
    assert again is not None
    return again


def test_a_server_that_is_down_keeps_every_record_pending(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    spool.append(losses([0])[0])
    standin.stop()  # connections refused
    with pytest.raises(MlflowException):
        deliver(spool, tracking)
    assert (spool.delivered_seq, [r["seq"] for r in spool.pending], spool.run_id) == (0, [1], None)
    standin.start()  # the same port again
    deliver(spool, tracking)
    assert standin.state.history(str(spool.run_id), "loss") == [(0, 1.0)]


def test_a_failure_mid_way_keeps_the_cursor_on_the_last_acknowledged_request(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    for record in losses(range(2)):
        spool.append(record)
    add_artifact(spool, "a.txt", b"a", None)
    spool.append(losses([2])[0])
    standin.fail(Fault.ERROR, "mlflow-artifacts")
    with pytest.raises(MlflowException):
        deliver(spool, tracking)
    assert (spool.delivered_seq, [r["seq"] for r in spool.pending]) == (2, [3, 4])
    assert (spool.dir / spool.pending[0]["path"]).is_file()  # kept until acknowledged
    assert standin.state.history(str(spool.run_id), "loss") == [(0, 1.0), (1, 0.5)]


@pytest.mark.slow  # waits out MLflow's shortest timeout, 1 s
def test_a_request_that_hangs_ends_at_the_request_timeout(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    spool.append(losses([0])[0])
    standin.fail(Fault.HANG, BATCH_PATH)
    with pytest.raises(MlflowException, match="timed out"):
        deliver(spool, with_settings(tracking, request_timeout_s=1))
    assert [r["seq"] for r in spool.pending] == [1]


def test_retries_are_mlflows_only_when_configured(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """request_max_retries reaches MLflow's HTTP client (which retries a 503 at once here)."""
    for name in ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"):
        monkeypatch.setenv(name, "0")
    spool = new_spool(tmp_path, standin)
    spool.append(losses([0])[0])
    spool.append({"kind": "status", "status": "FINISHED", "timestamp": 5})
    standin.fail(Fault.ERROR, BATCH_PATH)
    with pytest.raises(MlflowException):
        deliver(spool, tracking)  # the default: no retry, the spool retries later
    standin.fail(Fault.ERROR, BATCH_PATH)
    standin.fail(Fault.ERROR, BATCH_PATH)
    deliver(spool, with_settings(tracking, request_max_retries=2))
    assert standin.state.history(str(spool.run_id), "loss") == [(0, 1.0)]
    assert [r.path.endswith(BATCH_PATH) for r in standin.requests].count(True) == 4


def test_uploads_get_the_upload_timeout_and_the_rest_the_request_timeout(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    spool = new_spool(tmp_path, standin)
    fill(spool)
    deliver(spool, with_settings(tracking, request_timeout_s=4.7, upload_timeout_s=123))
    uploads = {r.timeout for r in standin.requests if r.method == "PUT"}
    logging = ("runs/create", BATCH_PATH, "runs/log-inputs", "model-versions/create", "runs/update")
    others = {r.timeout for r in standin.requests if r.path.endswith(logging)}
    assert (uploads, others) == ({"123"}, {"4"})
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"  # put back afterwards
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_http_settings_are_put_back_as_they_were(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    with http_settings(9.9, 3):
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "9"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
        assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
        with http_settings(300, None):
            assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
            assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "9"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
    assert "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT" not in os.environ


# Batches. ---------------------------------------------------------------------------------------


def test_consecutive_metrics_params_and_tags_share_one_request(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    spool.append({"kind": "params", "params": {"a": "1", "b": "2"}})
    for record in losses(range(3)):
        spool.append(record)
    spool.append({"kind": "tags", "tags": {"t": "1"}})
    add_artifact(spool, "a.txt", b"a", "notes")
    spool.append(losses([3])[0])
    spool.append({"kind": "status", "status": "RUNNING", "timestamp": 9})
    spool.append({"kind": "tags", "tags": {"u": "2"}})
    spool = reopened(spool)  # its records as another process reads them from disk
    deliver(spool, tracking)
    assert standin.state.only_run().params == {"a": "1", "b": "2"}
    kinds = [r.path.rsplit("/", 1)[-1] for r in standin.requests if r.method != "GET"]
    assert kinds[-5:] == ["log-batch", "a.txt", "log-batch", "update", "log-batch"]
    assert standin.batch_sizes == [(6, 2, 1), (2, 0, 0), (0, 0, 1)]
    assert standin.state.only_run().tags["u"] == "2"


@pytest.mark.parametrize("before", ["http://127.0.0.1:1", "http://localhost:1"])  # either side
def test_a_spool_sent_to_another_server_remembers_it(
    before: str, standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin, tracking_uri=before)  # nothing listens there
    spool.append(losses([0])[0])
    deliver_spool(spool, tracking, standin.uri)
    assert spool.meta["tracking_uri"] == standin.uri
    assert json.loads((spool.dir / "run.json").read_text())["tracking_uri"] == standin.uri
    assert standin.state.history(str(spool.run_id), "loss") == [(0, 1.0)]
    spool.append(losses([1])[0])
    deliver_spool(spool, tracking, None)  # no server given: the one it was last sent to
    assert standin.state.history(str(spool.run_id), "loss") == [(0, 1.0), (1, 0.5)]


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ((400, 400, 200), [1000]),
        ((400, 400, 201), [800, 201]),
        ((600, 600), [600, 600]),
        ((1, MAX_ENTITIES_PER_BATCH - 1, 1), [1000, 1]),
    ],
)
def test_a_request_holds_at_most_mlflows_batch_limit(
    sizes: tuple[int, ...],
    expected: list[int],
    standin: MlflowStandin,
    tracking: DictConfig,
    tmp_path: Path,
) -> None:
    spool = new_spool(tmp_path, standin)
    for step, size in enumerate(sizes):
        spool.append(metrics(step, **{f"m{i:04d}": float(i) for i in range(size)}))
    deliver(spool, tracking)
    assert [m for m, _, _ in standin.batch_sizes] == expected
    run = standin.state.only_run()
    assert len(run.metrics) == sum(sizes)
    # metrics that describe no model: nothing is asked of the server before they are sent
    assert not any(path.endswith("runs/get") for path in standin.paths())


def test_params_and_tags_count_towards_the_limit(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    spool.append(metrics(0, **{f"m{i:03d}": 0.0 for i in range(900)}))
    spool.append({"kind": "params", "params": {f"p{i:02d}": "1" for i in range(60)}})
    spool.append({"kind": "tags", "tags": {f"t{i:02d}": "1" for i in range(60)}})
    deliver(spool, tracking)
    assert standin.batch_sizes == [(900, 60, 0), (0, 0, 60)]


def test_a_record_larger_than_a_batch_goes_alone(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    spool.append(losses([0])[0])
    spool.append(metrics(1, **{f"m{i:04d}": 0.0 for i in range(MAX_ENTITIES_PER_BATCH + 1)}))
    spool.append(losses([2])[0])
    assert deliver(spool, tracking) == []
    # MLflow's client splits it in two requests; the cursor moves once both are answered
    assert standin.batch_sizes == [(2, 0, 0), (1000, 0, 0), (1, 0, 0), (2, 0, 0)]


# Records the server refuses. --------------------------------------------------------------------


def test_a_refused_record_is_kept_aside_and_blocks_nothing(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    """A resumed run that logs a param with another value: MLflow refuses it (400); the other
    records of its batch are sent one by one, and everything after it goes on."""
    spool = new_spool(tmp_path, standin)
    spool.append({"kind": "params", "params": {"lr": "0.1"}})
    deliver(spool, tracking)
    first = spool.append(losses([0])[0])
    changed = spool.append({"kind": "params", "params": {"lr": "0.2"}})
    last = spool.append(losses([1])[0])
    add_artifact(spool, "a.txt", b"a", None)
    assert deliver(spool, tracking) == [changed]
    assert (spool.pending, spool.delivered_seq) == ([], spool.next_seq - 1)
    run = standin.state.only_run()
    assert run.params == {"lr": "0.1"}
    assert standin.state.history(run.run_id, "loss") == [(0, 1.0), (1, 0.5)]
    (kept,) = [json.loads(line) for line in spool.rejected_path.read_text().splitlines()]
    assert kept["seq"] == changed["seq"] and "Changing param values is not allowed" in kept["error"]
    assert standin.batch_sizes[-4:] == [(4, 1, 0), (2, 0, 0), (0, 1, 0), (2, 0, 0)]
    assert (first["seq"], last["seq"]) == (2, 4)


def test_an_outage_while_sending_one_by_one_stops_at_that_record(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    spool.append({"kind": "params", "params": {"lr": "0.1"}})
    deliver(spool, tracking)
    spool.append(losses([0])[0])
    spool.append({"kind": "params", "params": {"lr": "0.2"}})
    spool.append(losses([1])[0])
    standin.fail(Fault.ERROR, BATCH_PATH, at=3)  # the batch, the first record, then this
    with pytest.raises(MlflowException):
        deliver(spool, tracking)
    assert (spool.delivered_seq, [r["seq"] for r in spool.pending]) == (2, [3, 4])
    assert not spool.rejected_path.exists()


@pytest.mark.parametrize(("status", "refused"), [(400, True), (403, False), (503, False)])
def test_an_upload_refused_as_invalid_is_kept_aside_and_a_failing_one_stays_pending(
    status: int, refused: bool, standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    upload = add_artifact(spool, "a.txt", b"a", None)
    spool.append(losses([0])[0])
    standin.fail(Fault.ERROR, "mlflow-artifacts", status=status)
    standin.fail(Fault.ERROR, "mlflow-artifacts", status=status)  # and again, alone
    if refused:
        assert deliver(spool, tracking) == [upload]
        assert standin.state.history(str(spool.run_id), "loss") == [(0, 1.0)]
    else:
        with pytest.raises(Exception, match=str(status)):
            deliver(spool, tracking)
        assert [r["seq"] for r in spool.pending] == [1, 2]


# The run and its experiment. --------------------------------------------------------------------


def test_a_run_created_before_a_lost_reply_is_found_by_its_local_key(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    other = new_spool(tmp_path, standin)  # another run of the same experiment
    other.append(losses([0])[0])
    deliver(other, tracking)
    spool = new_spool(tmp_path, standin)
    spool.append(losses([0])[0])
    standin.fail(Fault.LOST_REPLY, "runs/create")
    with pytest.raises(MlflowException):
        deliver(spool, tracking)
    assert spool.run_id is None
    deliver(spool, tracking)
    assert len(standin.state.runs) == 2 and spool.run_id != other.run_id
    assert standin.state.run(str(spool.run_id)).tags[LOCAL_KEY_TAG] == spool.key
    assert standin.state.history(str(spool.run_id), "loss") == [(0, 1.0)]


def test_a_run_known_from_a_checkpoint_is_continued(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    first = new_spool(tmp_path, standin)
    first.append(losses([0])[0])
    deliver(first, tracking)
    run_id = str(first.run_id)
    resumed = new_spool(tmp_path, standin, run_id=run_id)  # no experiment id yet
    resumed.append(losses([1])[0])
    deliver(resumed, tracking)
    assert resumed.meta["experiment_id"] == first.meta["experiment_id"]
    assert standin.state.history(run_id, "loss") == [(0, 1.0), (1, 0.5)]
    assert len(standin.state.runs) == 1 and "runs/create" not in " ".join(standin.paths()[-3:])

    gone = new_spool(tmp_path, standin, run_id="0" * 32)  # a run this server never had
    gone.append(losses([0])[0])
    with pytest.raises(MlflowException, match="not found"):
        deliver(gone, tracking)
    assert gone.pending and "experiment_id" not in gone.meta


@pytest.mark.parametrize(
    ("tags", "kind"),
    [([], TRAINING_KIND), ([{"key": EXPERIMENT_KIND_TAG, "value": "genai"}], "genai")],
)
def test_an_existing_experiment_is_marked_as_training_unless_a_user_chose(
    tags: list[dict[str, str]],
    kind: str,
    standin: MlflowStandin,
    tracking: DictConfig,
    tmp_path: Path,
) -> None:
    standin.state.create_experiment({"name": EXPERIMENT, "tags": tags})
    spool = new_spool(tmp_path, standin)
    spool.append(losses([0])[0])
    deliver(spool, tracking)
    (experiment,) = standin.state.experiments.values()
    assert experiment["tags"] == [{"key": EXPERIMENT_KIND_TAG, "value": kind}]
    assert spool.meta["experiment_id"] == experiment["experiment_id"]


def test_a_deleted_experiment_is_named_and_nothing_is_sent(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    experiment_id = standin.state.create_experiment({"name": EXPERIMENT})["experiment_id"]
    standin.state.delete_experiment({"experiment_id": experiment_id})
    spool = new_spool(tmp_path, standin)
    spool.append(losses([0])[0])
    with pytest.raises(MlflowException, match=f"experiment '{EXPERIMENT}' is deleted; restore"):
        deliver(spool, tracking)
    assert standin.state.runs == {} and spool.pending


def test_an_experiment_created_meanwhile_by_another_process_is_used(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    def another_process(state: MlflowState) -> None:
        state.create_experiment({"name": EXPERIMENT})

    spool = new_spool(tmp_path, standin)
    spool.append(losses([0])[0])
    standin.fail(Fault.ERROR, "experiments/create", status=400, meanwhile=another_process)
    deliver(spool, tracking)
    (experiment,) = standin.state.experiments.values()
    assert standin.state.only_run().info["experiment_id"] == experiment["experiment_id"]
    assert experiment["tags"] == [{"key": EXPERIMENT_KIND_TAG, "value": TRAINING_KIND}]

    standin.state = MlflowState()  # refused, and still no experiment of that name: raised
    spool = new_spool(tmp_path, standin)
    spool.append(losses([0])[0])
    standin.fail(Fault.ERROR, "experiments/create", status=400)
    with pytest.raises(MlflowException):
        deliver(spool, tracking)
    assert standin.state.experiments == {}


# Status, resume, images, datasets. --------------------------------------------------------------


@pytest.mark.parametrize("status", ["FINISHED", "FAILED", "KILLED", "RUNNING"])
def test_a_status_record_ends_the_run_at_its_time_or_sets_it_running(
    status: str, standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    spool.append({"kind": "status", "status": "KILLED", "timestamp": 500})
    spool.append({"kind": "status", "status": status, "timestamp": 700})
    deliver(spool, tracking)
    info = standin.state.only_run().info
    assert (info["status"], info["end_time"]) == (status, 700 if status != "RUNNING" else 500)


def test_a_resumed_run_sends_only_the_steps_the_server_lacks(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    """The server got steps 0-5 before the crash; the checkpoint was at step 3, so steps 4 and
    5 are logged again (other values, other times): MLflow keeps its points, gets 6 and 7."""
    spool = new_spool(tmp_path, standin)
    for record in losses(range(6)):
        spool.append(record)
    spool.append(metrics(5, other=1.0))
    deliver(spool, tracking)
    spool.append({"kind": "resume", "step": 3})
    for step in range(4, 8):
        spool.append({**metrics(step, loss=-step, lr=-step, other=2.0), "timestamp": 99_000})
    spool = reopened(spool)  # the resumed process reads them from disk
    deliver(spool, tracking)
    run_id = str(spool.run_id)
    assert standin.state.history(run_id, "loss") == [(s, 1.0 / (s + 1)) for s in range(6)] + [
        (6, -6),
        (7, -7),
    ]
    assert standin.state.history(run_id, "other") == [(5, 1.0), (4, 2.0), (6, 2.0), (7, 2.0)]
    assert spool.held_steps == {"loss": {4, 5}, "lr": {4, 5}, "other": {5}}


def test_an_image_already_on_the_server_is_not_sent_again(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    add_image(spool, "grid", 1, 500)
    deliver(spool, tracking)
    add_image(spool, "grid", 1, 500)  # the same (a replay after a lost reply)
    add_image(spool, "grid", 1, 501)  # another time
    add_image(spool, "grid", 2, 500)  # another step
    add_image(spool, "grid/ema", 1, 500)  # another key
    deliver(spool, tracking)
    names = [n for n in artifact_names(standin.state, str(spool.run_id)) if n.endswith(".png")]
    assert names == [
        "images/grid+step+1+timestamp+500+<uuid>.png",
        "images/grid+step+1+timestamp+501+<uuid>.png",
        "images/grid+step+2+timestamp+500+<uuid>.png",
        "images/grid~ema+step+1+timestamp+500+<uuid>.png",
    ]


def test_a_dataset_is_one_input_of_the_run_however_often_it_is_sent(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    dataset = DATASET
    spool.append(dataset)
    standin.fail(Fault.LOST_REPLY, "log-inputs")
    with pytest.raises(MlflowException):
        deliver(spool, tracking)
    deliver(spool, tracking)
    assert len(standin.state.only_run().datasets) == 1


@pytest.mark.parametrize("kind", ["abc", "blob", "hologram", "tweet", "zoo"])  # among the known
def test_an_unknown_record_kind_is_an_error_that_names_the_spool(
    kind: str, standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    spool.append({"kind": kind, "step": 1})
    with pytest.raises(ValueError, match=rf"unknown record kind '{kind}' in {spool.events_path}"):
        deliver(spool, tracking)
    assert spool.pending


# Models and the registry. -----------------------------------------------------------------------


def test_a_model_without_a_registered_name_is_only_logged(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    record = add_model(spool, "encoder", registered=None)
    spool.append({**metrics(1, acc=0.5), "model": "encoder"})
    spool.append({**metrics(2, acc=0.6), "model": "decoder"})  # a name the run never logged
    deliver(spool, tracking)
    (model,) = standin.state.logged_models.values()
    assert (model["name"], model["status"]) == ("encoder", "LOGGED_MODEL_READY")
    assert standin.state.registered == {}
    assert not any("model-versions" in path for path in standin.paths())
    assert spool.model_state(record["seq"]) == {
        "model_id": model["model_id"],
        "artifact_location": model["artifact_uri"],
        "uploaded": True,
    }
    assert [p["model_id"] for p in standin.state.only_run().metrics] == [model["model_id"], None]


def test_a_finished_run_resumed_and_ended_again_registers_no_second_version(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    add_model(spool, "generator")
    deliver(spool, tracking)
    again = add_model(spool, "generator")
    deliver(spool, tracking)
    assert len(standin.state.versions[REGISTERED]) == 1
    assert len(standin.state.logged_models) == 1
    assert spool.model_state(again["seq"]) == {"version": "1"}


def test_a_model_of_another_run_is_a_new_version(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    for run in range(2):
        spool = new_spool(tmp_path, standin)
        add_model(spool, "generator", model_description=f"description {run}")
        deliver(spool, tracking)
    versions = standin.state.versions[REGISTERED]
    assert [v["version"] for v in versions] == ["1", "2"]
    assert versions[1]["run_id"] == spool.run_id
    assert standin.state.registered[REGISTERED]["description"] == "description 0"  # kept


def test_a_registered_model_made_without_a_description_gets_one(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    standin.state.create_registered_model({"name": REGISTERED})
    spool = new_spool(tmp_path, standin)
    add_model(spool, "generator", model_description="faces from noise")
    deliver(spool, tracking)
    assert standin.state.registered[REGISTERED]["description"] == "faces from noise"

    standin.state, standin.requests = MlflowState(), []  # and none when training gave none
    standin.state.create_registered_model({"name": REGISTERED})
    spool = new_spool(tmp_path, standin)
    add_model(spool, "generator", model_description="")
    deliver(spool, tracking)
    assert "description" not in standin.state.registered[REGISTERED]
    assert not any(p.endswith("registered-models/update") for p in standin.paths())


def test_a_failure_to_register_is_raised_and_resumes_after_the_upload(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    record = add_model(spool, "generator")

    def made_then_failed(state: MlflowState) -> None:  # the server failed after making it
        state.create_registered_model({"name": REGISTERED})

    standin.fail(Fault.ERROR, "registered-models/create", status=500, meanwhile=made_then_failed)
    with pytest.raises(MlflowException):
        deliver(spool, tracking)
    assert spool.model_state(record["seq"])["uploaded"] is True
    uploads = sum(r.method == "PUT" for r in standin.requests)
    deliver(spool, tracking)
    assert sum(r.method == "PUT" for r in standin.requests) == uploads  # not uploaded again
    assert len(standin.state.versions[REGISTERED]) == 1
    assert standin.state.versions[REGISTERED][0]["tags"] == {"data_hash": "h1"}
    assert standin.state.versions[REGISTERED][0]["description"] == "trained for 3 steps"


def test_a_version_made_before_a_lost_reply_is_found_and_not_made_again(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    record = add_model(spool, "generator")
    standin.fail(Fault.LOST_REPLY, "model-versions/create")
    with pytest.raises(MlflowException):
        deliver(spool, tracking)
    assert "version" not in spool.model_state(record["seq"])
    deliver(spool, tracking)
    assert [v["version"] for v in standin.state.versions[REGISTERED]] == ["1"]
    assert spool.model_state(record["seq"])["version"] == "1"


def test_a_version_record_tags_the_runs_version_and_lifts_an_old_refusal(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path, standin)
    spool.append(version_record("3.0", champion=False))  # no version yet: nothing happens
    add_model(spool, "generator")
    spool.append(
        {
            "kind": "version",
            "registered_model_name": REGISTERED,
            "tags": {"fd": "9.0", REFUSAL_TAG: "too few samples", CANDIDATE_TAG: "false"},
            "champion": None,
        }
    )
    deliver(spool, tracking)
    (version,) = standin.state.versions[REGISTERED]
    assert version["tags"] == {
        "data_hash": "h1",
        "fd": "9.0",
        REFUSAL_TAG: "too few samples",
        CANDIDATE_TAG: "false",
    }
    refused_again = {"fd": "8.0", REFUSAL_TAG: "still too few", CANDIDATE_TAG: "false"}
    spool.append({**version_record("8.0", champion=False), "tags": refused_again})
    deliver(spool, tracking)
    assert version["tags"] == {"data_hash": "h1", **refused_again}  # the refusal stays
    spool.append(version_record("2.0", champion=False))  # evaluated again, over enough samples
    deliver(spool, tracking)
    assert version["tags"] == {"data_hash": "h1", "fd": "2.0", CANDIDATE_TAG: "true"}
    assert standin.state.aliases[REGISTERED] == {}


def register_versions(client: MlflowClient, tags: Sequence[dict[str, str]]) -> None:
    """Versions 1, 2, ... of REGISTERED with these tags, as earlier evaluations left them."""
    client.create_registered_model(REGISTERED)
    for version_tags in tags:
        client.create_model_version(REGISTERED, "models:/m-0", tags=version_tags, description="d")


def candidate(fd: str, **tags: str) -> dict[str, str]:
    return {"fd": fd, "data_hash": "h1", CANDIDATE_TAG: "true", **tags}


def descriptions(state: MlflowState) -> list[str]:
    return [v.get("description", "") for v in state.versions[REGISTERED]]


def test_the_champion_is_the_lowest_candidate_on_the_same_data_and_settings(
    standin: MlflowStandin,
) -> None:
    client = MlflowClient(standin.uri)
    register_versions(
        client,
        [
            candidate("5.0"),  # 1
            candidate("1.0", data_hash="h2"),  # 2: other data
            candidate("1.0", **{SETTINGS_TAG: "other"}),  # 3: other settings
            {**candidate("1.0"), CANDIDATE_TAG: "false"},  # 4: not a candidate
            {"data_hash": "h1", CANDIDATE_TAG: "true"},  # 5: no fd
            candidate("4.0"),  # 6
            candidate("4.5"),  # 7
            candidate("6.0"),  # 8
            candidate("7.0"),  # 9
        ],
    )
    assert crown_champion(client, REGISTERED, "champion", "fd", "h1", min_samples=1000) == "6"
    assert standin.state.aliases[REGISTERED] == {"champion": "6"}
    assert descriptions(standin.state)[5] == (
        f"d\n\n{CHAMPION_HEADING} `champion`: the lowest fd (4.0) of 5 candidate versions on "
        "data h1, each evaluated over at least 1000 samples with the same settings (); next: "
        "version 7: 4.5, version 1: 5.0, version 8: 6.0"
    )
    # Settings must match too; a candidate with them wins and the old champion loses its words.
    assert crown_champion(client, REGISTERED, "champion", "fd", "h1", "other") == "3"
    texts = descriptions(standin.state)
    assert texts[5] == "d" and texts[2].startswith(f"d\n\n{CHAMPION_HEADING} `champion`: the")
    assert texts[2].endswith(
        "of 1 candidate versions on data h1, each evaluated over at least 0 samples with the same settings (other)"
    )
    assert crown_champion(client, REGISTERED, "champion", "fd", "h3") is None
    assert standin.state.aliases[REGISTERED] == {"champion": "3"}


def test_a_tie_goes_to_the_newest_version_and_crowning_again_changes_nothing(
    standin: MlflowStandin,
) -> None:
    client = MlflowClient(standin.uri)
    register_versions(client, [candidate("2.0"), candidate("2.0"), candidate("3.0")])
    assert crown_champion(client, REGISTERED, "champion", "fd", "h1") == "2"
    before = descriptions(standin.state)
    assert crown_champion(client, REGISTERED, "champion", "fd", "h1") == "2"
    assert descriptions(standin.state) == before and before[1].count(CHAMPION_HEADING) == 1
    assert before[0] == before[2] == "d"


def test_the_old_champion_loses_its_paragraph_even_after_an_outage(
    standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    client = MlflowClient(standin.uri)
    register_versions(client, [candidate("5.0")])
    crown_champion(client, REGISTERED, "champion", "fd", "h1")
    spool = new_spool(tmp_path, standin)
    add_model(spool, "generator")
    spool.append(version_record("1.0"))
    standin.fail(Fault.DROP, "registered-models/alias")
    with pytest.raises(MlflowException):
        deliver(spool, tracking)
    deliver(spool, tracking)
    assert standin.state.aliases[REGISTERED] == {"champion": "2"}
    old, new = descriptions(standin.state)
    assert old == "d" and new.startswith(f"trained for 3 steps\n\n{CHAMPION_HEADING}")


# Last: the slowest (about 80 deliveries each), so that `make mutate` reaches it only for mutants
# that the tests above miss.


@pytest.mark.slow  # 4-8 s on 2 idle cores: `make mutate` runs it, the fast tier does not
@pytest.mark.parametrize("fault", [Fault.DROP, Fault.LOST_REPLY])
def test_an_outage_at_any_request_loses_nothing_and_doubles_nothing(
    fault: Fault, standin: MlflowStandin, tracking: DictConfig, tmp_path: Path
) -> None:
    """The server fails at the first request, then the second, ... (DROP: it died before
    applying it; LOST_REPLY: it applied it and died before answering; ERROR: 503). The next
    delivery leaves MLflow exactly as a delivery without an outage does, and no record was
    acknowledged that MLflow does not hold."""
    spool = new_spool(tmp_path / "clean", standin)
    fill(spool)
    records = list(spool.pending)
    deliver(spool, tracking)
    expected, requests = snapshot(standin.state), list(standin.requests)

    for at, request in enumerate(requests, start=1):
        if fault is Fault.LOST_REPLY and request.method == "GET":
            continue  # a GET changes nothing: losing its reply is the DROP case
        standin.state, standin.requests = MlflowState(), []
        spool = new_spool(tmp_path / str(at), standin)
        fill(spool)
        standin.fail(fault, at=at)
        try:
            deliver(spool, tracking)
        except MlflowException:  # the outage: what is not acknowledged stays pending
            assert spool.pending[0]["seq"] == spool.delivered_seq + 1
        # (or delivery got over it: a lost reply to "create experiment" is found by its name)
        assert standin.unused_faults == 0
        assert acknowledged_but_missing(spool, records, standin.state) == []
        spool = reopened(spool)  # the next try may be another process (sync)
        assert deliver(spool, tracking) == []
        assert spool.pending == []
        assert snapshot(standin.state) == expected, f"a {fault.value} at request {at}"
