"""Deliver spooled MLflow records: `python -m face_generation.tracking.sync`.

Training writes every metric, artifact and model to `tracking.spool_dir` before sending it;
what the server did not take (it was down) stays there. This sends it, run by run, in order,
and removes the spool of each run that ended and is fully delivered. Runs still being logged
by a live training process are left to that process. A run whose process died without ending
it (killed before its first checkpoint, say) would stay RUNNING in MLflow forever: once its
records are delivered it is ended as KILLED, at the time it last logged, and its spool removed.
A later resume from a checkpoint of that run sets it RUNNING again.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from face_generation.tracking.delivery import deliver_spool
from face_generation.tracking.spool import Spool, SpoolBusyError, read_meta


@dataclass
class SyncResult:
    local_key: str
    delivered: int  # records sent now
    pending: int  # records still not in MLflow
    rejected: int  # records the server refused as invalid (kept in rejected.jsonl)
    run_id: str | None
    message: str
    orphaned: bool = False  # its process died without ending the run: ended here as KILLED


def pending_spools(spool_dir: str | Path) -> list[Path]:
    """The spool folders under `spool_dir`, oldest first."""
    root = Path(spool_dir)
    return sorted(p.parent for p in root.glob("*/run.json")) if root.is_dir() else []


def sync_spool(directory: Path, cfg: DictConfig, uri: str | None = None) -> SyncResult:
    """Deliver one run's spool; remove it when the run ended and everything is delivered."""
    key = directory.name
    try:
        spool = Spool.open(directory.parent, key)
    except SpoolBusyError:
        return SyncResult(key, 0, 0, 0, None, "skipped: a training process is still logging it")
    if spool is None:
        return SyncResult(key, 0, 0, 0, None, "ended and delivered meanwhile")
    orphaned = not spool.closed  # and unlocked: the process that logged it is gone
    if orphaned:
        spool.end("KILLED", spool.last_written_ms)  # after its pending records
    before = len(spool.pending)
    try:
        rejected = deliver_spool(spool, cfg, uri)
        message = "delivered"
    except Exception as error:
        rejected, message = [], f"not delivered: {str(error).splitlines()[0]}"
    if orphaned:
        message = f"left RUNNING by a process that died: marked KILLED, {message}"
    result = SyncResult(
        key,
        before - len(spool.pending),
        len(spool.pending),
        len(rejected),
        spool.run_id,
        message,
        orphaned,
    )
    spool.finish(keep=cfg.keep_spool_after_delivery)
    return result


def sync_all(cfg: DictConfig, uri: str | None = None) -> list[SyncResult]:
    return [sync_spool(directory, cfg, uri) for directory in pending_spools(cfg.spool_dir)]


def close_orphans(cfg: DictConfig, run_name: str) -> list[SyncResult]:
    """End the runs named `run_name` in this experiment that their process left RUNNING.

    For a training run that starts afresh: the runs killed before their first checkpoint
    can never be resumed. Each is delivered, marked KILLED and its spool removed, as `sync`
    does; runs that a live process still logs are left alone.
    """
    results = []
    for directory in pending_spools(cfg.spool_dir):
        meta = read_meta(directory)
        if meta.get("run_name") != run_name or meta.get("experiment") != cfg.experiment:
            continue
        if not meta.get("closed") and (result := sync_spool(directory, cfg)).orphaned:
            results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    from face_generation.config import config_from_args, stage_parser
    from face_generation.errors import reported_errors

    parser = stage_parser(__doc__ or "")
    parser.prog = "python -m face_generation.tracking.sync"
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="send to this server instead of the one each run was started against",
    )
    args = parser.parse_args(argv)
    with reported_errors("tracking"):
        cfg = config_from_args(args).tracking
    results = sync_all(cfg, args.tracking_uri)
    if not results:
        print(f"[tracking] nothing to deliver in {cfg.spool_dir}")
        return
    for result in results:
        extra = f", {result.rejected} rejected (see rejected.jsonl)" if result.rejected else ""
        print(
            f"[tracking] {result.local_key} (run {result.run_id or 'not created yet'}): "
            f"{result.message}; {result.delivered} records sent, {result.pending} pending{extra}"
        )
    if any(result.pending for result in results):
        print(
            f"[tracking] some records are still only in {cfg.spool_dir}; start the server "
            "(python -m face_generation.tracking.server start) and run this again",
            file=sys.stderr,
        )
        raise SystemExit(1)


if __name__ == "__main__":
    main()
