"""DCGAN (Radford, Metz & Chintala 2016): all-convolutional generator and discriminator.

Generator: a latent vector becomes a 4×4 map by a transposed convolution, then each stage
doubles the side (transposed conv 4×4 stride 2, BatchNorm, ReLU) and the last ends in tanh.
Discriminator: the mirror image (conv 4×4 stride 2, BatchNorm except on the input stage,
LeakyReLU) down to 4×4, then one 4×4 convolution to a single logit. Weights start from
N(0, 0.02) as in the paper. Stage count follows the resolution (32 → 3, 64 → 4, 128 → 5).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from face_generation.models.stages import stage_channels


def init_weights(module: nn.Module, std: float) -> None:
    """The paper's initialisation: conv weights N(0, std), BatchNorm scales N(1, std)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, std)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    def __init__(
        self,
        resolution: int,
        latent_dim: int,
        base_channels: int,
        max_channels: int,
        init_std: float,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.latent_dim = latent_dim
        channels = stage_channels(resolution, base_channels, max_channels)[::-1]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, channels[0], 4, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        ]
        for width, next_width in itertools.pairwise(channels):
            layers += [
                nn.ConvTranspose2d(width, next_width, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(next_width),
                nn.ReLU(inplace=True),
            ]
        layers += [
            nn.ConvTranspose2d(channels[-1], image_channels, 4, stride=2, padding=1, bias=False),
            nn.Tanh(),
        ]
        self.net = nn.Sequential(*layers)
        self.apply(lambda module: init_weights(module, init_std))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(
        self,
        resolution: int,
        base_channels: int,
        max_channels: int,
        leaky_slope: float,
        init_std: float,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        channels = stage_channels(resolution, base_channels, max_channels)
        layers: list[nn.Module] = []
        previous = image_channels
        for index, width in enumerate(channels):
            layers.append(nn.Conv2d(previous, width, 4, stride=2, padding=1, bias=False))
            if index > 0:  # no BatchNorm on the input stage, as in the paper
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(leaky_slope, inplace=True))
            previous = width
        layers.append(nn.Conv2d(previous, 1, 4, stride=1, padding=0, bias=False))
        self.net = nn.Sequential(*layers)
        self.apply(lambda module: init_weights(module, init_std))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """One real-vs-fake logit per image."""
        return self.net(images).flatten()
