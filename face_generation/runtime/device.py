"""Which device computes: the one rule that training, evaluation, inference and serving share."""

from __future__ import annotations

import torch


def pick_device(requested: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None): CUDA when present, else the CPU; anything else as torch.device reads it."""
    if requested is None or str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {str(requested)!r} was asked for but CUDA is not available here; "
            "use auto (CUDA when present, else the CPU) or cpu"
        )
    return device
