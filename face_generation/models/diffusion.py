"""The denoising UNet (Ho et al. 2020, with Dhariwal & Nichol 2021's self-attention layout).

Residual blocks with group norm and dropout; a sinusoidal timestep embedding, plus an optional
condition embedding, added into every block; self-attention at the configured feature-map
sizes; one skip connection per block from the down path to the up path. The side of the image
halves once per entry of `channel_mults` after the first, so the network follows the
resolution it is built for. Networks only: the noise schedule, the loss and the samplers live
in families/diffusion.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

LayerT = TypeVar("LayerT", nn.Conv2d, nn.Linear)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style sinusoids of the (integer or fractional) timesteps t: N → N×dim."""
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def zero_init(module: LayerT) -> LayerT:
    """A residual branch that starts as the identity: training begins from a well-behaved net."""
    nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


class ResBlock(nn.Module):
    """GN → SiLU → conv, plus the embedding as a per-channel bias, GN → SiLU → dropout → conv,
    added to the (1×1-projected when the width changes) input."""

    def __init__(
        self, in_channels: int, out_channels: int, emb_dim: int, groups: int, dropout: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # In place on the convolutions' outputs, which their backward passes do not keep: the
        # same sums without two more activation-sized tensors per block
        h = self.conv1(F.silu(self.norm1(x)))
        h += self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h.add_(self.skip(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions of a feature map, as a residual."""

    def __init__(self, channels: int, head_channels: int, groups: int) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)  # a map narrower than a head: one head
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into heads of {head_channels}")
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = zero_init(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # N×HW×C
        # N×heads×HW×head_channels each, the last dimension contiguous: the fused kernels need it
        q, k, v = self.qkv(tokens).view(n, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, h * w, c)
        return x + self.out(attended).transpose(1, 2).reshape(n, c, h, w)


class Block(nn.Module):
    """One residual block, followed by self-attention at the sizes that have it."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        groups: int,
        dropout: float,
        head_channels: int | None,
    ) -> None:
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, emb_dim, groups, dropout)
        self.attention = (
            SelfAttention(out_channels, head_channels, groups) if head_channels else None
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attention(x) if self.attention is not None else x


class Upsample(nn.Module):
    """Nearest-neighbour doubling, then a 3×3 conv (no checkerboard, unlike transposed convs)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """x_t (N×3×R×R), timesteps t (N) and optionally a condition (N×cond_dim) → N×3×R×R.

    A conditional network (cond_dim set) projects the condition into the timestep embedding's
    space and adds it there; rows whose `null` flag is set, and every row when no condition is
    given, get a learned null embedding instead: the unconditional model that classifier-free
    guidance needs, trained in the same network.
    """

    def __init__(
        self,
        resolution: int,
        channels: int,
        channel_mults: Sequence[int],
        num_res_blocks: int | Sequence[int],
        attention_resolutions: Sequence[int],
        head_channels: int,
        groups: int,
        dropout: float,
        cond_dim: int | None = None,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        levels = len(channel_mults)
        if resolution % 2 ** (levels - 1):
            raise ValueError(
                f"data.resolution={resolution} cannot be halved {levels - 1} times "
                f"(model.channel_mults has {levels} levels): use a resolution divisible by "
                f"{2 ** (levels - 1)} or fewer levels"
            )
        counts = [num_res_blocks] * levels if isinstance(num_res_blocks, int) else num_res_blocks
        if len(counts) != levels:
            raise ValueError(
                f"model.num_res_blocks {list(counts)} needs one count per entry of "
                f"model.channel_mults {list(channel_mults)}"
            )
        self.resolution, self.channels, self.cond_dim = resolution, channels, cond_dim
        emb_dim = 4 * channels  # the DDPM reference's width for the timestep embedding
        self.time_mlp = nn.Sequential(
            nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.cond_proj = nn.Linear(cond_dim, emb_dim) if cond_dim else None
        self.null_cond = nn.Parameter(torch.zeros(emb_dim)) if cond_dim else None

        def block(in_channels: int, out_channels: int, level: int) -> Block:
            heads = head_channels if resolution >> level in attention_resolutions else None
            return Block(in_channels, out_channels, emb_dim, groups, dropout, heads)

        # Down: `counts[level]` blocks per level, each output kept for the up path, then halve.
        self.conv_in = nn.Conv2d(image_channels, channels, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, width = [], channels
        for level, mult in enumerate(channel_mults):
            blocks = nn.ModuleList()
            for _ in range(counts[level]):
                blocks.append(block(width, channels * mult, level))
                width = channels * mult
                skips.append(width)
            self.down.append(blocks)
            last = level == levels - 1
            self.downsample.append(
                nn.Identity() if last else nn.Conv2d(width, width, 3, stride=2, padding=1)
            )
        # The smallest map: residual, attention, residual.
        self.middle = nn.ModuleList([
            Block(width, width, emb_dim, groups, dropout, head_channels),
            Block(width, width, emb_dim, groups, dropout, None),
        ])  # fmt: skip
        # Up: the same blocks in reverse, each taking its down twin's output beside its input.
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(levels)):
            blocks = nn.ModuleList()
            for _ in range(counts[level]):
                blocks.append(block(width + skips.pop(), channels * channel_mults[level], level))
                width = channels * channel_mults[level]
            self.up.append(blocks)
            if level > 0:  # double the side, taking the width to the next level's
                self.upsample.append(Upsample(width, channels * channel_mults[level - 1]))
                width = channels * channel_mults[level - 1]
            else:
                self.upsample.append(nn.Identity())
        self.norm_out = nn.GroupNorm(groups, width)
        self.conv_out = zero_init(nn.Conv2d(width, image_channels, 3, padding=1))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        null: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.channels))
        if self.cond_proj is not None and self.null_cond is not None:
            if cond is None:
                emb = emb + self.null_cond
            else:
                projected = self.cond_proj(cond)
                if null is not None:  # classifier-free guidance: these rows are unconditional
                    projected = torch.where(null[:, None], self.null_cond, projected)
                emb = emb + projected
        elif cond is not None:
            raise ValueError("this network is unconditional: it takes no condition")
        emb = F.silu(emb)

        h = self.conv_in(x)
        skips = []
        for blocks, downsample in zip(self.down, self.downsample, strict=True):
            for layer in blocks.children():  # a level's blocks, in order
                h = layer(h, emb)
                skips.append(h)
            h = downsample(h)
        for layer in self.middle:
            h = layer(h, emb)
        for blocks, upsample in zip(self.up, self.upsample, strict=True):
            for layer in blocks.children():
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            h = upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
