"""Checkpoints: one file with everything a run needs to continue exactly where it stopped.

A checkpoint is a dict saved with torch.save and always read with `weights_only=True`:

    format       CHECKPOINT_FORMAT (an int, bumped when the layout changes)
    model        the model family name (cfg.model.name: "vae", "dcgan", ...)
    step         optimisation steps done; images_seen = step * batch size
    networks     {name: state_dict} for every trained network of the family
    optimizers   {name: state_dict}
    ema          state_dict of the EMA generator, or None when EMA is off
    generator    the key in `networks` that the EMA tracks and that samples
    rng          python, numpy, torch and CUDA generator states
    config       the run's resolved config as plain containers
    run_id       the tracking run id, so a resumed run continues the same run

Files are written to a temporary name, flushed to disk and renamed, so a run killed while
saving never leaves a half-written file under a checkpoint's name.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from face_generation.training.families import build_generator

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "model", "step", "networks", "optimizers", "generator", "config")
STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def step_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}.pt"


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
    """Write atomically: temporary file, fsync, rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def load_checkpoint(path: str | Path, expected_model: str | None = None) -> dict[str, Any]:
    """Read and check a checkpoint on the CPU; any problem is a CheckpointError naming `path`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
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
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {state['format']}; this code reads format "
            f"{CHECKPOINT_FORMAT}: use the version of face_generation that wrote it"
        )
    if expected_model is not None and state["model"] != expected_model:
        raise CheckpointError(
            f"checkpoint {path} holds a '{state['model']}' model, not '{expected_model}': "
            f"pass a {expected_model} checkpoint, or train with model={state['model']}"
        )
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


def load_generator(
    path: str | Path, device: torch.device | str = "cpu", use_ema: bool = True
) -> tuple[nn.Module, DictConfig]:
    """The sampling network of a checkpoint (EMA weights when it has them), in eval mode,
    and the config it was trained with."""
    path = Path(path)
    state = load_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
    network = build_generator(cfg.model, int(cfg.data.resolution))
    weights = state["ema"] if use_ema and state["ema"] is not None else None
    if weights is None:
        weights = state["networks"][state["generator"]]
    load_weights(network, weights, path, "generator")
    return network.to(device).eval(), cfg
