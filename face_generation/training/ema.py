"""Exponential moving average of a network's weights: the copy that samples are drawn from."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """`module` is a frozen copy whose parameters follow the trained network's slowly.

    The decay ramps up as min(decay, (1 + step) / (10 + step)), so that early in a short
    run the average is not dominated by the random initial weights. Buffers (BatchNorm's
    running statistics) are copied, not averaged.
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema.decay must be in [0, 1); got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(network).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, network: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for average, parameter in zip(self.module.parameters(), network.parameters(), strict=True):
            average.lerp_(parameter, 1.0 - decay)
        for average_buffer, buffer in zip(self.module.buffers(), network.buffers(), strict=True):
            average_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
