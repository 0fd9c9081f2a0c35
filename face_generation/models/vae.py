"""Convolutional variational autoencoder (Kingma & Welling 2014) with a β-weighted KL.

The encoder halves the image side with strided convolutions down to 4×4 and maps it to the
mean and log-variance of a diagonal Gaussian over the latent; the decoder mirrors it with
transposed convolutions and ends in tanh, so images live in [-1, 1] like the training data.
The number of stages follows the resolution (32 → 3 stages, 64 → 4, 128 → 5).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from face_generation.models.stages import stage_channels


class Encoder(nn.Module):
    def __init__(
        self,
        resolution: int,
        latent_dim: int,
        base_channels: int,
        max_channels: int,
        leaky_slope: float,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        channels = stage_channels(resolution, base_channels, max_channels)
        layers: list[nn.Module] = []
        previous = image_channels
        for width in channels:
            layers += [
                nn.Conv2d(previous, width, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.LeakyReLU(leaky_slope, inplace=True),
            ]
            previous = width
        self.features = nn.Sequential(*layers)
        self.to_moments = nn.Linear(previous * 4 * 4, 2 * latent_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        moments = self.to_moments(self.features(images).flatten(1))
        mean, log_variance = moments.chunk(2, dim=1)
        return mean, log_variance


class Decoder(nn.Module):
    def __init__(
        self,
        resolution: int,
        latent_dim: int,
        base_channels: int,
        max_channels: int,
        leaky_slope: float,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        channels = stage_channels(resolution, base_channels, max_channels)[::-1]
        self.top_channels = channels[0]
        self.from_latent = nn.Linear(latent_dim, channels[0] * 4 * 4)
        layers: list[nn.Module] = [
            nn.BatchNorm2d(channels[0]),
            nn.LeakyReLU(leaky_slope, inplace=True),
        ]
        for width, next_width in itertools.pairwise(channels):
            layers += [
                nn.ConvTranspose2d(width, next_width, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(next_width),
                nn.LeakyReLU(leaky_slope, inplace=True),
            ]
        layers += [
            nn.ConvTranspose2d(channels[-1], image_channels, 4, stride=2, padding=1),
            nn.Tanh(),
        ]
        self.upsample = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.from_latent(latents).view(-1, self.top_channels, 4, 4))


class VAE(nn.Module):
    """Encoder + decoder; `forward` returns (reconstruction, mean, log_variance)."""

    def __init__(
        self,
        resolution: int,
        latent_dim: int,
        base_channels: int,
        max_channels: int,
        leaky_slope: float,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.latent_dim = latent_dim
        self.encoder = Encoder(resolution, latent_dim, base_channels, max_channels, leaky_slope)
        self.decoder = Decoder(resolution, latent_dim, base_channels, max_channels, leaky_slope)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)

    @staticmethod
    def reparameterize(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
        """z = μ + σ·ε: a sample of q(z|x) that gradients flow through."""
        return mean + torch.randn_like(mean) * torch.exp(0.5 * log_variance)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_variance = self.encode(images)
        return self.decode(self.reparameterize(mean, log_variance)), mean, log_variance

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """The decoded posterior mean: the model's deterministic reconstruction of `images`."""
        mean, _ = self.encode(images)
        return self.decode(mean)
