"""The identity-conditioned GAN's networks: a UNet generator and a projection discriminator.

Generator: (code, embedding) → image. The low-dimensional code (what the embedding does not
hold: pose, light, background) becomes a coarse map, upsampled to the image side: the "noise
map" the UNet's encoder reads. The embedding enters at the bottleneck through a learned
projection (the style vector w, added to the 4×4 map as a learned spatial map) and modulates
every decoder block by FiLM (a per-channel scale and shift from w). Fresh noise is injected
at every decoder scale (StyleGAN's stochastic detail, a learned strength per channel), and
self-attention runs at the configured side. A learned null embedding stands in for dropped
rows and for sampling without a condition.

Discriminator: D(x, e) = ψ(φ(x)) + ⟨W·e, φ(x)⟩ (Miyato & Koyama 2018), spectral norm optional.
Networks only: the losses and the training step live in families/cond_gan.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from face_generation.models.diffusion import SelfAttention
from face_generation.models.stages import stage_channels


def film(features: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
    """FiLM: each channel scaled by (1 + γ) and shifted by β, γ and β the halves of N×2C."""
    gamma, beta = modulation[:, :, None, None].chunk(2, dim=1)
    return features * (1 + gamma) + beta


class DecoderBlock(nn.Module):
    """Upsample, concatenate the encoder's skip, conv, FiLM from w, injected noise, activate;
    then self-attention when this block's side has it."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        style_dim: int,
        leaky_slope: float,
        attention: SelfAttention | None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1)
        self.modulation = nn.Linear(style_dim, 2 * out_channels)
        nn.init.zeros_(self.modulation.weight)  # starts as the identity modulation
        nn.init.zeros_(self.modulation.bias)
        self.noise_strength = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.leaky_slope = leaky_slope
        self.attention = attention

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = film(self.conv(torch.cat([x, skip], dim=1)), self.modulation(style))
        if noise is not None:
            x = x + self.noise_strength * noise
        x = F.leaky_relu(x, self.leaky_slope)
        return self.attention(x) if self.attention is not None else x


class UNetGenerator(nn.Module):
    """code (N×code_dim), embedding (N×cond_dim) → N×3×R×R in [-1, 1]."""

    def __init__(
        self,
        resolution: int,
        code_dim: int,
        code_side: int,
        cond_dim: int,
        style_dim: int,
        base_channels: int,
        max_channels: int,
        attention_side: int | None,
        head_channels: int,
        groups: int,
        leaky_slope: float,
    ) -> None:
        super().__init__()
        if code_side > resolution:
            raise ValueError(f"model.code_side={code_side} exceeds data.resolution={resolution}")
        self.resolution, self.code_dim, self.cond_dim = resolution, code_dim, cond_dim
        self.code_side, self.leaky_slope = code_side, leaky_slope
        widths = stage_channels(resolution, base_channels, max_channels)  # R/2, ..., 4
        self.from_code = nn.Linear(code_dim, base_channels * code_side * code_side)
        self.stem = nn.Conv2d(base_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)
            for c_in, c_out in zip([base_channels, *widths[:-1]], widths, strict=True)
        )
        bottleneck = widths[-1]
        self.null = nn.Parameter(torch.zeros(cond_dim))
        self.style = nn.Sequential(
            nn.Linear(cond_dim, style_dim),
            nn.LeakyReLU(leaky_slope),
            nn.Linear(style_dim, style_dim),
            nn.LeakyReLU(leaky_slope),
        )
        self.to_bottleneck = nn.Linear(style_dim, bottleneck * 4 * 4)
        self.middle = nn.Conv2d(bottleneck, bottleneck, 3, padding=1)
        # decoder: from 4×4 up to R, each block reading the encoder's map of its side
        skips = [base_channels, *widths[:-1]][::-1]  # R/2 ... R sides, coarse first
        outs = [*widths[:-1][::-1], base_channels]
        sides = [resolution // 2**i for i in range(len(widths) - 1, -1, -1)]
        self.up = nn.ModuleList()
        c_in = bottleneck
        for skip, c_out, side in zip(skips, outs, sides, strict=True):
            attention = (
                SelfAttention(c_out, head_channels, groups) if side == attention_side else None
            )
            self.up.append(DecoderBlock(c_in, skip, c_out, style_dim, leaky_slope, attention))
            c_in = c_out
        self.noise_sides = sides
        self.to_rgb = nn.Conv2d(base_channels, 3, 1)

    def noise_shapes(self, n: int) -> list[tuple[int, int, int, int]]:
        """The shape of the noise each decoder block takes (one channel, its side)."""
        return [(n, 1, side, side) for side in self.noise_sides]

    def condition(
        self, cond: torch.Tensor | None, null: torch.Tensor | None, n: int
    ) -> torch.Tensor:
        """The rows the network reads: the null embedding where there is no condition or the
        row is dropped."""
        rows = self.null.expand(n, -1) if cond is None else cond.to(self.null.dtype)
        if null is not None:
            rows = torch.where(null[:, None], self.null.expand_as(rows), rows)
        return rows

    def forward(
        self,
        code: torch.Tensor,
        cond: torch.Tensor | None,
        null: torch.Tensor | None = None,
        noise: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`noise`: one map per decoder block (`noise_shapes`); None injects none."""
        n = len(code)
        style = self.style(self.condition(cond, null, n))
        x = self.from_code(code).view(n, -1, self.code_side, self.code_side)
        x = F.interpolate(x, size=self.resolution, mode="bilinear", align_corners=False)
        x = F.leaky_relu(self.stem(x), self.leaky_slope)
        skips = [x]
        for conv in self.down:
            x = F.leaky_relu(conv(x), self.leaky_slope)
            skips.append(x)
        x = x + self.to_bottleneck(style).view_as(x)  # the embedding at the bottleneck
        x = F.leaky_relu(self.middle(x), self.leaky_slope)
        for index, block in enumerate(self.up):
            x = block(x, skips[-2 - index], style, None if noise is None else noise[index])
        return torch.tanh(self.to_rgb(x))


class ProjectionDiscriminator(nn.Module):
    """D(x, e) = ψ(φ(x)) + ⟨W·e, φ(x)⟩: φ strided convs to 4×4 summed over positions, ψ linear;
    the null embedding for dropped rows, as in the generator."""

    def __init__(
        self,
        resolution: int,
        base_channels: int,
        max_channels: int,
        cond_dim: int,
        leaky_slope: float,
        spectral_norm: bool,
    ) -> None:
        super().__init__()
        norm: Callable[[nn.Module], nn.Module] = (
            nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        )
        widths = stage_channels(resolution, base_channels, max_channels)
        self.from_rgb = norm(nn.Conv2d(3, base_channels, 3, padding=1))
        self.down = nn.ModuleList(
            norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
            for c_in, c_out in zip([base_channels, *widths[:-1]], widths, strict=True)
        )
        self.psi = norm(nn.Linear(widths[-1], 1))
        self.embed = norm(nn.Linear(cond_dim, widths[-1], bias=False))  # W
        self.null = nn.Parameter(torch.zeros(cond_dim))
        self.leaky_slope = leaky_slope

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """φ(x): N×C."""
        x = F.leaky_relu(self.from_rgb(images), self.leaky_slope)
        for conv in self.down:
            x = F.leaky_relu(conv(x), self.leaky_slope)
        return x.sum(dim=(2, 3))

    def forward(
        self, images: torch.Tensor, cond: torch.Tensor | None, null: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One logit per image, N."""
        phi = self.features(images)
        rows = self.null.expand(len(images), -1) if cond is None else cond.to(phi.dtype)
        if null is not None:
            rows = torch.where(null[:, None], self.null.expand_as(rows), rows)
        return self.psi(phi).squeeze(1) + (self.embed(rows) * phi).sum(dim=1)
