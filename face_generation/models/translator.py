"""The Translator's networks: a head from a frozen backbone's features to the Imitator's face
parameters, and the round trip photo features → parameters → face.

The face parameters are the Imitator's input (the identity-conditioned GAN's generator,
models/cond_gan.py): its embedding and its low-dimensional code. Networks only: the losses
and the training step live in families/translator.py.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from face_generation.models.cond_gan import UNetGenerator


class TranslatorHead(nn.Module):
    """Features (N×features_dim) → (embedding N×cond_dim, code N×code_dim), by a two-layer MLP.

    `passthrough`: the features are the Imitator's own condition rows, so the embedding is
    those rows plus a learned correction that starts at zero (the round trip starts where the
    Imitator was trained: on the face's own row)."""

    def __init__(
        self,
        features_dim: int,
        hidden_dim: int,
        cond_dim: int,
        code_dim: int,
        leaky_slope: float,
        passthrough: bool = False,
    ) -> None:
        super().__init__()
        if passthrough and features_dim != cond_dim:
            raise ValueError(
                f"passthrough needs features_dim {features_dim} == cond_dim {cond_dim}"
            )
        self.features_dim, self.cond_dim, self.code_dim = features_dim, cond_dim, code_dim
        self.hidden = nn.Linear(features_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, cond_dim + code_dim)
        if passthrough:
            nn.init.zeros_(self.out.weight[:cond_dim])
            nn.init.zeros_(self.out.bias[:cond_dim])
        self.leaky_slope, self.passthrough = leaky_slope, passthrough

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.leaky_relu(self.hidden(features), self.leaky_slope)
        parameters = self.out(hidden)
        embedding, code = parameters[:, : self.cond_dim], parameters[:, self.cond_dim :]
        return (embedding + features if self.passthrough else embedding), code


class RoundTrip(nn.Module):
    """The trained head and the frozen Imitator: features → parameters → face (N×3×R×R).

    `prior_mean` and `prior_std` are the Imitator's random embeddings (its condition prior),
    the region of parameter space it was trained on. `features_network` and `features_array`
    name the head's input (the settings of the network that wrote it): plain attributes, which
    the family sets, to compute that input from photos."""

    prior_mean: torch.Tensor
    prior_std: torch.Tensor
    features_network: Any = None
    features_array: str = ""

    def __init__(
        self,
        head: TranslatorHead,
        imitator: UNetGenerator,
        prior_mean: torch.Tensor,
        prior_std: torch.Tensor,
    ) -> None:
        super().__init__()
        if (head.cond_dim, head.code_dim) != (imitator.cond_dim, imitator.code_dim):
            raise ValueError(
                f"the Translator's parameters ({head.cond_dim}+{head.code_dim}) do not fit the "
                f"Imitator's input ({imitator.cond_dim}+{imitator.code_dim})"
            )
        self.head = head
        self.imitator = imitator.requires_grad_(False)
        self.register_buffer("prior_mean", prior_mean.float().clone())
        self.register_buffer("prior_std", prior_std.float().clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        embedding, code = self.head(features)
        return self.imitator(code, embedding)
