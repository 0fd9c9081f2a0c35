"""DCGAN family (Radford et al. 2016; networks in models/dcgan.py): alternate one
discriminator and one generator step with the non-saturating GAN loss.

Losses are computed in float32 whatever the autocast, in the numerically stable softplus form.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from face_generation.families.latents import gaussian_latents
from face_generation.families.optimization import adam, optimizer_step, place
from face_generation.models.dcgan import Discriminator, Generator
from face_generation.runtime.family import Batch, Family, StepContext


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(z)))."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss -log D(G(z)) (Goodfellow et al. 2014, §3)."""
    return F.softplus(-fake_logits.float()).mean()


class DCGANFamily(Family):
    name: ClassVar[str] = "dcgan"
    generator_key: ClassVar[str] = "generator"

    def __init__(self, model_cfg: DictConfig, resolution: int, context: StepContext) -> None:
        super().__init__(model_cfg, resolution, context)
        self.generator = self.build_generator(model_cfg, resolution)
        self.discriminator = Discriminator(
            resolution=resolution,
            base_channels=int(model_cfg.discriminator_channels),
            max_channels=int(model_cfg.max_channels),
            leaky_slope=float(model_cfg.leaky_slope),
            init_std=float(model_cfg.init_std),
        )
        self.networks = {
            "generator": place(self.generator, context),
            "discriminator": place(self.discriminator, context),
        }
        self.optimizers = {
            name: adam(network.parameters(), model_cfg.optimizer, context.device)
            for name, network in self.networks.items()
        }

    def train_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        real = batch.images
        latents = torch.randn(len(real), self.generator.latent_dim, device=real.device)
        clip = self.context.grad_clip
        with self.context.autocast():
            fake = self.generator(latents)
            real_logits = self.discriminator(real)
            fake_logits = self.discriminator(fake.detach())
        d_loss = discriminator_loss(real_logits, fake_logits)
        d_norm = optimizer_step(self.optimizers["discriminator"], d_loss, self.discriminator, clip)

        self.discriminator.requires_grad_(False)  # the generator step must not train D
        with self.context.autocast():
            generator_logits = self.discriminator(fake)
        g_loss = generator_loss(generator_logits)
        g_norm = optimizer_step(self.optimizers["generator"], g_loss, self.generator, clip)
        self.discriminator.requires_grad_(True)
        return {
            "d_loss": d_loss.detach(),
            "g_loss": g_loss.detach(),
            "real_score": torch.sigmoid(real_logits.detach().float()).mean(),
            "fake_score": torch.sigmoid(fake_logits.detach().float()).mean(),
            "d_grad_norm": d_norm.detach(),
            "g_grad_norm": g_norm.detach(),
        }

    @classmethod
    def build_generator(cls, model_cfg: DictConfig, resolution: int) -> Generator:
        return Generator(
            resolution=resolution,
            latent_dim=int(model_cfg.latent_dim),
            base_channels=int(model_cfg.generator_channels),
            max_channels=int(model_cfg.max_channels),
            init_std=float(model_cfg.init_std),
        )

    @classmethod
    @torch.no_grad()
    def sample(
        cls,
        network: nn.Module,
        n: int,
        *,
        cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Generate from n latents from N(0, temperature²·I) (families/latents.py); temperature
        < 1 is the truncation trick."""
        if cond is not None:
            raise ValueError("DCGAN is unconditional: sample without a condition")
        assert isinstance(network, Generator)
        device = next(network.parameters()).device
        return network(gaussian_latents(n, network.latent_dim, device, generator, temperature))


FAMILY = DCGANFamily
