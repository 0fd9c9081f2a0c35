"""The on-disk queue of one run's records, kept until the MLflow server acknowledges them.

Every record (params, metrics, tags, artifacts, the final model, the run's status) is first
appended to a spool, `<tracking.spool_dir>/<local key>/`:

    run.json        the run's identity: local key, tracking URI, experiment, MLflow run id
    events.jsonl    append-only records, numbered by `seq`
    cursor          the last `seq` the server has acknowledged
    files/<seq>/    copies of logged artifact and image files, taken when they were logged
    models/<seq>/   MLflow models saved locally, uploaded on delivery
    models.json     how far the delivery of each model record got
    held.json       metric steps the server held past the last resume point: not sent again
    rejected.jsonl  records the server refused as invalid (kept, and reported)

A spool is locked by the process that opened it, so a training run and
`python -m face_generation.tracking.sync` never deliver the same records twice. The lock goes
with the process: a spool that is unlocked but not closed was left by a process that died.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

Event = dict[str, Any]

LOCAL_KEY_PATTERN = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")  # what new_local_key() makes


def new_local_key() -> str:
    """A fresh spool key: the start time, then a random suffix (see LOCAL_KEY_PATTERN)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def read_meta(directory: Path) -> dict[str, Any]:
    """A spool's run.json, read without locking it; {} when the spool is gone."""
    return dict(json.loads(_read_text(directory / "run.json") or "{}"))


def spool_key_of_run(root: Path, run_id: str) -> str | None:
    """The local key of the spool kept on disk for MLflow run `run_id`, if there is one."""
    for meta_path in sorted(root.glob("*/run.json")):
        meta = read_meta(meta_path.parent)
        if meta.get("run_id") == run_id:
            return str(meta["local_key"])
    return None


class SpoolBusyError(RuntimeError):
    """Another process holds this spool (a training run still logging to it)."""


class Spool:
    """The on-disk record of one run: what was logged, and how much of it MLflow holds."""

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        self.dir = directory
        self.meta = meta
        self._lock = _lock(directory / "lock")
        self.events_path = directory / "events.jsonl"
        self.delivered_seq = int(_read_text(directory / "cursor") or 0)
        events = _read_events(self.events_path)
        # The cursor outlives compaction (an emptied events.jsonl): numbering goes on from it.
        self.next_seq = max(events[-1]["seq"] if events else 0, self.delivered_seq) + 1
        self.pending: list[Event] = [e for e in events if e["seq"] > self.delivered_seq]
        self._events: TextIO | None = self.events_path.open("a", encoding="utf-8")
        self._models = json.loads(_read_text(directory / "models.json") or "{}")
        held = json.loads(_read_text(directory / "held.json") or "{}")
        self.held_steps: dict[str, set[int]] = {key: set(steps) for key, steps in held.items()}

    @classmethod
    def create(cls, root: Path, key: str, meta: dict[str, Any]) -> Spool:
        directory = root / key
        directory.mkdir(parents=True, exist_ok=True)
        spool = cls(directory, {"local_key": key, **meta})
        spool.update_meta()  # run.json last: sync sees the spool only once it is locked
        return spool

    @classmethod
    def open(cls, root: Path, key: str) -> Spool | None:
        """The spool of local key `key`, or None when there is none."""
        path = root / key / "run.json"
        return cls(path.parent, json.loads(path.read_text())) if path.is_file() else None

    @property
    def key(self) -> str:
        return str(self.meta["local_key"])

    @property
    def run_id(self) -> str | None:
        return self.meta.get("run_id")

    @property
    def closed(self) -> bool:
        return bool(self.meta.get("closed"))

    @property
    def rejected_path(self) -> Path:
        return self.dir / "rejected.jsonl"

    def update_meta(self, **values: Any) -> None:
        self.meta.update(values)
        _write_json(self.dir / "run.json", self.meta)

    def end(self, status: str | None, timestamp: int) -> None:
        """Record the end of the run (FINISHED, FAILED or KILLED; None: the run keeps the
        status it has): the spool is closed."""
        if status is not None:
            self.append({"kind": "status", "status": status, "timestamp": timestamp})
        self.update_meta(closed=True)

    @property
    def last_written_ms(self) -> int:
        """When a record was last written (epoch milliseconds)."""
        return self.events_path.stat().st_mtime_ns // 1_000_000

    def append(self, event: Event) -> Event:
        """Write one record to disk; it is pending until the server acknowledges it."""
        assert self._events is not None, "spool closed"
        event = {"seq": self.next_seq, **event}
        self._events.write(json.dumps(event) + "\n")
        self._events.flush()
        self.next_seq += 1
        self.pending.append(event)
        return event

    def drop_pending_metrics_after(self, step: int) -> None:
        """Forget the undelivered metric records of steps after `step`.

        A run resumed from the checkpoint of `step` logs those steps again: the records of the
        lost steps would double them.
        """
        dropped = {e["seq"] for e in self.pending if e["kind"] == "metrics" and e["step"] > step}
        if not dropped:
            return
        assert self._events is not None, "spool closed"
        self._events.close()
        kept = [e for e in _read_events(self.events_path) if e["seq"] not in dropped]
        _write_text(self.events_path, "".join(json.dumps(e) + "\n" for e in kept))
        self._events = self.events_path.open("a", encoding="utf-8")
        self.pending = [e for e in self.pending if e["seq"] not in dropped]

    def hold_steps(self, steps: dict[str, set[int]]) -> None:
        """The steps of each metric that the server already holds: delivery skips them."""
        self.held_steps = steps
        _write_json(self.dir / "held.json", {key: sorted(v) for key, v in steps.items()})

    def reserve_dir(self, kind: str) -> Path:
        """A fresh folder for the files of the next record (`files/<seq>`, `models/<seq>`)."""
        directory = self.dir / kind / f"{self.next_seq:08d}"
        shutil.rmtree(directory, ignore_errors=True)  # left by a crash before the record
        directory.mkdir(parents=True)
        return directory

    def files_of(self, event: Event) -> Path:
        """Where an artifact or model record's files are in this spool."""
        return self.dir / str(event["path"])  # relative to the spool

    def acknowledge(self, seq: int) -> None:
        """The server holds every record up to `seq`: advance the cursor, drop their files."""
        if seq <= self.delivered_seq:
            return
        self.delivered_seq = seq
        done = [e for e in self.pending if e["seq"] <= seq]
        self.pending = [e for e in self.pending if e["seq"] > seq]
        _write_text(self.dir / "cursor", str(seq))
        for event in done:  # the copies of files MLflow now holds
            if event["kind"] in ("artifact", "image", "model"):
                shutil.rmtree(self.files_of(event).parent, ignore_errors=True)

    def reject(self, event: Event, error: Exception) -> None:
        """Keep a record the server refused as invalid, with the reason, in rejected.jsonl."""
        with self.rejected_path.open("a", encoding="utf-8") as rejected:
            rejected.write(json.dumps({**event, "error": str(error)}) + "\n")

    def model_state(self, seq: int) -> dict[str, Any]:
        """What delivery has done for the model record `seq` (model_id, uploaded, version)."""
        return dict(self._models.get(str(seq), {}))

    def update_model_state(self, seq: int, **values: Any) -> dict[str, Any]:
        """Record a finished step of a model's delivery, so that a retry resumes after it."""
        self._models.setdefault(str(seq), {}).update(values)
        _write_json(self.dir / "models.json", self._models)
        return self.model_state(seq)

    @property
    def events_size(self) -> int:
        return self.events_path.stat().st_size if self.events_path.exists() else 0

    def sync_to_disk(self) -> None:
        if self._events is not None:
            os.fsync(self._events.fileno())

    def release(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        self._lock.close()

    def remove(self) -> None:
        self.release()
        shutil.rmtree(self.dir, ignore_errors=True)

    def finish(self, keep: bool) -> bool:
        """Let go of the spool; remove it (True) when the run ended and MLflow holds all of it.

        A spool with records the server rejected is kept, so that nothing is lost unseen.
        """
        if keep or self.pending or not self.closed or self.rejected_path.exists():
            self.release()
            return False
        self.remove()
        return True

    def compact(self) -> None:
        """Empty events.jsonl once everything in it is delivered (the cursor keeps the count)."""
        assert not self.pending and self._events is not None
        self._events.close()
        self._events = self.events_path.open("w", encoding="utf-8")


def _lock(path: Path) -> TextIO:
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SpoolBusyError(
            f"{path.parent} is in use by another process (a run still logging to it)"
        ) from None
    return handle


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _write_text(path: Path, text: str) -> None:
    """Atomic: readers see the old or the new content, never half of it."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _write_json(path: Path, value: Any) -> None:
    _write_text(path, json.dumps(value, indent=1))


def _read_events(path: Path) -> list[Event]:
    """The records of an events.jsonl; a last line cut short by a crash is dropped."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    events = []
    for number, line in enumerate(lines):
        if not line:
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines) - 1:
                raise ValueError(f"{path} line {number + 1} is corrupt: {line[:80]!r}") from None
            with path.open("r+", encoding="utf-8") as handle:  # drop the torn last line
                handle.truncate(len(text.encode()) - len(line.encode()))
    return events
