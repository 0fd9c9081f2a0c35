"""Variational autoencoder family: one network (models/vae.py), one loss (reconstruction + β·KL).

Losses are computed in float32 whatever the autocast; both terms are per pixel value (a sum
over the image divided by its number of values), so their size and the gradient norms do not
change with the resolution.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from face_generation.families.latents import gaussian_latents
from face_generation.families.optimization import adam, optimizer_step, place
from face_generation.models.vae import VAE
from face_generation.runtime.family import RECONSTRUCT, SAMPLE, Batch, Family, StepContext


def vae_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    mean: torch.Tensor,
    log_variance: torch.Tensor,
    beta: float,
) -> dict[str, torch.Tensor]:
    """β-VAE objective (Higgins et al. 2017): squared error + β·KL(q(z|x) || N(0, I)).

    The squared error is the Gaussian negative log-likelihood up to constants.
    """
    mean, log_variance = mean.float(), log_variance.float()
    reconstruction_term = F.mse_loss(reconstruction.float(), target.float())
    kl_per_image = -0.5 * (1 + log_variance - mean.square() - log_variance.exp()).sum(dim=1)
    kl_term = kl_per_image.mean() / target[0].numel()
    return {
        "loss": reconstruction_term + beta * kl_term,
        "reconstruction": reconstruction_term,
        "kl": kl_term,
    }


class VAEFamily(Family):
    name: ClassVar[str] = "vae"
    generator_key: ClassVar[str] = "vae"
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLE, RECONSTRUCT})

    def __init__(self, model_cfg: DictConfig, resolution: int, context: StepContext) -> None:
        super().__init__(model_cfg, resolution, context)
        self.beta = float(model_cfg.beta)
        self.vae = place(self.build_generator(model_cfg, resolution), context)
        self.networks = {"vae": self.vae}
        self.optimizers = {"vae": adam(self.vae.parameters(), model_cfg.optimizer, context.device)}

    def train_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        with self.context.autocast():
            reconstruction, mean, log_variance = self.vae(batch.images)
        terms = vae_loss(reconstruction, batch.images, mean, log_variance, self.beta)
        terms["grad_norm"] = optimizer_step(
            self.optimizers["vae"], terms["loss"], self.vae, self.context.grad_clip
        )
        return {name: value.detach() for name, value in terms.items()}

    @classmethod
    def build_generator(cls, model_cfg: DictConfig, resolution: int) -> VAE:
        return VAE(
            resolution=resolution,
            latent_dim=int(model_cfg.latent_dim),
            base_channels=int(model_cfg.base_channels),
            max_channels=int(model_cfg.max_channels),
            leaky_slope=float(model_cfg.leaky_slope),
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
        """Decode n latents from N(0, temperature²·I) (families/latents.py); temperature < 1
        trades variety for typical faces."""
        if cond is not None:
            raise ValueError("the VAE is unconditional: sample without a condition")
        assert isinstance(network, VAE)
        device = next(network.parameters()).device
        return network.decode(
            gaussian_latents(n, network.latent_dim, device, generator, temperature)
        )

    @classmethod
    @torch.no_grad()
    def reconstruct(cls, network: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The decoded posterior mean: the VAE's deterministic reconstruction."""
        assert isinstance(network, VAE)
        return network.reconstruct(images)


FAMILY = VAEFamily
