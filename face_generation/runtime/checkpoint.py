"""The checkpoint format, and reading it safely: one file with everything a run needs.

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

Writing (atomic, pruned) is training's job: face_generation/training/checkpoint.py.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)  # format 1 is format 2 without `family_state`
REQUIRED_KEYS = ("format", "model", "step", "networks", "optimizers", "generator", "config")


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and what to do."""


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


def step_path(directory: Path, step: int) -> Path:
    """The step checkpoint written after `step` steps: <directory>/step-<step>.pt."""
    return directory / f"step-{step:08d}.pt"


def training_run_id(model_file: Path, step: int) -> str | None:
    """The tracking run that trained models/<name>/model.pt (whose own run_id is None): the
    run id of the step checkpoint of the same step in checkpoints/ beside it, if any."""
    beside = step_path(model_file.parent / "checkpoints", step)
    return load_checkpoint(beside).get("run_id") if beside.is_file() else None
