"""MLflow tracking against a real server: lifecycle, logging, outages, resume, sync.

One server serves the whole session (tests/tracking_fixtures.py); the outage test stops and
restarts it on the same port and store, so the file costs two server starts in all.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, load_model
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema, TensorSpec
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from face_generation.config import compose, tracking_source
from face_generation.evaluation.mlflow_run import log_evaluation
from face_generation.evaluation.record import EvaluationResult, write_record
from face_generation.tracking import promote as promote_cli
from face_generation.tracking import server as server_cli
from face_generation.tracking import sync as sync_cli
from face_generation.tracking.delivery import deliver_spool
from face_generation.tracking.provenance import (
    flatten_config,
    git_commit,
    params_overrides,
    registered_model_name,
    version_metadata,
)
from face_generation.tracking.run import SYNC_COMMAND, TrackedRun
from face_generation.tracking.server import (
    ServerError,
    server_status,
    start_server,
    stop_server,
    tracking_uri,
    use_pipeline_server,
)
from face_generation.tracking.spool import Spool
from face_generation.training.tracker import close_orphaned_runs, create_tracker
from tests.killed_process import run_until_killed
from tests.tracking_fixtures import (
    MlflowServer,
    free_port,
    per_test_tracking_cfg,
    server_overrides,
    tracked,
)

IMAGE_SHAPE = (3, 8, 8)
# A server's files under a test's folder (the pid file stays the default, per port in ./mlruns/)
FILES = (("backend_store", "mlflow.db"), ("artifacts", "artifacts"), ("log_file", "server.log"))


class NoiseGenerator(PythonModel):
    """Stands in for a trained generator: images for a number of samples and a seed."""

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        count, seed = int(model_input["num_samples"].iloc[0]), int(model_input["seed"].iloc[0])
        return np.random.default_rng(seed).random((count, *IMAGE_SHAPE), dtype=np.float32)


GENERATOR_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("long", "num_samples"), ColSpec("long", "seed")]),
    outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *IMAGE_SHAPE))]),
)


def log_generator(run: TrackedRun, registered_name: str, **version: Any) -> None:
    """What training does at its end: log the generator under its family's name, registered as
    `registered_name` (`version`: its description and tags)."""
    run.log_model(
        NoiseGenerator(),
        "noise",
        GENERATOR_SIGNATURE,
        registered_model_name=registered_name,
        pip_requirements=["mlflow", "numpy"],
        **version,
    )


def write_png(path: Path, value: int) -> Path:
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def live_processes(pids: list[int]) -> list[int]:
    """Those of `pids` still running (a zombie has ended: it only waits to be reaped)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        if state not in ("Z", "X"):
            alive.append(pid)
    return alive


def group_processes(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(entry.name))
    return live_processes(pids)


def steps_logged(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, key))


# Server lifecycle. ------------------------------------------------------------------------------


def test_start_reuses_the_running_server(
    mlflow_server: MlflowServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status = server_status(mlflow_server.cfg)
    assert status.healthy and status.running and status.pid is not None
    # The uvicorn worker runs in the server's process group, so `stop` reaches it.
    assert len(group_processes(status.pid)) >= 2

    assert start_server(mlflow_server.cfg) == mlflow_server.uri
    assert server_status(mlflow_server.cfg).pid == status.pid

    server_cli.main(["start", *mlflow_server.overrides])
    server_cli.main(["status", *mlflow_server.overrides])
    out = capsys.readouterr().out
    # the UI's machine-learning view: MLflow 3 opens on GenAI traces otherwise
    assert f"UI: {mlflow_server.uri}/#/experiments?workflowType=machine_learning" in out
    assert f"pid {status.pid}" in out
    assert server_status(mlflow_server.cfg).pid == status.pid


@pytest.mark.slow
def test_start_refuses_a_port_taken_by_another_program(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        cfg = compose("config", server_overrides(tmp_path, port)).tracking
        with pytest.raises(ServerError, match=r"tracking\.port"):
            start_server(cfg)
    assert not Path(cfg.pid_file).exists()


@pytest.mark.slow
def test_start_and_stop_on_another_port_leave_the_running_server_alone(
    mlflow_server: MlflowServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The project's server runs; another program holds a second port. `start` and `stop` on
    that port (with the same pid file) must neither wait for, blame nor stop the server."""
    running = server_status(mlflow_server.cfg)
    assert running.healthy and running.pid is not None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        # A short start timeout: were the server's pid waited for, the message would say so.
        other_port = [
            *mlflow_server.overrides,
            f"tracking.port={port}",
            "tracking.start_timeout_s=5",
        ]
        with pytest.raises(SystemExit) as exit_info:
            server_cli.main(["start", *other_port])
        message = str(exit_info.value.code)
        assert f"port {port} " in message and "tracking.port=PORT" in message
        assert "\n" not in message and str(running.pid) not in message

        server_cli.main(["stop", *other_port])
        assert f"port {port} is held by another program" in capsys.readouterr().out

    after = server_status(mlflow_server.cfg)
    assert after.healthy and after.pid == running.pid
    assert live_processes([running.pid]) == [running.pid]


@pytest.mark.slow
def test_every_command_finds_the_server_on_the_port_params_yaml_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After `make run RUN_ARGS=tracking.port=P` (params.yaml says P), `tracking.server start`,
    `status` and `stop` and the MLflow URIs of inference and serve need no port again; `stop`
    still finds that server after params.yaml went back to another port."""
    port = free_port()
    params = tmp_path / "params.yaml"
    params.write_text(f"tracking:\n  host: 127.0.0.1\n  port: {port}\n  uri: null\n")
    monkeypatch.chdir(tmp_path)  # the pid files go to ./mlruns/, one per port, as in a checkout
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")  # params.yaml comes first
    files = [f"tracking.{key}={tmp_path / name}" for key, name in FILES]
    uri = f"http://127.0.0.1:{port}"

    server_cli.main(["start", *files])
    started = compose("config", [f"tracking.port={port}", *files]).tracking
    try:
        server_cli.main(["status", *files])
        assert f"MLflow server running at {uri} (pid " in capsys.readouterr().out
        use_pipeline_server("inference")
        assert os.environ["MLFLOW_TRACKING_URI"] == uri
        assert f"[inference] MLflow model URIs resolve against {uri} (params.yaml)" in (
            capsys.readouterr().out
        )

        params.write_text("tracking:\n  host: 127.0.0.1\n  port: 5000\n  uri: null\n")
        server_cli.main(["stop", *files])
        assert f"MLflow server at {uri} stopped" in capsys.readouterr().out
        assert not server_status(started).healthy
    finally:
        stop_server(started)  # when an assertion failed before `stop`


def test_without_params_yaml_the_environment_names_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    overrides, source = tracking_source()
    assert source == "MLFLOW_TRACKING_URI"
    assert tracking_uri(compose("config", overrides).tracking) == "http://mlflow.internal:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_source() == ([], None)  # inference then asks for one, never guesses 5000


def test_make_run_passes_overrides_to_the_pipeline() -> None:
    """README: `make run RUN_ARGS='tracking.port=5101'` (dry run: nothing is executed)."""
    result = subprocess.run(
        ["make", "-n", "run", "RUN_ARGS=tracking.port=5101 train.steps=500"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "-m face_generation.pipeline tracking.port=5101 train.steps=500" in result.stdout


def test_a_server_that_does_not_come_up_is_stopped_and_its_log_named(tmp_path: Path) -> None:
    overrides = [*server_overrides(tmp_path, free_port()), "tracking.start_timeout_s=0.5"]
    cfg = compose("config", overrides).tracking
    with pytest.raises(ServerError, match=str(cfg.log_file)):
        start_server(cfg)
    assert not Path(cfg.pid_file).exists()
    leftovers = [
        int(p.parent.name)
        for p in Path("/proc").glob("[0-9]*/cmdline")
        if str(tmp_path).encode() in _read_bytes(p)
    ]
    assert live_processes(leftovers) == []


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_status_cli_fails_when_no_server_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = server_overrides(tmp_path, free_port())
    with pytest.raises(SystemExit) as exit_info:
        server_cli.main(["status", *overrides])
    assert exit_info.value.code == 1
    assert "no MLflow server" in capsys.readouterr().out
    server_cli.main(["stop", *overrides])
    assert "no MLflow server was running" in capsys.readouterr().out


# Logging. ---------------------------------------------------------------------------------------


def test_flatten_config_gives_one_param_per_leaf() -> None:
    cfg = OmegaConf.create(
        {
            "model": {"channels": [32, 64], "beta": 0.5, "name": "${model_name}"},
            "model_name": "vae",
            "stages": [{"size": 4}, {"size": 8}],
            "data": {"path": None},
        }
    )
    assert flatten_config(cfg) == {
        "model.channels": "[32, 64]",
        "model.beta": "0.5",
        "model.name": "vae",
        "model_name": "vae",
        "stages.0.size": "4",
        "stages.1.size": "8",
        "data.path": "None",
    }


def test_run_logs_params_metrics_artifacts_and_tags(
    tracking_cfg: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lynx")
    grid = tmp_path / "samples_000002.png"
    grid.write_bytes(b"not really a png")
    config = compose("config", ["train.steps=3"])

    run = TrackedRun(tracking_cfg, "vae", data_hash="d41d8cd9")
    assert run.run_id is not None
    run.log_config(config)
    for step in range(3):
        run.log_metrics({"loss": 1.0 / (step + 1), "images_per_s": 100.0 + step}, step)
    run.log_artifact(grid, "samples")
    grid.unlink()  # copied when logged: the caller may delete or overwrite it at once
    assert list((run.spool.dir / "files").iterdir()) == []  # delivered: the copy is gone
    assert run.close() is True
    assert not run.spool.dir.exists()

    client = MlflowClient(tracking_cfg.uri or f"http://{tracking_cfg.host}:{tracking_cfg.port}")
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.info.run_name == "vae"
    assert logged.data.params["train.steps"] == "3"
    assert set(flatten_config(config)) <= set(logged.data.params)
    assert steps_logged(client, run.run_id, "loss") == [0, 1, 2]
    assert logged.data.metrics["images_per_s"] == 102.0
    assert [a.path for a in client.list_artifacts(run.run_id, "samples")] == [
        "samples/samples_000002.png"
    ]
    assert logged.data.tags["data_hash"] == "d41d8cd9"
    assert logged.data.tags["dvc_exp"] == "brisk-lynx"
    assert len(logged.data.tags["git_commit"]) == 40  # the tests run inside the repository


def git_repo(root: Path) -> Path:
    """A committed project: code, params.yaml, dvc.lock and metrics, as a fresh clone has."""
    root.mkdir()
    (root / "train.py").write_text("STEPS = 1\n")
    (root / "params.yaml").write_text("train:\n  steps: 1000\nmodels:\n  vae:\n    beta: 1.0\n")
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    (root / "metrics").mkdir()
    (root / "metrics" / "vae.json").write_text("{}\n")
    for command in (
        ["init", "-q"],
        ["add", "."],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"],
    ):
        subprocess.run(["git", *command], cwd=root, check=True)
    return root


def test_an_experiment_is_its_overrides_and_code_changes_are_dirty(
    tracking_cfg: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `dvc exp run -S train.steps=100` leaves in the work tree (params.yaml, dvc.lock and
    metrics rewritten) is the experiment's parameters, not uncommitted code."""
    repo = git_repo(tmp_path / "project")
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("1000", "100").replace("1.0", "0.5"))
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (repo / "metrics" / "vae.json").write_text('{"fd_effnet": 1}\n')
    commit = git_commit(repo)
    assert commit is not None and commit[1] is False  # not "with uncommitted changes"
    assert params_overrides(repo) == ["models.vae.beta=0.5", "train.steps=100"]

    monkeypatch.chdir(repo)
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lynx")
    with TrackedRun(tracking_cfg, "vae") as run:
        pass
    tags = MlflowClient(tracking_uri(tracking_cfg)).get_run(str(run.run_id)).data.tags
    assert tags["params_overrides"] == "models.vae.beta=0.5 train.steps=100"
    assert tags["dvc_exp"] == "brisk-lynx"
    description, version_tags = version_metadata("vae", 32, 100, "aaaa")
    assert "DVC experiment brisk-lynx (models.vae.beta=0.5 train.steps=100)" in description
    assert version_tags["params_overrides"] == tags["params_overrides"]

    (repo / "train.py").write_text("STEPS = 2\n")  # a code change is one
    commit = git_commit(repo)
    assert commit is not None and commit[1] is True


def test_a_training_run_as_the_ui_lists_it(
    make_config: Callable[..., DictConfig],
    mlflow_server: MlflowServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under `dvc exp run` the run's name carries the experiment's (not the baseline's name
    again), and the Source column shows the command and a local run."""
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lynx")
    cfg = make_config("model=vae", *tracked(mlflow_server, tmp_path, "ui"))
    tracker = create_tracker(cfg)
    tracker.close("FINISHED")
    run = MlflowClient(mlflow_server.uri).get_run(tracker.run_id)
    assert run.info.run_name == "vae@brisk-lynx"
    # `python -m pytest` ran it, or a pytest-xdist worker (`python -c`) under `make test`
    ran_by = "python -c" if os.environ.get("PYTEST_XDIST_WORKER") else "pytest"
    assert run.data.tags["mlflow.source.name"] == ran_by
    assert run.data.tags["mlflow.source.type"] == "LOCAL"


def test_links_and_experiments_open_the_ui_on_training_runs(
    tracking_cfg: DictConfig, mlflow_server: MlflowServer, capsys: pytest.CaptureFixture[str]
) -> None:
    client = MlflowClient(mlflow_server.uri)
    older = client.create_experiment(str(tracking_cfg.experiment))  # made before, with no kind
    with TrackedRun(tracking_cfg, "links") as run:
        pass
    page = f"{mlflow_server.uri}/#/experiments/{older}/runs/{run.run_id}"
    assert run.url == f"{page}?workflowType=machine_learning"
    assert f"MLflow run started: {run.url}" in capsys.readouterr().err
    fresh = OmegaConf.merge(tracking_cfg, {"experiment": f"{tracking_cfg.experiment}-new"})
    with TrackedRun(fresh, "links"):  # type: ignore[arg-type]
        pass
    for name in (tracking_cfg.experiment, fresh.experiment):
        tags = client.get_experiment_by_name(str(name)).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"  # the UI shows runs


def test_model_is_logged_with_signature_and_registered(
    tracking_cfg: DictConfig, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)  # where models:/ URIs resolve
    name = registered_model_name(tracking_cfg, "test_family")
    with TrackedRun(tracking_cfg, "model") as run:
        log_generator(run, name)
        version = run.model_version("noise")
    assert version is not None

    client = MlflowClient(mlflow_server.uri)
    registered = client.get_model_version(name, version)
    assert registered.run_id == run.run_id
    loaded = load_model(f"models:/{name}/{version}")
    images = loaded.predict(pd.DataFrame({"num_samples": [2], "seed": [7]}))
    assert images.shape == (2, *IMAGE_SHAPE)
    assert np.array_equal(
        images, NoiseGenerator().predict(None, pd.DataFrame({"num_samples": [2], "seed": [7]}))
    )
    assert loaded.metadata.signature == GENERATOR_SIGNATURE
    (output,) = client.get_run(run.run_id).outputs.model_outputs
    assert registered.source == f"models:/{output.model_id}"
    assert client.get_logged_model(output.model_id).status == "READY"


def evaluation_of(
    root: Path, data_hash: str, fd: float, n: int = 1000, **changes: Any
) -> EvaluationResult:
    """What evaluation writes for a model scored fd_effnet `fd` over n generated vs n real
    faces (`changes`: other settings)."""
    network = "effnet_lite0-224px-antialias"
    record = {
        "model": "noise",
        "checkpoint": "models/noise/model.pt",
        "step": 6,
        "data_hash": data_hash,
        "split": "test",
        "n_generated": n,
        "n_real": n,
        "seed": 0,
        "sampling": {},
        "condition": None,
        "network_evaluations": 1,
        "feature_network": network,
        "nearest_train": {"mean_distance_generated": 2.0, "mean_distance_test": 1.0},
        "metrics": {
            "fd_effnet": {
                "available": True,
                "value": fd,
                "network": network,
                "n_generated": n,
                "n_real": n,
                "data_hash": data_hash,
            }
        },
        **changes,
    }
    folder = root / f"metrics-{len(list(root.glob('metrics-*')))}"
    return EvaluationResult(write_record(record, folder), record)


def own_registry(tracking_cfg: DictConfig) -> DictConfig:
    """A config whose registered models are this test's own (named after its experiment)."""
    prefix = {"registered_model_prefix": str(tracking_cfg.experiment)}
    return OmegaConf.create({"tracking": OmegaConf.merge(tracking_cfg, prefix)})


@pytest.mark.slow
def test_the_champion_is_the_best_on_a_comparison_that_means_something(
    tracking_cfg: DictConfig,
    mlflow_server: MlflowServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Training logs and registers a generator, evaluation logs its numbers: the alias moves
    only among versions of the same data and evaluation settings, each over at least
    tracking.champion.min_samples samples, run in the workspace; the description says why."""
    cfg = own_registry(tracking_cfg)
    client = MlflowClient(mlflow_server.uri)
    name = registered_model_name(cfg.tracking, "noise")
    assert cfg.tracking.champion.min_samples == 1000

    def trained_and_evaluated(evaluation: EvaluationResult) -> str:
        data_hash = evaluation.record["data_hash"]
        with TrackedRun(cfg.tracking, "noise", data_hash=data_hash) as run:
            description, tags = version_metadata("noise", 8, 6, data_hash)
            log_generator(
                run,
                name,
                version_description=description,
                version_tags=tags,
                model_description="noise generators",
            )
        log_evaluation(cfg, run.run_id, evaluation)
        version = run.model_version("noise")
        assert version is not None
        return version

    def champion() -> str | None:
        try:
            return str(client.get_model_version_by_alias(name, "champion").version)
        except MlflowException:
            return None

    # The embedded default's 10 test faces: numbers, but no champion, and it says why.
    few = trained_and_evaluated(evaluation_of(tmp_path, "aaaa", 1.0, n=10))
    assert champion() is None
    assert "below tracking.champion.min_samples=1000" in capsys.readouterr().err
    refused = client.get_model_version(name, few)
    assert refused.tags["champion_candidate"] == "false" and refused.tags["fd_effnet"] == "1"
    assert "10 generated vs 10 real" in refused.tags["eval_settings"]
    assert client.get_registered_model(name).description == "noise generators"

    first = trained_and_evaluated(evaluation_of(tmp_path, "aaaa", 10.0))
    assert champion() == first
    description = client.get_model_version(name, first).description
    assert description.startswith("noise generator, 8x8 px, 6 steps on data aaaa, code ")
    assert "Champion, alias `champion`: the lowest fd_effnet (10) of 1 candidate" in description
    assert "1000 generated vs 1000 real" in description

    better = trained_and_evaluated(evaluation_of(tmp_path, "aaaa", 5.0))
    assert champion() == better
    assert "Champion" not in client.get_model_version(name, first).description  # lost it
    assert "next: version " + first in client.get_model_version(name, better).description
    trained_and_evaluated(evaluation_of(tmp_path, "aaaa", 7.0))
    assert champion() == better
    # Other sampling settings: compared only with their own kind.
    hotter = trained_and_evaluated(evaluation_of(tmp_path, "aaaa", 6.0, sampling={"t": 2}))
    assert champion() == hotter
    trained_and_evaluated(evaluation_of(tmp_path, "aaaa", 3.0))  # beats better, not hotter...
    assert champion() != hotter  # ...and the newest settings' comparison decides
    # A queued DVC experiment runs in a temporary copy: it never takes the alias by itself.
    queued = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    queued.mkdir(parents=True)
    monkeypatch.chdir(queued)
    before = champion()
    trained_and_evaluated(evaluation_of(tmp_path, "aaaa", 0.5))
    assert champion() == before
    assert "queued DVC experiment" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    other = trained_and_evaluated(evaluation_of(tmp_path, "bbbb", 50.0))  # new data
    assert champion() == other


def test_a_version_evaluated_again_over_enough_samples_becomes_a_candidate(
    tracking_cfg: DictConfig, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    cfg = own_registry(tracking_cfg)
    client = MlflowClient(mlflow_server.uri)
    name = registered_model_name(cfg.tracking, "noise")
    with TrackedRun(cfg.tracking, "noise", data_hash="aaaa") as run:
        log_generator(run, name, version_tags={"data_hash": "aaaa"})  # as training tags it
    version = str(run.model_version("noise"))
    log_evaluation(cfg, run.run_id, evaluation_of(tmp_path, "aaaa", 2.0, n=10))
    assert "min_samples" in client.get_model_version(name, version).tags["champion_refused"]
    log_evaluation(cfg, run.run_id, evaluation_of(tmp_path, "aaaa", 2.0))
    tags = client.get_model_version(name, version).tags
    assert tags["champion_candidate"] == "true" and "champion_refused" not in tags
    assert client.get_model_version_by_alias(name, "champion").version == version


@pytest.mark.slow
def test_promote_moves_the_alias_by_hand_and_says_so(
    mlflow_server: MlflowServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's command after the default pipeline (too few test faces for a champion):
    `python -m face_generation.tracking.promote --model NAME`."""
    overrides = tracked(mlflow_server, tmp_path, "promote")
    cfg = compose("config", overrides)
    name = registered_model_name(cfg.tracking, "noise")
    versions = []
    for fd in (3.0, 9.0):
        with TrackedRun(cfg.tracking, "noise", data_hash="aaaa") as run:
            log_generator(run, name, version_description="noise generator")
        log_evaluation(cfg, run.run_id, evaluation_of(tmp_path, "aaaa", fd, n=10))
        versions.append(str(run.model_version("noise")))
    client = MlflowClient(mlflow_server.uri)
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(name, "champion")  # 10 faces: no automatic champion

    promote_cli.main(["--model", "noise", *overrides])  # the newest
    assert f"{name}@champion is version {versions[1]}" in capsys.readouterr().out
    promote_cli.main(["--model", "noise", "--version", versions[0], *overrides])
    assert client.get_model_version_by_alias(name, "champion").version == versions[0]
    description = client.get_model_version(name, versions[0]).description
    assert description.startswith("noise generator\n\nChampion, alias `champion`: promoted ")
    assert "by hand" in description and "fd_effnet 3 (" in description
    assert client.get_model_version(name, versions[1]).description == "noise generator"
    with pytest.raises(SystemExit, match=r"^\[tracking\] cannot promote: "):
        promote_cli.main(["--model", "absent", *overrides])


def test_the_training_run_keeps_its_duration_after_evaluation(
    tracking_cfg: DictConfig, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """Evaluation adds its numbers to the finished training run without reopening it."""
    cfg = own_registry(tracking_cfg)
    client = MlflowClient(mlflow_server.uri)
    with TrackedRun(cfg.tracking, "noise", data_hash="aaaa") as run:
        log_generator(run, registered_model_name(cfg.tracking, "noise"))
    trained = client.get_run(str(run.run_id)).info
    log_evaluation(cfg, run.run_id, evaluation_of(tmp_path, "aaaa", 4.0))
    evaluated = client.get_run(str(run.run_id))
    assert evaluated.data.metrics["eval/fd_effnet"] == 4.0
    assert (evaluated.info.status, evaluated.info.end_time) == ("FINISHED", trained.end_time)


def test_a_finished_run_resumed_registers_no_second_version(
    tracking_cfg: DictConfig, mlflow_server: MlflowServer
) -> None:
    name = registered_model_name(tracking_cfg, "finished")
    with TrackedRun(tracking_cfg, "finished") as run:
        log_generator(run, name)
    # `train.resume=auto` on the final checkpoint: the end of training runs again.
    with TrackedRun(tracking_cfg, resume=run.state(), resume_step=6) as again:
        log_generator(again, name)
        assert again.model_version("noise") == run.model_version("noise")

    client = MlflowClient(mlflow_server.uri)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    finished = client.get_run(str(run.run_id))
    assert finished.info.status == "FINISHED" and len(finished.outputs.model_outputs) == 1


# Outages. ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "server_fixture",
    ["mlflow_server", pytest.param("postgres_mlflow_server", marks=pytest.mark.slow)],
    ids=["sqlite", "postgresql"],
)
@pytest.mark.slow
def test_server_outage_loses_nothing(
    server_fixture: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    """Stop the server mid-run; run A keeps logging, run B starts while it is down; restart.
    The same with the runs in SQLite (the default) and in PostgreSQL (a team's server)."""
    mlflow_server: MlflowServer = request.getfixturevalue(server_fixture)
    tracking_cfg = per_test_tracking_cfg(mlflow_server, tmp_path, request.node.name)
    client = MlflowClient(mlflow_server.uri)
    grid = tmp_path / "grid.png"
    model_name = registered_model_name(tracking_cfg, "outage")
    run_a = TrackedRun(tracking_cfg, "a")
    for step in range(3):
        run_a.log_metrics({"loss": float(step), "images_per_s": 10.0 * step}, step)
    assert not run_a.spool.pending

    pid = server_status(mlflow_server.cfg).pid
    assert pid is not None
    server_processes = group_processes(pid)
    try:
        assert stop_server(mlflow_server.cfg) is True
        assert live_processes(server_processes) == []  # the uvicorn worker stopped too
        assert not server_status(mlflow_server.cfg).healthy
        assert not Path(mlflow_server.cfg.pid_file).exists()

        for step in range(3, 6):
            run_a.log_metrics({"loss": float(step), "images_per_s": 10.0 * step}, step)
        grid.write_bytes(b"grid at step 5")
        run_a.log_artifact(grid, "samples")
        run_a.log_image(write_png(tmp_path / "step-5.png", 5), "samples", 5)
        run_a.log_input("faces-8px", "d41d8cd9", "data/packed/8", {"rows": 3}, "training")
        run_b = TrackedRun(tracking_cfg, "b")
        assert run_b.run_id is None  # unreachable at start: a local key only
        for step in range(6):
            run_b.log_metrics({"loss": float(step)}, step)
        log_generator(run_b, model_name)
        told = capsys.readouterr().err
        assert told.count("could not deliver to the MLflow server") == 2  # once per run
        assert len(run_a.spool.pending) == 6 and len(run_b.spool.pending) > 6
    finally:
        start_server(mlflow_server.cfg)

    # The next call after the server is back delivers the backlog; no close needed.
    run_a.log_metrics({"loss": 6.0, "images_per_s": 60.0}, 6)
    assert not run_a.spool.pending
    run_b.log_metrics({"loss": 6.0}, 6)
    assert run_b.run_id is not None and not run_b.spool.pending
    assert "answers again" in capsys.readouterr().err
    assert run_a.close() and run_b.close()

    for run, keys in ((run_a, ("loss", "images_per_s")), (run_b, ("loss",))):
        for key in keys:
            assert steps_logged(client, run.run_id, key) == list(range(7))  # each exactly once
        assert client.get_run(run.run_id).info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_a.run_id, "samples")] == ["samples/grid.png"]
    assert len(client.list_artifacts(run_a.run_id, "images")) == 2  # the image and its preview
    (dataset,) = client.get_run(run_a.run_id).inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("faces-8px", "d41d8cd9")
    assert client.get_model_version(model_name, run_b.model_version("noise")).run_id == (
        run_b.run_id
    )


def test_close_while_down_keeps_the_spool_and_sync_delivers_it(
    mlflow_server: MlflowServer,
    tracking_cfg: DictConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    run = TrackedRun(OmegaConf.merge(tracking_cfg, {"uri": nowhere}), "offline")  # type: ignore[arg-type]
    for step in range(4):
        run.log_metrics({"loss": float(step)}, step)
    assert run.close() is False
    assert SYNC_COMMAND in capsys.readouterr().err
    assert run.spool.dir.is_dir() and run.run_id is None

    spool_dir = f"tracking.spool_dir={tracking_cfg.spool_dir}"
    sync_cli.main([*mlflow_server.overrides, spool_dir, "--tracking-uri", mlflow_server.uri])
    assert "delivered; 6 records sent, 0 pending" in capsys.readouterr().out
    assert not run.spool.dir.exists()  # ended and delivered: removed

    client = MlflowClient(mlflow_server.uri)
    (found,) = client.search_runs(
        [client.get_experiment_by_name(tracking_cfg.experiment).experiment_id],
        filter_string="attributes.run_name = 'offline'",
    )
    assert found.info.status == "FINISHED"
    assert steps_logged(client, found.info.run_id, "loss") == [0, 1, 2, 3]
    sync_cli.main([*mlflow_server.overrides, spool_dir])
    assert "nothing to deliver" in capsys.readouterr().out


def test_replaying_delivered_records_does_not_duplicate_them(
    mlflow_server: MlflowServer, tracking_cfg: DictConfig
) -> None:
    """A reply lost in transit means the records are sent again: MLflow must hold them once."""
    cfg = OmegaConf.merge(tracking_cfg, {"keep_spool_after_delivery": True})
    assert isinstance(cfg, DictConfig)
    run = TrackedRun(cfg, "replay")
    for step in range(3):
        run.log_metrics({"loss": float(step)}, step)
    run.log_params({"lr": 0.1})
    run.log_image(write_png(Path(cfg.spool_dir).parent / "grid.png", 9), "samples", 2)
    run.log_input("faces-8px", "d41d8cd9", "data/packed/8", {"rows": 3}, "training")
    assert run.close()

    (run.spool.dir / "cursor").write_text("0")
    spool = Spool.open(run.spool.dir.parent, run.local_key)
    assert spool is not None and len(spool.pending) == 8
    assert deliver_spool(spool, cfg) == []
    spool.release()
    client = MlflowClient(mlflow_server.uri)
    assert steps_logged(client, str(run.run_id), "loss") == [0, 1, 2]
    assert len(client.list_artifacts(str(run.run_id), "images")) == 2  # once, with its preview
    assert len(client.get_run(str(run.run_id)).inputs.dataset_inputs) == 1


def test_a_record_mlflow_refuses_is_kept_and_blocks_nothing(
    mlflow_server: MlflowServer, tracking_cfg: DictConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    run = TrackedRun(tracking_cfg, "refused")
    run.log_params({"lr": 0.1})
    run.log_params({"lr": 0.2})  # MLflow never changes a logged param
    run.log_metrics({"loss": 1.0}, 0)
    assert run.close() is True
    assert [event["params"] for event in run.rejected] == [{"lr": "0.2"}]
    assert "refused 1 records" in capsys.readouterr().err
    (kept,) = [json.loads(line) for line in run.spool.rejected_path.read_text().splitlines()]
    assert kept["params"] == {"lr": "0.2"} and "error" in kept
    logged = MlflowClient(mlflow_server.uri).get_run(str(run.run_id))
    assert logged.data.params["lr"] == "0.1" and logged.data.metrics["loss"] == 1.0


def test_delivered_records_are_compacted_and_numbering_goes_on(
    mlflow_server: MlflowServer, tracking_cfg: DictConfig
) -> None:
    cfg = OmegaConf.merge(tracking_cfg, {"spool_compact_mb": 0, "keep_spool_after_delivery": True})
    assert isinstance(cfg, DictConfig)
    run = TrackedRun(cfg, "compacted")
    for step in range(3):
        run.log_metrics({"loss": float(step)}, step)
        assert run.spool.events_size == 0
    assert run.close()
    spool = Spool.open(run.spool.dir.parent, run.local_key)
    assert spool is not None and spool.pending == [] and spool.next_seq == 6
    spool.release()
    client = MlflowClient(mlflow_server.uri)
    assert steps_logged(client, str(run.run_id), "loss") == [0, 1, 2]


# Resume. ----------------------------------------------------------------------------------------


def test_resume_continues_the_same_run(
    mlflow_server: MlflowServer, tracking_cfg: DictConfig
) -> None:
    client = MlflowClient(mlflow_server.uri)
    first = TrackedRun(tracking_cfg, "resumable")
    first.log_params({"lr": 0.1})
    for step in range(3):
        first.log_metrics({"loss": float(step)}, step)
    checkpoint = json.loads(json.dumps(first.state()))  # as a checkpoint stores it
    first.spool.release()  # the process dies here: no close()

    # Resumed while its spool is still on disk.
    second = TrackedRun(tracking_cfg, resume=checkpoint)
    assert second.run_id == checkpoint["run_id"]
    assert client.get_run(second.run_id).info.status == "RUNNING"
    for step in range(3, 6):
        second.log_metrics({"loss": float(step)}, step)
    assert second.close()
    assert not second.spool.dir.exists()

    # Resumed after the spool was delivered and removed, from the run id ...
    assert first.resume_id == checkpoint["run_id"]
    third = TrackedRun(tracking_cfg, resume=first.resume_id)
    third.log_metrics({"loss": 6.0}, 6)
    assert third.close()
    # ... and from the local key alone (checkpoint written while the server was down).
    fourth = TrackedRun(tracking_cfg, resume=checkpoint["local_key"])
    assert fourth.run_id == checkpoint["run_id"]
    fourth.log_metrics({"loss": 7.0}, 7)
    assert fourth.close()

    run = client.get_run(checkpoint["run_id"])
    assert steps_logged(client, run.info.run_id, "loss") == list(range(8))
    assert run.data.params["lr"] == "0.1"
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_resumed_run_logs_each_step_once(
    mlflow_server: MlflowServer, tracking_cfg: DictConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed at step 10 with its checkpoint at step 6, the run resumes there and logs 7-12:
    MLflow holds each step once, whether the lost steps had reached it (7, 8) or not (9, 10)."""
    client = MlflowClient(mlflow_server.uri)
    by_hand = OmegaConf.merge(tracking_cfg, {"flush_interval_s": 3600})  # delivers on flush()
    assert isinstance(by_hand, DictConfig)
    first = TrackedRun(by_hand, "resumed")
    for step in range(1, 11):
        first.log_metrics({"loss": float(step), "lr": 0.1}, step)
        if step == 6:
            checkpoint = json.loads(json.dumps(first.state()))
        if step == 8:
            assert first.flush()
    first.spool.release()  # killed: no close()

    second = TrackedRun(tracking_cfg, resume=checkpoint, resume_step=6)
    for step in range(7, 13):
        second.log_metrics({"loss": 100.0 + step, "lr": 0.1}, step)
    assert second.close()
    run_id = str(second.run_id)
    for key in ("loss", "lr"):
        assert steps_logged(client, run_id, key) == list(range(1, 13))
    # What MLflow held keeps its values (it cannot delete a point); the rest is the rerun's.
    losses = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    assert losses == {**{s: float(s) for s in range(1, 9)}, **{s: 100.0 + s for s in range(9, 13)}}

    # Resumed from the same checkpoint again while the server is away; delivered by sync.
    away = OmegaConf.merge(tracking_cfg, {"uri": f"http://127.0.0.1:{free_port()}"})
    assert isinstance(away, DictConfig)
    third = TrackedRun(away, resume=checkpoint, resume_step=6)
    for step in range(7, 13):
        third.log_metrics({"loss": 200.0 + step, "lr": 0.1}, step)
    assert third.close() is False
    spool_dir = f"tracking.spool_dir={tracking_cfg.spool_dir}"
    sync_cli.main([*mlflow_server.overrides, spool_dir, "--tracking-uri", mlflow_server.uri])
    assert "0 pending" in capsys.readouterr().out
    for key in ("loss", "lr"):
        assert steps_logged(client, run_id, key) == list(range(1, 13))
    assert client.get_run(run_id).info.status == "FINISHED"


# A training process that logs three steps, says its spool's key, then waits to be killed.
KILLED_TRAINING = """
import sys
from face_generation.config import compose
from face_generation.tracking.run import TrackedRun
run = TrackedRun(compose("config", sys.argv[1:]).tracking, "killed")
for step in range(3):
    run.log_metrics({"loss": float(step)}, step)
print(run.local_key, flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_sync_ends_a_run_whose_process_was_killed(
    mlflow_server: MlflowServer,
    tracking_cfg: DictConfig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGKILLed before its first checkpoint, with records not yet delivered: sync delivers
    them, ends the run as KILLED and removes its spool; a run still logging is left alone."""
    overrides = [*tracked(mlflow_server, tmp_path, "orphan"), "tracking.flush_interval_s=3600"]
    key = run_until_killed(KILLED_TRAINING, overrides)
    live = TrackedRun(tracking_cfg, "live")  # the same spool folder

    sync_cli.main([*overrides])
    out = capsys.readouterr().out
    assert f"{key} (run " in out and "marked KILLED, delivered" in out and "0 pending" in out
    assert "skipped: a training process is still logging it" in out
    spool_dir = tmp_path / "spool"
    assert not (spool_dir / key).exists() and live.spool.dir.is_dir()

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("test-orphan")
    (killed,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'killed'")
    assert killed.info.status == "KILLED"
    assert steps_logged(client, killed.info.run_id, "loss") == [0, 1, 2]
    assert live.close() and client.get_run(str(live.run_id)).info.status == "FINISHED"


def test_a_fresh_start_ends_the_runs_of_its_model_left_running(
    mlflow_server: MlflowServer, tracking_cfg: DictConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only this model's runs whose process died are ended; another model's and live ones stay."""
    orphan, other_model, live = (TrackedRun(tracking_cfg, n) for n in ("vae", "dcgan", "vae"))
    for run in (orphan, other_model, live):
        run.log_metrics({"loss": 1.0}, 1)
    orphan.spool.release()  # its process died: no close()
    other_model.spool.release()

    close_orphaned_runs(OmegaConf.create({"model": {"name": "vae"}, "tracking": tracking_cfg}))
    assert f"run {orphan.run_id}: left RUNNING by a process that died" in capsys.readouterr().out

    client = MlflowClient(mlflow_server.uri)
    status = {
        run: client.get_run(str(run.run_id)).info.status for run in (orphan, other_model, live)
    }
    assert status == {orphan: "KILLED", other_model: "RUNNING", live: "RUNNING"}
    assert not orphan.spool.dir.exists() and other_model.spool.dir.is_dir()
    assert live.close()


def test_spool_drops_a_record_cut_short_by_a_crash(tracking_cfg: DictConfig) -> None:
    cfg = OmegaConf.merge(tracking_cfg, {"uri": f"http://127.0.0.1:{free_port()}"})
    assert isinstance(cfg, DictConfig)
    run = TrackedRun(cfg, "torn")
    run.log_metrics({"loss": 1.0}, 0)
    run.spool.release()
    events = run.spool.dir / "events.jsonl"
    with events.open("a") as handle:
        handle.write('{"seq": 99, "kind": "metr')  # the process died mid-write
    spool = Spool.open(run.spool.dir.parent, run.local_key)
    assert spool is not None
    assert [event["kind"] for event in spool.pending] == ["tags", "metrics"]
    assert events.read_text().endswith("\n")
    spool.release()
    assert os.path.isdir(run.spool.dir)
