"""Where training runs: the device, and how steps compute on it."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from omegaconf import DictConfig

from face_generation.training.families import StepContext


def pick_device(requested: str) -> torch.device:
    """`auto`: CUDA when present, else the CPU; anything else as torch.device reads it."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"train.device={requested} but CUDA is not available; use train.device=auto"
        )
    return device


def step_context(device: torch.device, train_cfg: DictConfig) -> StepContext:
    """bf16 autocast, channels_last and TF32 on CUDA; plain float32 on the CPU."""
    autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
    memory_format = torch.contiguous_format
    if device.type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"  # type: ignore[attr-defined]
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        if train_cfg.precision == "bf16":
            autocast = functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
        memory_format = torch.channels_last
    grad_clip = float(train_cfg.grad_clip) if train_cfg.grad_clip else None
    return StepContext(device, autocast, grad_clip, memory_format)
