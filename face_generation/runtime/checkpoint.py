"""The checkpoint format, in one place: one file with everything a run needs.

A checkpoint is a dict saved with torch.save and always read with `weights_only=True`, so a
file whose pickle would run code is refused before anything runs:

    format        CHECKPOINT_FORMAT (an int, bumped when the layout changes)
    model         the model family name (cfg.model.name: "vae", "dcgan", ...)
    step          optimisation steps done; images_seen = step * batch size
    networks      {name: state_dict} for every trained network of the family (never frozen ones)
    optimizers    {name: state_dict}
    ema           state_dict of the EMA generator, or None when EMA is off
    generator     the key in `networks` that the EMA follows and that samples
    family_state  the family's own state (Family.state_dict()); format 1 files had none
    rng           python, numpy, torch and CUDA generator states
    config        the run's resolved config as plain containers
    run_id        the tracking run id, so a resumed run continues the same run; None in
                  models/<name>/model.pt, so the same training writes the same bytes (DVC
                  sees an unchanged output): `training_run_id` finds it beside that file
    losses        {"columns", "rows"}: losses.csv up to `step` (training/loss_log.py), from
                  which a resumed run rewrites the file; absent in older files

This module owns the format: it assembles a checkpoint from a training run's state
(`checkpoint_state`, `model_file_state`), writes it (atomic, pruned: `save_checkpoint`,
`prune_checkpoints`), reads and checks it (`load_checkpoint`, `load_weights`) and puts it back
into a run (`restore_training_state`). Training calls it; inference and evaluation only read.
Files are written to a temporary name, flushed to disk and renamed, so a run killed while
saving never leaves a half-written file under a checkpoint's name.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from face_generation.runtime.family import Family

CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)  # format 1 is format 2 without `family_state`
REQUIRED_KEYS = ("format", "model", "step", "networks", "optimizers", "generator", "config")
STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and what to do."""


# Assembling: a training run's state as a checkpoint.


def checkpoint_state(
    cfg: DictConfig,
    family: Family,
    ema: nn.Module | None,
    step: int,
    run_id: str,
    data_hash: str,
    losses: dict[str, Any],
) -> dict[str, Any]:
    """Everything a checkpoint holds (the layout above); frozen networks are not in it: they
    are rebuilt from their own weights. `ema` is the averaged generator, `losses` the loss
    log's history."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": str(cfg.model.name),
        "step": step,
        "images_seen": step * int(cfg.train.batch_size),
        "networks": {name: network.state_dict() for name, network in family.networks.items()},
        "optimizers": {
            name: optimizer.state_dict() for name, optimizer in family.optimizers.items()
        },
        "ema": ema.state_dict() if ema is not None else None,
        "generator": family.generator_key,
        "family_state": family.state_dict(),
        "rng": rng_state(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "run_id": run_id,
        "data_hash": data_hash,  # `train.resume=matching` resumes only on the same data
        "losses": losses,  # losses.csv up to here: a resume rewrites it from this
    }


def model_file_state(state: dict[str, Any]) -> dict[str, Any]:
    """What models/<name>/model.pt holds: the checkpoint without its run id, so the same
    training writes the same bytes and DVC sees an unchanged output (the step checkpoint
    beside it keeps the run id: `training_run_id`)."""
    return {**state, "run_id": None}


# Reading and checking; putting a checkpoint back into a run.


def load_checkpoint(path: str | Path, expected_model: str | None = None) -> dict[str, Any]:
    """Read and check a checkpoint on the CPU; any problem is a CheckpointError naming `path`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False: never take that advice here
        raise CheckpointError(
            f"checkpoint {path} is not a checkpoint of this project: it holds Python objects "
            "beyond tensors and plain values, whose unpickling could run code, so it was not "
            "loaded. Use a checkpoint written by face_generation training"
        ) from None
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {error}). The file is "
            "truncated or corrupt (a run killed while copying it?) or is not a face_generation "
            "checkpoint: delete it and resume from an older one, or retrain"
        ) from error
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(
            f"checkpoint {path} is not a face_generation training checkpoint (missing keys "
            f"{[key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]})"
        )
    if state["format"] not in READABLE_FORMATS:
        raise CheckpointError(
            f"checkpoint {path} has format {state['format']}; this code reads formats "
            f"{list(READABLE_FORMATS)}: use the version of face_generation that wrote it"
        )
    if expected_model is not None and state["model"] != expected_model:
        raise CheckpointError(
            f"checkpoint {path} holds a '{state['model']}' model, not '{expected_model}': "
            f"pass a {expected_model} checkpoint, or train with model={state['model']}"
        )
    state.setdefault("family_state", {})
    return state


def load_weights(
    module: nn.Module, weights: dict[str, torch.Tensor], path: Path, what: str
) -> None:
    """load_state_dict, with a mismatch reported as a CheckpointError naming the file."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {path}: its {what} weights do not fit the network built from the "
            f"current config (different model.* settings or data.resolution?):\n{error}"
        ) from error


def restore_training_state(
    state: dict[str, Any], family: Family, ema: nn.Module | None, path: Path
) -> None:
    """Put checkpoint `state` (read from `path`) back into a run: networks, optimisers, the
    averaged generator `ema`, the family's own state and every RNG stream."""
    for name, network in family.networks.items():
        if name not in state["networks"]:
            raise CheckpointError(f"checkpoint {path} has no weights for the network '{name}'")
        load_weights(network, state["networks"][name], path, name)
    for name, optimizer in family.optimizers.items():
        try:
            optimizer.load_state_dict(state["optimizers"][name])
        except (KeyError, ValueError) as error:
            raise CheckpointError(
                f"checkpoint {path}: optimizer '{name}' state does not fit ({error})"
            ) from error
    if ema is not None:
        # a checkpoint written without EMA starts the average from the trained weights
        weights = (
            state["ema"] if state["ema"] is not None else state["networks"][family.generator_key]
        )
        load_weights(ema, weights, path, "EMA")
    try:
        family.load_state_dict(state["family_state"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path}: the family's state does not fit ({error})"
        ) from error
    restore_rng_state(state["rng"])


def step_path(directory: Path, step: int) -> Path:
    """The step checkpoint written after `step` steps: <directory>/step-<step>.pt."""
    return directory / f"step-{step:08d}.pt"


def training_run_id(model_file: Path, step: int) -> str | None:
    """The tracking run that trained models/<name>/model.pt (whose own run_id is None): the
    run id of the step checkpoint of the same step in checkpoints/ beside it, if any."""
    beside = step_path(model_file.parent / "checkpoints", step)
    return load_checkpoint(beside).get("run_id") if beside.is_file() else None


# Writing: atomic files, pruning, and the RNG states they hold.


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
