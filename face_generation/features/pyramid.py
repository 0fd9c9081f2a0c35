"""Backbone feature pyramids at fixed grids, and their optional PCA projection per level.

A backbone's `Features.pyramid` holds its maps finest first (EfficientNet-Lite0: the last map
of each stride; DINOv2: the patch tokens on their grid). Level g of the stored pyramid is the
deepest map that is at least g×g, average-pooled to g×g: at 128 px EfficientNet-Lite0's
strides 8, 16 and 32 are exactly 16×16, 8×8 and 4×4.

`features.pyramid_dims` keeps fewer channels per level: a PCA over the channel vectors of
every location of the train split's first `pca_fit_images` faces (never val or test),
stored beside the level's arrays as pca.npz (mean, components).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F


def level_sources(map_sizes: Sequence[int], grids: Sequence[int]) -> list[int]:
    """For each grid, the index of the deepest map at least that large (maps finest first)."""
    sources = []
    for grid in grids:
        large_enough = [index for index, size in enumerate(map_sizes) if size >= grid]
        if not large_enough:
            raise ValueError(
                f"features.grids asks for {grid}x{grid}, but the backbone's finest map is "
                f"{max(map_sizes)}x{max(map_sizes)}: raise backbone.image_size or drop that grid"
            )
        sources.append(large_enough[-1])
    return sources


def pool_levels(
    pyramid: Sequence[torch.Tensor], grids: Sequence[int], sources: Sequence[int]
) -> list[torch.Tensor]:
    """Each grid's source map average-pooled to grid×grid: N×C×g×g per grid."""
    return [
        F.adaptive_avg_pool2d(pyramid[source], grid)
        for grid, source in zip(grids, sources, strict=True)
    ]


@dataclass
class ChannelPCA:
    """Projection of C-channel vectors onto their first k principal components."""

    mean: torch.Tensor  # C
    components: torch.Tensor  # C×k, columns by decreasing variance

    def to(self, device: torch.device | str) -> ChannelPCA:
        return ChannelPCA(self.mean.to(device), self.components.to(device))

    def project(self, level: torch.Tensor) -> torch.Tensor:
        """N×C×H×W -> N×k×H×W."""
        centred = level.float() - self.mean.view(1, -1, 1, 1)
        return torch.einsum("nchw,ck->nkhw", centred, self.components)

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean.cpu().numpy(), components=self.components.cpu().numpy())

    @classmethod
    def load(cls, path: Path) -> ChannelPCA:
        with np.load(path) as stored:
            return cls(torch.from_numpy(stored["mean"]), torch.from_numpy(stored["components"]))


class ChannelCovariance:
    """Running sums of channel vectors (every location of every map) for a PCA, in float64."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.total = torch.zeros(channels, dtype=torch.float64)
        self.outer = torch.zeros(channels, channels, dtype=torch.float64)

    def add(self, level: torch.Tensor) -> None:
        vectors = level.double().permute(0, 2, 3, 1).reshape(-1, level.shape[1])
        self.count += len(vectors)
        self.total += vectors.sum(0)
        self.outer += vectors.T @ vectors

    def pca(self, dims: int) -> ChannelPCA:
        if not 0 < dims <= len(self.total):
            raise ValueError(
                f"features.pyramid_dims asks for {dims} of {len(self.total)} channels: choose 1..{len(self.total)}"
            )
        mean = self.total / self.count
        covariance = self.outer / self.count - torch.outer(mean, mean)
        _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
        components = vectors[:, -dims:].flip(1)
        return ChannelPCA(mean.float(), components.float().contiguous())
