"""Improved precision and recall (Kynkäänniemi et al. 2019) in a feature space.

Each set's manifold is the union of balls around its samples, each ball's radius the distance
to the sample's k-th nearest neighbour in the same set (the sample itself excluded).
  precision: share of generated samples inside the real manifold (are fakes realistic?)
  recall:    share of real samples inside the generated manifold (is the variety covered?)
Distances are computed in float32 blocks of rows on the given device, as the reference
implementation (NVlabs' stylegan2-ada) does; only comparisons depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from face_generation.runtime.device import pick_device


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float
    k: int


def as_float32(features: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    tensor = (
        features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    )
    return tensor.detach().to(device=device, dtype=torch.float32)


def kth_neighbour_radii(features: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row."""
    if len(features) <= k:
        raise ValueError(
            f"k={k} nearest neighbours need more than {k} samples, got {len(features)}"
        )
    radii = [
        # k + 1: the row itself is at distance 0, the nearest of all.
        torch.cdist(features[start : start + block], features).kthvalue(k + 1, dim=1).values
        for start in range(0, len(features), block)
    ]
    return torch.cat(radii)


def share_inside(
    samples: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int
) -> float:
    """Share of `samples` within radii[j] of some centres[j]."""
    inside = [
        (torch.cdist(samples[start : start + block], centres) <= radii[None, :]).any(dim=1)
        for start in range(0, len(samples), block)
    ]
    return float(torch.cat(inside).float().mean())


@torch.inference_mode()
def precision_recall(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    k: int = 3,
    block: int = 1024,
    device: str | torch.device | None = "auto",
) -> PrecisionRecall:
    """Precision and recall of N x D `fake` features against M x D `real` features."""
    target = pick_device(device)
    real_features, fake_features = as_float32(real, target), as_float32(fake, target)
    if real_features.ndim != 2 or real_features.shape[1:] != fake_features.shape[1:]:
        raise ValueError(f"need N x D and M x D features, got {real.shape} and {fake.shape}")
    real_radii = kth_neighbour_radii(real_features, k, block)
    fake_radii = kth_neighbour_radii(fake_features, k, block)
    return PrecisionRecall(
        precision=share_inside(fake_features, real_features, real_radii, block),
        recall=share_inside(real_features, fake_features, fake_radii, block),
        k=k,
    )
