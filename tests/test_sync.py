"""`python -m face_generation.tracking.sync` (tracking/sync.py): the spools that training left
behind are delivered once, run by run; a run whose process died is ended as KILLED exactly once;
a spool a live process holds is left alone. Against the in-process MLflow stand-in
(tests/mlflow_standin.py), without conftest.py: `make mutate` runs this file for each mutant.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from face_generation.config import compose
from face_generation.tracking import sync as sync_cli
from face_generation.tracking.spool import Spool, new_local_key
from face_generation.tracking.sync import SyncResult, close_orphans, pending_spools, sync_all
from tests.killed_process import REPO, run_until_killed
from tests.mlflow_standin import Fault, MlflowStandin, running_standin

EXPERIMENT = "sync"
STEPS = 200  # enough points that dropping any share of them shows


@pytest.fixture
def standin() -> Iterator[MlflowStandin]:
    yield from running_standin()


def overrides(standin: MlflowStandin, spool_dir: Path, *more: str) -> list[str]:
    return [
        f"tracking.uri={standin.uri}",
        f"tracking.spool_dir={spool_dir}",
        f"tracking.experiment={EXPERIMENT}",
        *more,
    ]


@pytest.fixture(scope="module")
def defaults() -> DictConfig:
    return compose("config", []).tracking


def tracking(
    defaults: DictConfig, standin: MlflowStandin, spool_dir: Path, **values: Any
) -> DictConfig:
    """The `tracking` group the command line would compose (composing once is quicker)."""
    settings = {"uri": standin.uri, "spool_dir": str(spool_dir), "experiment": EXPERIMENT}
    merged = OmegaConf.merge(defaults, {**settings, **values})
    assert isinstance(merged, DictConfig)
    return merged


def losses(step: int) -> dict[str, object]:
    return {"kind": "metrics", "step": step, "timestamp": 5_000 + step, "metrics": {"loss": step}}


def new_spool(
    root: Path, standin: MlflowStandin, run_name: str = "tiny", experiment: str = EXPERIMENT
) -> Spool:
    meta = {
        "tracking_uri": standin.uri,
        "experiment": experiment,
        "run_name": run_name,
        "run_id": None,
        "start_time": 1_000,
    }
    return Spool.create(root, new_local_key(), meta)


def left_by_a_dead_process(root: Path, standin: MlflowStandin, steps: int = 2, **kw: str) -> Spool:
    """A spool whose process died before ending its run (released: its lock went with it)."""
    spool = new_spool(root, standin, **kw)
    for step in range(steps):
        spool.append(losses(step))
    spool.release()
    return spool


def ended(root: Path, standin: MlflowStandin, **kw: str) -> Spool:
    """A spool whose process ended the run while the server was down."""
    spool = new_spool(root, standin, **kw)
    spool.append(losses(0))
    spool.end("FINISHED", 9_000)
    spool.release()
    return spool


# A training process that spools its records while the server is down, says its spool's key,
# then waits to be killed.
WRITER = """
import json, sys
from pathlib import Path
from face_generation.tracking.spool import Spool, new_local_key
meta = json.loads(sys.stdin.readline())
spool = Spool.create(Path(sys.argv[1]), new_local_key(), meta)
for line in iter(sys.stdin.readline, "end\\n"):
    spool.append(json.loads(line))
print(spool.key, flush=True)
sys.stdin.read()
"""


@pytest.mark.slow  # a real process killed, then the command line: over a second
def test_a_killed_run_is_delivered_once_ended_as_killed_and_removed(
    standin: MlflowStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "spool"
    meta = {"tracking_uri": "http://127.0.0.1:1", "experiment": EXPERIMENT, "run_name": "killed"}
    records = [
        {"kind": "params", "params": {f"p{i:03d}": str(i) for i in range(100)}},
        *(losses(step) for step in range(STEPS)),
        {"kind": "tags", "tags": {"phase": "late"}},
    ]
    lines = "".join(json.dumps(r) + "\n" for r in [{**meta, "start_time": 1_000}, *records])
    key = run_until_killed(WRITER, [str(root)], lines + "end\n")
    last_written_ms = (root / key / "events.jsonl").stat().st_mtime_ns // 1_000_000

    sync_cli.main([*overrides(standin, root), "--tracking-uri", standin.uri])
    out = capsys.readouterr().out
    run = standin.state.only_run()
    assert (
        f"[tracking] {key} (run {run.run_id}): left RUNNING by a process that died: marked "
        f"KILLED, delivered; {len(records) + 1} records sent, 0 pending\n"
    ) == out
    assert not (root / key).exists()
    assert (run.info["status"], run.info["end_time"]) == ("KILLED", last_written_ms)
    assert run.info["run_name"] == "killed" and run.tags["phase"] == "late"
    assert len(run.params) == 100
    assert standin.state.history(run.run_id, "loss") == [(s, s) for s in range(STEPS)]

    sync_cli.main(overrides(standin, root))
    assert capsys.readouterr().out == f"[tracking] nothing to deliver in {root}\n"
    assert len(standin.state.runs) == 1 and len(run.metrics) == STEPS


def test_a_killed_run_whose_sync_fails_is_ended_once_when_it_succeeds(
    standin: MlflowStandin, tmp_path: Path, defaults: DictConfig
) -> None:
    spool = left_by_a_dead_process(tmp_path, standin)
    cfg = tracking(defaults, standin, tmp_path)
    standin.stop()
    (failed,) = sync_all(cfg)
    assert failed.orphaned and failed.pending == 3 and failed.delivered == 0
    assert failed.message.startswith(
        "left RUNNING by a process that died: marked KILLED, not delivered: API request to"
    )
    assert "\n" not in failed.message and failed.run_id is None
    standin.start()
    (result,) = sync_all(cfg)
    assert not result.orphaned and (result.delivered, result.pending) == (3, 0)
    assert result.message == "delivered" and result.run_id == standin.state.only_run().run_id
    assert standin.state.only_run().info["status"] == "KILLED"
    statuses = [json.loads(r.body)["status"] for r in standin.requests if r.path.endswith("update")]
    assert statuses == ["KILLED"]  # once
    assert not spool.dir.exists()


def test_an_outage_part_way_leaves_the_rest_pending_and_the_spool_on_disk(
    standin: MlflowStandin, tmp_path: Path, defaults: DictConfig
) -> None:
    spool = ended(tmp_path, standin)
    spool = Spool.open(tmp_path, spool.key)  # type: ignore[assignment]
    spool.append(losses(1))
    spool.append({"kind": "status", "status": "FINISHED", "timestamp": 9_500})
    spool.release()
    standin.fail(Fault.ERROR, "runs/update", at=2)  # the second end
    (result,) = sync_all(tracking(defaults, standin, tmp_path))
    assert (result.delivered, result.pending, result.rejected) == (3, 1, 0)
    assert result.message.startswith("not delivered: ") and not result.orphaned
    assert spool.dir.exists()
    again = Spool.open(tmp_path, spool.key)  # released: the next sync may take it
    assert again is not None and again.delivered_seq == 3
    again.release()


def test_a_spool_a_live_process_holds_is_left_to_it(
    standin: MlflowStandin, tmp_path: Path, defaults: DictConfig
) -> None:
    live = new_spool(tmp_path, standin)  # this process holds its lock, as a training would
    live.append(losses(0))
    (result,) = sync_all(tracking(defaults, standin, tmp_path))
    assert result == SyncResult(
        live.key, 0, 0, 0, None, "skipped: a training process is still logging it"
    )
    assert standin.requests == [] and live.pending
    live.release()


def test_a_spool_gone_meanwhile_is_reported_as_delivered(
    standin: MlflowStandin, tmp_path: Path, defaults: DictConfig
) -> None:
    from face_generation.tracking.sync import sync_spool

    result = sync_spool(
        tmp_path / "20260101-000000-0000abcd", tracking(defaults, standin, tmp_path)
    )
    assert result == SyncResult(
        "20260101-000000-0000abcd", 0, 0, 0, None, "ended and delivered meanwhile"
    )


@pytest.mark.parametrize("keep", [False, True])
def test_an_ended_run_is_delivered_and_its_spool_removed_unless_kept(
    keep: bool, standin: MlflowStandin, tmp_path: Path, defaults: DictConfig
) -> None:
    spool = ended(tmp_path, standin)
    (result,) = sync_all(tracking(defaults, standin, tmp_path, keep_spool_after_delivery=keep))
    run = standin.state.only_run()
    assert result == SyncResult(spool.key, 2, 0, 0, run.run_id, "delivered", False)
    assert (run.info["status"], run.info["end_time"]) == ("FINISHED", 9_000)
    assert spool.dir.exists() is keep


def test_a_refused_record_is_counted_and_keeps_the_spool(
    standin: MlflowStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = new_spool(tmp_path, standin)
    spool.append({"kind": "params", "params": {"lr": "0.1"}})
    spool.append({"kind": "params", "params": {"lr": "0.2"}})  # refused: a param never changes
    spool.end("FINISHED", 9_000)
    spool.release()
    sync_cli.main(overrides(standin, tmp_path))
    out = capsys.readouterr().out
    assert out.endswith("delivered; 3 records sent, 0 pending, 1 rejected (see rejected.jsonl)\n")
    assert spool.rejected_path.is_file()


def test_spools_are_delivered_oldest_first_and_the_cli_fails_while_any_is_pending(
    standin: MlflowStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = ["20260101-000000-0000000b", "20250101-000000-0000000a", "20270101-000000-0000000c"]
    for key in keys:
        spool = Spool.create(tmp_path, key, {**new_spool_meta(standin), "run_name": key[:4]})
        spool.append(losses(0))
        spool.end("FINISHED", 9_000)
        spool.release()
    (tmp_path / "not-a-spool").mkdir()
    assert [p.name for p in pending_spools(tmp_path)] == sorted(keys)
    assert pending_spools(tmp_path / "missing") == []

    standin.fail(Fault.ERROR, "runs/log-batch", at=2)  # the second spool's records
    with pytest.raises(SystemExit) as exit_info:
        sync_cli.main(overrides(standin, tmp_path))
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split(" ")[1] for line in lines] == sorted(keys)
    assert "delivered; 2 records sent, 0 pending" in lines[0]
    assert "not delivered" in lines[1] and "0 records sent, 2 pending" in lines[1]
    assert "(run not created yet)" not in lines[1]
    assert captured.err == (
        f"[tracking] some records are still only in {tmp_path}; start the server "
        "(python -m face_generation.tracking.server start) and run this again\n"
    )
    assert [r.info["run_name"] for r in standin.state.runs.values()] == ["2025", "2026", "2027"]


def new_spool_meta(standin: MlflowStandin) -> dict[str, object]:
    return {
        "tracking_uri": standin.uri,
        "experiment": EXPERIMENT,
        "run_id": None,
        "start_time": 1_000,
    }


def test_a_run_never_created_is_said_so(
    standin: MlflowStandin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ended(tmp_path, standin)
    standin.stop()
    with pytest.raises(SystemExit):
        sync_cli.main(overrides(standin, tmp_path))
    assert "(run not created yet): not delivered: " in capsys.readouterr().out


def test_another_server_given_on_the_command_line_is_remembered(
    standin: MlflowStandin, tmp_path: Path, defaults: DictConfig
) -> None:
    spool = new_spool(tmp_path, standin)
    spool.update_meta(tracking_uri="http://127.0.0.1:1")  # the server it was started against
    spool.append(losses(0))
    spool.release()
    cfg = tracking(defaults, standin, tmp_path)
    (result,) = sync_all(cfg, standin.uri)
    assert result.delivered == 2  # its records, then KILLED
    assert not spool.dir.exists()

    kept = new_spool(tmp_path, standin)
    kept.update_meta(tracking_uri="http://127.0.0.1:1")
    kept.append(losses(0))
    kept.release()
    keep = tracking(defaults, standin, tmp_path, keep_spool_after_delivery=True)
    sync_all(keep, standin.uri)
    assert json.loads((kept.dir / "run.json").read_text())["tracking_uri"] == standin.uri
    unchanged = json.loads((kept.dir / "run.json").read_text())
    sync_all(keep)  # no server given: each run's own
    assert standin.state.runs[str(unchanged["run_id"])].info["status"] == "KILLED"
    assert json.loads((kept.dir / "run.json").read_text()) == unchanged


def test_a_fresh_start_ends_only_its_own_models_orphans(
    standin: MlflowStandin, tmp_path: Path, defaults: DictConfig
) -> None:
    orphan = left_by_a_dead_process(tmp_path, standin, run_name="tiny")
    others = [  # names that sort before and after the run's own
        *(left_by_a_dead_process(tmp_path, standin, run_name=name) for name in ("ae", "vae")),
        *(left_by_a_dead_process(tmp_path, standin, experiment=name) for name in ("a", "zoo")),
    ]
    closed = ended(tmp_path, standin, run_name="tiny")
    live = new_spool(tmp_path, standin, run_name="tiny")
    cfg = tracking(defaults, standin, tmp_path)

    (result,) = close_orphans(cfg, "tiny")
    assert (result.local_key, result.orphaned, result.delivered) == (orphan.key, True, 3)
    assert not orphan.dir.exists()
    assert all(s.dir.exists() for s in (*others, closed, live))
    (run,) = standin.state.runs.values()
    assert (run.info["status"], run.info["run_name"]) == ("KILLED", "tiny")
    assert close_orphans(cfg, "tiny") == []
    live.release()


def test_the_kill_time_is_when_the_dead_process_last_wrote(
    standin: MlflowStandin, tmp_path: Path, defaults: DictConfig
) -> None:
    spool = left_by_a_dead_process(tmp_path, standin)
    os.utime(spool.events_path, ns=(0, 1_700_000_000_123_456_789))
    sync_all(tracking(defaults, standin, tmp_path))
    assert standin.state.only_run().info["end_time"] == 1_700_000_000_123


@pytest.mark.slow  # a fresh Python: over a second
def test_the_documented_command_runs(tmp_path: Path) -> None:
    """`python -m face_generation.tracking.sync`, as the README and the warnings say."""
    result = subprocess.run(
        [sys.executable, "-m", "face_generation.tracking.sync", f"tracking.spool_dir={tmp_path}"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    assert result.stdout == f"[tracking] nothing to deliver in {tmp_path}\n"


def test_the_help_says_what_the_command_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        sync_cli.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m face_generation.tracking.sync")
    assert "Deliver spooled MLflow records" in out and "--tracking-uri URI" in out


def test_a_failure_is_told_in_one_line(
    standin: MlflowStandin, tmp_path: Path, defaults: DictConfig
) -> None:
    ended(tmp_path, standin)
    standin.fail(Fault.ERROR, status=409, message="the first line\nthe rest of the story")
    (result,) = sync_all(tracking(defaults, standin, tmp_path))
    assert result.message == "not delivered: INTERNAL_ERROR: the first line"
