"""Pieces every family's `train_step` uses: placing a network, Adam from config, one update."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import torch
from omegaconf import DictConfig
from torch import nn

from face_generation.runtime.family import StepContext

NetworkT = TypeVar("NetworkT", bound=nn.Module)


def place(network: NetworkT, context: StepContext) -> NetworkT:
    """Move a network to the step's device and memory layout."""
    return network.to(context.device).to(memory_format=context.memory_format)


def adam(
    parameters: Iterable[nn.Parameter], optimizer_cfg: DictConfig, device: torch.device
) -> torch.optim.Adam:
    """Adam with `lr` and `betas` from the model's config; the fused kernel on CUDA."""
    return torch.optim.Adam(
        parameters,
        lr=float(optimizer_cfg.lr),
        betas=(float(optimizer_cfg.betas[0]), float(optimizer_cfg.betas[1])),
        fused=device.type == "cuda" or None,
    )


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    network: nn.Module,
    grad_clip: float | None,
) -> torch.Tensor:
    """Backward, clip the global gradient norm, update; returns the norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parameters = [p for p in network.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip or float("inf"))
    optimizer.step()
    return norm
