"""Networks of the feature-guided progressive generator (families/progressive.py trains them).

The generator starts from a learned 4×4 map and doubles it once per block up to the
resolution; every level has its own to-RGB head, so it can draw the same face at 4, 8, 16, …
pixels. Each convolution is modulated (adaptive instance normalisation: a per-channel scale
and shift) by a style vector computed from the condition row and noise. While a new level
grows in, its output is blended with the upsampled output of the level below (`fade`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def level_count(resolution: int) -> int:
    """Levels from 4×4 up to resolution×resolution (4, 8, …): a power of two from 4 up."""
    levels = math.log2(resolution) - 1
    if resolution < 4 or not levels.is_integer():
        raise ValueError(
            f"the progressive generator doubles from 4×4: data.resolution must be a power of two "
            f"of at least 4, got {resolution}"
        )
    return int(levels)


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour upsampling to size×size (what the fade-in blends against)."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="nearest")


def fade(lower: torch.Tensor, new: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 − α)·(the lower level's output, upsampled) + α·(the new level's output)."""
    return torch.lerp(upsample(lower, new.shape[-1]), new, alpha)


class ModulatedConv(nn.Module):
    """3×3 convolution → instance normalisation → per-channel scale and shift from the style
    (AdaIN) → LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, slope: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.affine = nn.Linear(style_dim, 2 * out_channels)
        self.slope = slope

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine(style)[:, :, None, None].chunk(2, dim=1)
        x = F.instance_norm(self.conv(x))
        return F.leaky_relu(x * (1 + scale) + shift, self.slope)


class Block(nn.Module):
    """One level: (upsample ×2 unless first) → two modulated convolutions."""

    def __init__(
        self, in_channels: int, out_channels: int, style_dim: int, slope: float, first: bool
    ) -> None:
        super().__init__()
        self.first = first
        self.convs = nn.ModuleList(
            [
                ModulatedConv(in_channels, out_channels, style_dim, slope),
                ModulatedConv(out_channels, out_channels, style_dim, slope),
            ]
        )

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if not self.first:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        for conv in self.convs:
            x = conv(x, style)
        return x


class ProgressiveGenerator(nn.Module):
    """(condition row, noise) → images, at any level up to the resolution.

    `progress` (a buffer, so checkpoints and the EMA copy carry it) is how far training has
    grown the network: p = 0 is the 4×4 level alone; p = k − 1 + α is level k faded in by α.
    Sampling draws at that point of the schedule and upsamples to the full resolution.
    """

    progress: torch.Tensor

    def __init__(
        self,
        resolution: int,
        cond_dim: int | None,
        noise_dim: int,
        style_dim: int,
        channels: Sequence[int],
        slope: float,
    ) -> None:
        super().__init__()
        self.resolution, self.cond_dim, self.noise_dim = resolution, cond_dim, noise_dim
        self.levels = level_count(resolution)
        if len(channels) < self.levels:
            raise ValueError(
                f"model.channels {list(channels)} needs one width per level 4…{resolution} "
                f"({self.levels} of them)"
            )
        widths = list(channels[: self.levels])
        self.constant = nn.Parameter(torch.randn(1, widths[0], 4, 4))
        self.condition = nn.Linear(cond_dim, style_dim) if cond_dim else None
        self.null_condition = nn.Parameter(torch.zeros(style_dim))  # rows without a condition
        self.mapping = nn.Sequential(
            nn.Linear(style_dim + noise_dim, style_dim),
            nn.LeakyReLU(slope),
            nn.Linear(style_dim, style_dim),
        )
        self.blocks = nn.ModuleList(
            Block(widths[max(k - 1, 0)], widths[k], style_dim, slope, first=k == 0)
            for k in range(self.levels)
        )
        self.to_rgb = nn.ModuleList(nn.Conv2d(width, 3, 1) for width in widths)
        self.register_buffer("progress", torch.zeros(()))

    def style(
        self, noise: torch.Tensor, cond: torch.Tensor | None, null: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The style vector of each row: the condition (layer-normalised, projected; the null
        condition where `null` or without one) joined with the noise, through the mapping."""
        embedded = self.null_condition.expand(len(noise), -1)
        if cond is not None and self.condition is not None:
            projected = self.condition(F.layer_norm(cond.float(), cond.shape[1:]))
            embedded = (
                projected if null is None else torch.where(null[:, None], embedded, projected)
            )
        return self.mapping(torch.cat([embedded, noise], dim=1))

    def outputs(self, style: torch.Tensor, stage: int) -> list[torch.Tensor]:
        """The RGB output of every level 0 … stage (4×4, 8×8, …), each from its own head."""
        x, images = self.constant.expand(len(style), -1, -1, -1), []
        for level in range(stage + 1):
            x = self.blocks[level](x, style)
            images.append(torch.tanh(self.to_rgb[level](x)))
        return images

    def forward(
        self,
        noise: torch.Tensor,
        cond: torch.Tensor | None = None,
        null: torch.Tensor | None = None,
        stage: int | None = None,
        alpha: float = 1.0,
    ) -> torch.Tensor:
        """Images at level `stage` (default: where `progress` is), faded in by `alpha`."""
        if stage is None:
            stage, alpha = stage_of(float(self.progress))
        images = self.outputs(self.style(noise, cond, null), stage)
        return images[0] if stage == 0 else fade(images[-2], images[-1], alpha)


def stage_of(progress: float) -> tuple[int, float]:
    """(stage, α) of a progress p: p = 0 is stage 0; p = k − 1 + α (0 < α ≤ 1) is stage k."""
    stage = math.ceil(progress)
    return stage, 1.0 if stage == 0 else progress - stage + 1


class Discriminator(nn.Module):
    """Real or generated, at the full resolution: stride-2 convolutions down to 4×4, then a
    linear score (the optional realism term)."""

    def __init__(self, resolution: int, channels: int, slope: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1), nn.LeakyReLU(slope)]
        for _ in range(level_count(resolution) - 1):
            layers += [nn.Conv2d(channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(slope)]
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(channels * 16, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(images).flatten(1)).squeeze(1)
