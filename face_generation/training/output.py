"""models/<name>/, the folder a training run writes: one writer at a time, and nothing of the
previous run lost before the new run has a checkpoint of its own.

    model.pt        the final checkpoint (DVC tracks it)
    checkpoints/    step checkpoints, the newest `train.keep_checkpoints`
    samples/        a sample grid every `train.sample_every` steps; samples.png is the last
    losses.csv      the logged metrics (DVC draws it)
    mlflow_run.json the run's MLflow run id, page and registered version (tracked runs)
    .lock           held by the training process while it runs (released by the OS on death)
    .previous/      a fresh start moves the earlier run's files here, and deletes them only
                    once the new run has written its first checkpoint; a run that fails or is
                    killed before that gets them back

`RunFolder` is that folder during one run: where the run starts (`train.resume`, decided in
training/resume.py), its checkpoints, and the earlier run's files set aside and given back, so
the loop only trains.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from face_generation.errors import describe
from face_generation.runtime.checkpoint import (
    model_file_state,
    newest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    step_path,
)
from face_generation.training.resume import ResumePlan, check_same_model, plan_resume

RUN_LINK = "mlflow_run.json"
RUN_FILES = ("checkpoints", "samples", "model.pt", "samples.png", "losses.csv", RUN_LINK)


class OutputBusyError(RuntimeError):
    """Another training process writes the same model folder."""


@contextmanager
def exclusive_writer(folder: Path) -> Iterator[None]:
    """Hold folder/.lock for the duration; a second writer is refused with the first's PID.

    flock is released by the OS when the process dies, so a killed run never leaves a stale lock.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise OutputBusyError(
            f"{folder} is being written by another training (PID {owner}): wait for it to "
            f"finish or stop it (kill {owner}) before training this model again"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def set_aside_previous_run(folder: Path) -> bool:
    """Move the earlier run's files into folder/.previous/; True when there were any."""
    present = [folder / name for name in RUN_FILES if (folder / name).exists()]
    if not present:
        return False
    previous = folder / ".previous"
    previous.mkdir(parents=True, exist_ok=True)
    for path in present:
        path.replace(previous / path.name)
    return True


def restore_previous_run(folder: Path) -> bool:
    """Put the files of folder/.previous/ back in place of everything a failed fresh start
    wrote (its run files and their temporaries); True when there was anything to restore."""
    previous = folder / ".previous"
    if not previous.is_dir():
        return False
    for name in RUN_FILES:
        remove(folder / name)
    for temporary in folder.glob(".*.tmp"):  # e.g. .mlflow_run.json.tmp of a failed write
        remove(temporary)
    for path in previous.iterdir():
        path.replace(folder / path.name)
    previous.rmdir()
    return True


def remove(path: Path) -> None:
    """Delete a file or a folder tree; nothing when it is not there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def discard_previous_run(folder: Path) -> None:
    """The new run has a checkpoint: the earlier run's files are no longer needed."""
    shutil.rmtree(folder / ".previous", ignore_errors=True)


def model_dir(cfg: DictConfig) -> Path:
    """models/<name>/: checkpoints/, samples/ and model.pt (the final checkpoint)."""
    return Path(cfg.paths.models) / str(cfg.model.name)


class RunFolder:
    """models/<name>/ during one training run. Only the process that `writes` (rank 0) moves,
    writes or deletes files; the others read the same decisions from the same files."""

    def __init__(self, cfg: DictConfig, writes: bool) -> None:
        self.path = model_dir(cfg)
        self.checkpoints = self.path / "checkpoints"
        self.samples = self.path / "samples"
        self.model_file = self.path / "model.pt"
        self.writes = writes
        self.keep_checkpoints = int(cfg.train.keep_checkpoints)
        self.previous_kept = False  # the earlier run's files wait in .previous/
        self.last_good: Path | None = None  # the newest checkpoint of this run

    def start(self, cfg: DictConfig, data_hash: str) -> ResumePlan:
        """Where this run starts: the files of a fresh start killed before its first checkpoint
        are put back, then `train.resume` decides; a finished run gets its model.pt, a resumed
        one is checked to rebuild the same networks, and a fresh start sets the earlier run's
        files aside until its first checkpoint."""
        if self.writes and restore_previous_run(self.path):
            print(f"[train] restored the files of the run before an interrupted fresh start in "
                  f"{self.path}")  # fmt: skip
        plan = plan_resume(cfg, self.checkpoints, data_hash)
        if plan.note:
            print(f"[train] {plan.note}")
        if plan.finished:
            assert plan.state is not None
            if self.writes and not self.model_file.exists():
                save_checkpoint(model_file_state(plan.state), self.model_file)
        elif plan.checkpoint is not None:
            assert plan.state is not None
            check_same_model(plan.state, cfg, plan.checkpoint)
        elif self.writes and set_aside_previous_run(self.path):
            print(
                f"[train] fresh start: the earlier run's files in {self.path} are kept in "
                f"{self.path / '.previous'} until this run writes its first checkpoint"
            )
        self.previous_kept = (self.path / ".previous").is_dir()
        self.last_good = newest_checkpoint(self.checkpoints)
        return plan

    def save(self, step: int, state: dict[str, Any] | None, final: bool = False) -> Path:
        """Write checkpoint `state` of `step` (and model.pt when `final`), prune the old ones
        and drop the earlier run's files, now that this run has a checkpoint. `state` is None
        where this process does not write."""
        path = step_path(self.checkpoints, step)
        if self.writes:
            assert state is not None
            try:
                save_checkpoint(state, path)
                if final:
                    save_checkpoint(model_file_state(state), self.model_file)
            except OSError as error:  # a full disk: say which file, and what the user still has
                kept = (
                    f"the earlier run's files, back in {self.path}"
                    if self.previous_kept
                    else f"the checkpoint {self.last_good}"
                    if self.last_good
                    else "no checkpoint of this run"
                )
                raise OSError(
                    error.errno, f"{error.strerror}; kept {kept}", error.filename
                ) from error
            prune_checkpoints(self.checkpoints, self.keep_checkpoints)
            if self.previous_kept:
                discard_previous_run(self.path)
                self.previous_kept = False
        self.last_good = path
        return path

    def give_back_previous(self) -> None:
        """After a failure: put back the earlier run's files of a fresh start, if they are
        still set aside. A failure here is printed, never raised over the first one."""
        if not (self.writes and self.previous_kept):
            return
        try:
            restore_previous_run(self.path)
            print(f"[train] the earlier run's files in {self.path} are restored")
        except Exception as failure:
            print(f"[train] the earlier run's files stay in {self.path / '.previous'} "
                  f"(put back at the next start): {describe(failure)}")  # fmt: skip
