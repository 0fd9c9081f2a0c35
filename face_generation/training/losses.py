"""Losses: small functions of network outputs, computed in float32 whatever the autocast.

Per-image quantities are averaged over the batch; the VAE terms are per pixel value (a sum
over the image divided by its number of values), so their size and the gradient norms do
not change with the resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error per pixel value: the Gaussian negative log-likelihood up to constants."""
    return F.mse_loss(reconstruction.float(), target.float())


def kl_divergence(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_variance)) || N(0, I)) summed over latents, batch-averaged."""
    mean, log_variance = mean.float(), log_variance.float()
    per_image = -0.5 * (1 + log_variance - mean.square() - log_variance.exp()).sum(dim=1)
    return per_image.mean()


def vae_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    mean: torch.Tensor,
    log_variance: torch.Tensor,
    beta: float,
) -> dict[str, torch.Tensor]:
    """β-VAE objective (Higgins et al. 2017): reconstruction + β·KL, both per pixel value."""
    values_per_image = target[0].numel()
    reconstruction_term = reconstruction_loss(reconstruction, target)
    kl_term = kl_divergence(mean, log_variance) / values_per_image
    return {
        "loss": reconstruction_term + beta * kl_term,
        "reconstruction": reconstruction_term,
        "kl": kl_term,
    }


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(z))), in the numerically stable softplus form."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss -log D(G(z)) (Goodfellow et al. 2014, §3)."""
    return F.softplus(-fake_logits.float()).mean()
