"""The noise that latent-variable families sample from."""

from __future__ import annotations

import torch


def gaussian_latents(
    n: int,
    dim: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """n latents from N(0, temperature²·I), drawn on the CPU so that one seed gives the same
    latents on every device, then moved to `device`."""
    return (torch.randn(n, dim, generator=generator) * temperature).to(device)
