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
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
