"""The spool's promise: every record a process logged is on disk when the process is gone, and
is delivered to MLflow exactly once (tracking/spool.py, tracking/sync.py).

The writers are real processes killed with SIGKILL (tests/killed_process.py). The fast tests read the spool back with its own API;
the slow one delivers it to the test server and reads MLflow's metric histories. The fast
tests import neither MLflow nor torch, so that `make mutate` runs them in about a second.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from face_generation.tracking.spool import (
    LOCAL_KEY_PATTERN,
    Event,
    Spool,
    SpoolBusyError,
    new_local_key,
    read_meta,
    spool_key_of_run,
)
from tests.killed_process import run_until_killed

if TYPE_CHECKING:
    from tests.tracking_fixtures import MlflowServer
STEPS = 300  # enough records that dropping any share of them shows


def metric_records(steps: int) -> list[Event]:
    return [
        {"kind": "metrics", "step": step, "timestamp": 1000 + step, "metrics": metrics(step)}
        for step in range(steps)
    ]


def metrics(step: int) -> dict[str, float]:
    return {"loss": 1.0 / (step + 1), "images_per_s": 100.0 + step}


# A process that appends the records it reads (one JSON object a line, up to "end") to a new
# spool, says so, then waits to be killed.
SPOOL_WRITER = """
import json, sys
from pathlib import Path
from face_generation.tracking.spool import Spool
spool = Spool.create(Path(sys.argv[1]), sys.argv[2], {"run_name": "killed"})
for line in iter(sys.stdin.readline, "end\\n"):
    spool.append(json.loads(line))
print("written", flush=True)
sys.stdin.read()
"""


def test_a_killed_writer_leaves_every_record_on_disk(tmp_path: Path) -> None:
    records: list[Event] = [
        {"kind": "params", "params": {f"model.p{i}": str(i) for i in range(40)}},
        {"kind": "tags", "tags": {"git_commit": "0" * 40}},
        *metric_records(STEPS),
        {"kind": "tags", "tags": {"phase": "late"}},
    ]
    key, root = new_local_key(), tmp_path / "mlflow" / "spool"  # created by the writer
    lines = "".join(json.dumps(record) + "\n" for record in records) + "end\n"
    run_until_killed(SPOOL_WRITER, [str(root), key], lines)

    spool = Spool.open(root, key)  # the lock died with the writer
    assert spool is not None
    assert spool.pending == [{"seq": seq, **r} for seq, r in enumerate(records, start=1)]
    assert (spool.next_seq, spool.delivered_seq, spool.closed) == (len(records) + 1, 0, False)
    assert spool.meta == {"local_key": key, "run_name": "killed"}
    spool.release()


def make_spool(root: Path, records: Sequence[Event] = ()) -> Spool:
    spool = Spool.create(root, new_local_key(), {"run_name": "unit"})
    for record in records:
        spool.append(record)
    return spool


def reopened(spool: Spool) -> Spool:
    """The spool as the next process sees it."""
    spool.release()
    again = Spool.open(spool.dir.parent, spool.key)
    assert again is not None
    return again


def seqs(events: Sequence[Event]) -> list[int]:
    return [event["seq"] for event in events]


def test_the_cursor_outlives_the_process_and_numbering_goes_on(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, metric_records(5))
    spool.acknowledge(3)
    spool.acknowledge(2)  # an older acknowledgement moves nothing back
    assert seqs(spool.pending) == [4, 5]
    spool = reopened(spool)
    assert (spool.delivered_seq, seqs(spool.pending), spool.next_seq) == (3, [4, 5], 6)

    spool.acknowledge(5)
    spool.compact()  # everything delivered: events.jsonl is emptied
    assert spool.events_size == 0
    spool = reopened(spool)
    assert (spool.pending, spool.next_seq) == ([], 6)
    assert spool.append({"kind": "tags", "tags": {}})["seq"] == 6
    spool.release()


def test_acknowledged_artifacts_lose_their_copies_and_only_they(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    events = []
    for kind, record in (("files", "artifact"), ("models", "model"), ("files", "artifact")):
        directory = spool.reserve_dir(kind)
        assert directory == spool.dir / kind / f"{spool.next_seq:08d}"
        (directory / "grid.png").write_bytes(b"png")
        path = str((directory / "grid.png").relative_to(spool.dir))
        events.append(spool.append({"kind": record, "path": path}))
    copies = [spool.files_of(event) for event in events]
    assert copies == [
        spool.dir / "files" / "00000001" / "grid.png",
        spool.dir / "models" / "00000002" / "grid.png",
        spool.dir / "files" / "00000003" / "grid.png",
    ]
    spool.acknowledge(2)  # the server holds records 1 and 2
    assert [copy.parent.exists() for copy in copies] == [False, False, True]
    spool.acknowledge(3)
    assert not copies[2].parent.exists()
    spool.release()


def test_a_reserved_folder_is_emptied_of_a_crashed_attempt(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    leftover = spool.dir / "files" / "00000001" / "half-copied.png"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"pn")
    assert list(spool.reserve_dir("files").iterdir()) == []
    spool.release()


def test_resuming_drops_the_undelivered_metrics_of_the_lost_steps(tmp_path: Path) -> None:
    grid: Event = {"kind": "artifact", "path": "files/00000007/grid.png", "to": "samples"}
    spool = make_spool(tmp_path, [*metric_records(6), grid])
    spool.acknowledge(2)  # steps 0 and 1 reached MLflow
    spool = reopened(spool)  # the resumed run is a new process: it reads the records from disk
    before = spool.events_path.read_text()
    spool.drop_pending_metrics_after(5)  # nothing after step 5: the file is left as it is
    assert spool.events_path.read_text() == before

    spool.drop_pending_metrics_after(3)  # the checkpoint's step: 4 and 5 are logged again
    assert seqs(spool.pending) == [3, 4, 7]
    spool.append({"kind": "resume", "step": 3})
    spool = reopened(spool)
    assert seqs(spool.pending) == [3, 4, 7, 8]
    assert [e["step"] for e in spool.pending if e["kind"] == "metrics"] == [2, 3]
    spool.release()


def test_held_steps_model_states_and_the_end_outlive_the_process(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    spool.hold_steps({"loss": {7, 8}, "lr": set()})
    spool.update_model_state(4, model_id="m-1")
    spool.update_model_state(4, uploaded=True)
    spool.model_state(4)["version"] = "9"  # a copy: the spool's record is not changed
    spool.end("KILLED", 1234)
    spool = reopened(spool)
    assert spool.held_steps == {"loss": {7, 8}, "lr": set()}
    assert spool.model_state(4) == {"model_id": "m-1", "uploaded": True}
    assert spool.model_state(5) == {}
    assert spool.closed and spool.pending[-1] == {
        "seq": 1,
        "kind": "status",
        "status": "KILLED",
        "timestamp": 1234,
    }
    spool.release()


def test_refused_records_are_kept_with_the_reason(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    first = spool.append({"kind": "params", "params": {"lr": "0.2"}})
    spool.reject(first, ValueError("param lr changed"))
    spool.reject({**first, "seq": 9}, ValueError("again"))
    kept = [json.loads(line) for line in spool.rejected_path.read_text().splitlines()]
    assert kept == [{**first, "error": "param lr changed"}, {**first, "seq": 9, "error": "again"}]
    spool.release()


@pytest.mark.parametrize(
    ("state", "removed"),
    [
        ("ended and delivered", True),
        ("kept by setting", False),
        ("pending", False),
        ("not ended", False),
        ("rejected a record", False),
    ],
)
def test_finish_removes_only_an_ended_fully_delivered_spool(
    state: str, removed: bool, tmp_path: Path
) -> None:
    spool = make_spool(tmp_path, metric_records(1))
    if state != "not ended":
        spool.end("FINISHED", 1)
    if state != "pending":
        spool.acknowledge(spool.next_seq - 1)
    if state == "rejected a record":
        spool.reject(spool.append({"kind": "tags", "tags": {}}), ValueError("bad"))
        spool.acknowledge(spool.next_seq - 1)
    assert spool.finish(keep=state == "kept by setting") is removed
    assert spool.dir.exists() is not removed
    if not removed:  # released: another process may take it
        Spool.open(tmp_path, spool.key).release()  # type: ignore[union-attr]


def test_a_spool_is_locked_while_its_process_holds_it(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    with pytest.raises(SpoolBusyError, match=rf"{spool.dir} is in use by another process"):
        Spool.open(tmp_path, spool.key)
    spool.release()
    with pytest.raises(AssertionError, match="spool closed"):  # released: written no more
        spool.append({"kind": "tags", "tags": {}})
    again = Spool.open(tmp_path, spool.key)
    assert again is not None and again.key == spool.key
    again.remove()
    assert not spool.dir.exists() and Spool.open(tmp_path, spool.key) is None
    assert again.events_size == 0


def test_a_folder_left_by_a_crashed_create_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / "20260101-000000-0000abcd").mkdir()  # killed before run.json was written
    assert Spool.open(tmp_path, "20260101-000000-0000abcd") is None
    spool = Spool.create(tmp_path, "20260101-000000-0000abcd", {"run_name": "again"})
    assert read_meta(spool.dir) == {"local_key": spool.key, "run_name": "again"}
    spool.release()


def test_a_record_torn_by_a_crash_is_dropped_and_a_corrupt_one_refused(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, metric_records(3))
    spool.release()
    with spool.events_path.open("a") as events:
        events.write('{"seq": 4, "kind": "metr')  # the process died mid-write
    spool = reopened(spool)
    assert seqs(spool.pending) == [1, 2, 3]
    assert spool.append({"kind": "tags", "tags": {}})["seq"] == 4  # on a line of its own
    spool = reopened(spool)
    assert seqs(spool.pending) == [1, 2, 3, 4]
    spool.release()

    # A whole line (it ends in a newline) that is not JSON was not torn by a crash: refused.
    lines = spool.events_path.read_text().splitlines()
    for corrupt in (2, len(lines) + 1):
        with_corrupt = [*lines[: corrupt - 1], "{not json", *lines[corrupt - 1 :]]
        spool.events_path.write_text("\n".join(with_corrupt) + "\n")
        with pytest.raises(ValueError, match=rf"{spool.events_path} line {corrupt} is corrupt"):
            Spool.open(tmp_path, spool.key)


def test_a_run_is_found_by_its_mlflow_id_and_meta_is_read_without_the_lock(
    tmp_path: Path,
) -> None:
    first, second = make_spool(tmp_path), make_spool(tmp_path)
    second.update_meta(run_id="run-2")
    assert (first.run_id, second.run_id) == (None, "run-2")
    assert spool_key_of_run(tmp_path, "run-2") == second.key
    assert spool_key_of_run(tmp_path, "run-3") is None
    assert read_meta(second.dir)["run_id"] == "run-2"  # while `second` holds its lock
    assert read_meta(tmp_path / "gone") == {}
    assert LOCAL_KEY_PATTERN.fullmatch(first.key) and first.key != second.key
    first.release()
    second.release()


def test_last_written_is_the_time_of_the_newest_record(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, metric_records(1))
    os.utime(spool.events_path, ns=(0, 1_700_000_000_123_456_789))
    assert spool.last_written_ms == 1_700_000_000_123
    spool.release()


# A training process that logs the plan it reads (one JSON line) while the server is away,
# says its spool's key, then waits to be killed (provenance=False: no git or DVC lookups).
TRAINING_WRITER = """
import json, sys
from face_generation.config import compose
from face_generation.tracking.run import TrackedRun
plan = json.loads(sys.stdin.readline())
run = TrackedRun(compose("config", sys.argv[1:]).tracking, "killed", provenance=False)
run.log_params(plan["params"])
run.set_tags(plan["tags"])
for step, metrics in enumerate(plan["metrics"]):
    run.log_metrics(metrics, step)
print(run.local_key, flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_sync_delivers_every_record_of_a_killed_run_exactly_once(
    mlflow_server: MlflowServer,
    tmp_path: Path,
    closed_port_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Imported here: the fast tests above (and mutation runs of spool.py) need no MLflow.
    from mlflow.tracking import MlflowClient

    from face_generation.tracking import sync as sync_cli
    from tests.tracking_fixtures import tracked

    plan = {
        "params": {f"model.p{i:03d}": str(i) for i in range(250)},  # 3 records of 100 at most
        "tags": {"dvc_stage": "train@killed", "data_hash": "d41d8cd9"},
        "metrics": [metrics(step) for step in range(STEPS)],
    }
    overrides = tracked(mlflow_server, tmp_path, "spool-killed")
    key = run_until_killed(
        TRAINING_WRITER, [*overrides, f"tracking.uri={closed_port_url}"], json.dumps(plan) + "\n"
    )

    sync_cli.main([*overrides, "--tracking-uri", mlflow_server.uri])
    out = capsys.readouterr().out
    assert f"{key} (run " in out and "marked KILLED, delivered" in out and " 0 pending" in out
    assert not (tmp_path / "spool" / key).exists()  # delivered and ended: removed
    sync_cli.main([*overrides, "--tracking-uri", mlflow_server.uri])
    assert "nothing to deliver" in capsys.readouterr().out  # and nothing is sent twice

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("test-spool-killed")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "killed" and run.info.status == "KILLED"
    assert run.data.params == plan["params"]
    assert plan["tags"].items() <= run.data.tags.items()
    for name in ("loss", "images_per_s"):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(point.step for point in history) == list(range(STEPS))  # each once
        assert {p.step: p.value for p in history} == {
            step: values[name] for step, values in enumerate(plan["metrics"])
        }
