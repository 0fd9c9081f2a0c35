"""Which device computes, and how many CPU threads: the rules that training, evaluation, the
features stage, inference and serving share."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from face_generation.errors import UserError

DEVICES = "auto (CUDA when present, else the CPU), cpu, cuda or cuda:N"
# What forward passes compute in: auto is bf16 on CUDA and float32 on the CPU.
PRECISIONS = ("auto", "bf16", "fp32")


def pick_device(requested: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None): CUDA when present, else the CPU; anything else as torch.device reads
    it. A device that does not exist here is a UserError naming what does."""
    if requested is None or str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"device {str(requested)!r} is not a device: use {DEVICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {str(requested)!r} is not supported: use {DEVICES}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device {str(requested)!r} was asked for but CUDA is not available here; "
            "use auto (CUDA when present, else the CPU) or cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(
            f"device {str(requested)!r}: this machine has {torch.cuda.device_count()} CUDA "
            f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return device


def use_threads(threads: int | None) -> int:
    """Let torch use `threads` CPU threads (None: its own choice, one per core); returns the
    number it uses. On a shared machine fewer threads than cores keep steps from crawling."""
    if threads is not None:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def autocast_for(device: torch.device, precision: str) -> Callable[[], AbstractContextManager[Any]]:
    """The context forward passes run in: bf16 autocast for `bf16` (and `auto` on CUDA), plain
    float32 for `fp32` (and `auto` on the CPU). Weights stay float32 either way. On the CPU bf16
    pays where the cores multiply bf16 in hardware (AMX, AVX512-BF16): benchmarks/README.md."""
    if computes_in_bf16(device, precision):
        return functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def computes_in_bf16(device: torch.device, precision: str) -> bool:
    """Whether `precision` on `device` is bf16 autocast; an unknown precision is a UserError."""
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")
