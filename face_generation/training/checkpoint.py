"""Writing checkpoints: atomic files, pruning, and the RNG states they hold.

The format, the step file names and reading it safely are face_generation/runtime/checkpoint.py. Files are written
to a temporary name, flushed to disk and renamed, so a run killed while saving never leaves a
half-written file under a checkpoint's name.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of the step checkpoints in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = STEP_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def newest_checkpoint(directory: Path) -> Path | None:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1][1] if checkpoints else None


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the `keep` newest step checkpoints (and temporaries of killed saves)."""
    for _, path in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)
    for temporary in directory.glob("*.pt.tmp"):
        temporary.unlink(missing_ok=True)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write atomically: temporary file, fsync, rename over `path`. A failed write (a full
    disk) removes its temporary and raises an OSError that names `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with temporary.open("wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        # torch reports a failed write (ENOSPC) as a RuntimeError raised over the OSError
        cause = error if isinstance(error, OSError) else error.__context__
        if isinstance(cause, OSError):
            raise OSError(cause.errno, cause.strerror, str(path)) from error
        raise


def rng_state() -> dict[str, Any]:
    """Every random generator the training code may draw from, in weights_only-safe types."""
    numpy_state = np.random.get_state(legacy=True)
    assert isinstance(numpy_state, tuple)
    _, keys, position, has_gauss, cached_gaussian = numpy_state
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    saved = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            saved["keys"].numpy().astype(np.uint32),
            saved["position"],
            saved["has_gauss"],
            saved["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if (
        state["cuda"]
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])
