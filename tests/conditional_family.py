"""A conditional family that exists only in the tests, added the way docs/architecture.md
("Adding a conditional family") says: this file and its config, nothing else edited.

It subclasses families/conditioning.ConditionalFamily and declares its arrays in its config
only: the condition `tiny/embedding` and a further input `tiny/pyramid` (mirrored with the
images), both written by tests/tiny_family.write_features. Its generator maps (noise,
condition) to an image and learns a null condition for the rows that condition dropout drops.
Importing this module registers it as `echo`; conftest.py does so for the session.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig
from torch import nn

from face_generation.families.conditioning import ConditionalFamily
from face_generation.families.latents import gaussian_latents
from face_generation.families.optimization import adam, optimizer_step, place
from face_generation.runtime.family import Batch, StepContext
from face_generation.runtime.registry import register_family
from tests.tiny_family import EMBEDDING_DIM

TINY = {"name": "tiny"}  # the settings of the network that "wrote" the arrays

MODEL_CONFIG = {
    "name": "echo",
    "condition": {"network": TINY, "array": "embedding"},
    "inputs": {"pyramid": {"network": TINY, "array": "pyramid", "flip": "map"}},
    "cond_dim": EMBEDDING_DIM,
    "cond_drop": 0.25,
    "latent_dim": 3,
    "optimizer": {"lr": 0.01, "betas": [0.5, 0.9]},
    "sampling": {"scale": 1.0},
}


class EchoGenerator(nn.Module):
    """(latent, condition) → an image, through one linear layer and tanh; `null` is the
    learned condition of dropped rows and of sampling without one."""

    def __init__(self, resolution: int, latent_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.resolution, self.latent_dim, self.cond_dim = resolution, latent_dim, cond_dim
        self.null = nn.Parameter(torch.zeros(cond_dim))
        self.to_pixels = nn.Linear(latent_dim + cond_dim, 3 * resolution * resolution)

    def forward(
        self, latents: torch.Tensor, cond: torch.Tensor | None, null: torch.Tensor | None = None
    ) -> torch.Tensor:
        rows = self.null.expand(len(latents), -1) if cond is None else cond
        if null is not None:
            rows = torch.where(null[:, None], self.null.expand_as(rows), rows)
        pixels = self.to_pixels(torch.cat([latents, rows], dim=1))
        return torch.tanh(pixels).view(-1, 3, self.resolution, self.resolution)


class EchoFamily(ConditionalFamily):
    name: ClassVar[str] = "echo"
    generator_key: ClassVar[str] = "generator"

    def __init__(self, model_cfg: DictConfig, resolution: int, context: StepContext) -> None:
        super().__init__(model_cfg, resolution, context)
        self.generator = place(self.build_generator(model_cfg, resolution), context)
        self.networks = {"generator": self.generator}
        self.optimizers = {
            "generator": adam(self.generator.parameters(), model_cfg.optimizer, context.device)
        }

    def train_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        cond, null = self.condition_rows(batch, self.generator.cond_dim)
        assert cond is not None
        latents = torch.randn(len(cond), self.generator.latent_dim).to(cond.device)
        pyramid = batch.features["tiny/pyramid"].float()  # the further input, mirrored as a map
        with self.context.autocast():  # train.precision
            fake = self.generator(latents, cond, null)
            pooled = F.adaptive_avg_pool2d(fake[:, : pyramid.shape[1]], pyramid.shape[2:])
            loss = F.mse_loss(fake, batch.images) + 0.1 * F.mse_loss(pooled, pyramid)
        norm = optimizer_step(self.optimizers["generator"], loss, self.generator, None)
        return {"loss": loss.detach(), "grad_norm": norm.detach()}

    @classmethod
    def build_generator(cls, model_cfg: DictConfig, resolution: int) -> EchoGenerator:
        return EchoGenerator(resolution, int(model_cfg.latent_dim), int(model_cfg.cond_dim))

    @classmethod
    @torch.no_grad()
    def sample(
        cls,
        network: nn.Module,
        n: int,
        *,
        cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        scale: float = 1.0,
    ) -> torch.Tensor:
        """n images for the conditions `cond` (the learned null one without); `scale` scales
        the noise."""
        assert isinstance(network, EchoGenerator)
        device = next(network.parameters()).device
        latents = gaussian_latents(n, network.latent_dim, device, generator, scale)
        return network(latents, None if cond is None else cond.float().to(device))


register_family(EchoFamily)
ConfigStore.instance().store(group="model", name="echo", node=MODEL_CONFIG)
