"""Kernel distance (KID, Bińkowski et al. 2018): unbiased MMD² with a polynomial kernel.

    k(x, y) = (gamma x·y + coef0)^degree,   gamma = 1 / D by default (degree 3, coef0 1)
    MMD²_u = Σ_{i≠j} k(x_i, x_j) / m(m-1) + Σ_{i≠j} k(y_i, y_j) / m(m-1) - 2 Σ_{i,j} k(x_i, y_j) / m²

averaged over `subsets` random subsets of `subset_size` rows drawn without replacement from
each set, as torch-fidelity does (it reports the mean and the standard deviation over subsets,
np.std, ddof 0). Computed in float64; unbiased, so it can be slightly negative for equal sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from face_generation.evaluation.frechet import as_float64


@dataclass(frozen=True)
class KernelDistance:
    mean: float
    std: float
    subsets: int
    subset_size: int  # may be smaller than asked: at most the size of the smaller set


def polynomial_kernel(
    first: np.ndarray, second: np.ndarray, degree: int, gamma: float, coef0: float
) -> np.ndarray:
    return (first @ second.T * gamma + coef0) ** degree


def mmd2_unbiased(
    first: np.ndarray,
    second: np.ndarray,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
) -> float:
    """Unbiased MMD² between two equally sized sets of feature vectors (one subset of KID)."""
    count = len(first)
    if len(second) != count or count < 2:
        raise ValueError(f"need two sets of the same size >= 2, got {len(first)} and {len(second)}")
    gamma = 1.0 / first.shape[1] if gamma is None else gamma
    within_first = polynomial_kernel(first, first, degree, gamma, coef0)
    within_second = polynomial_kernel(second, second, degree, gamma, coef0)
    between = polynomial_kernel(first, second, degree, gamma, coef0)
    off_diagonal = (
        within_first.sum() - np.trace(within_first) + within_second.sum() - np.trace(within_second)
    )
    return float(off_diagonal / (count * (count - 1)) - 2 * between.sum() / count**2)


def kid(
    features_a: np.ndarray | torch.Tensor,
    features_b: np.ndarray | torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> KernelDistance:
    """KID between two N x D feature sets: mean and std of MMD²_u over random subsets."""
    first, second = as_float64(features_a), as_float64(features_b)
    if first.ndim != 2 or second.ndim != 2 or first.shape[1] != second.shape[1]:
        raise ValueError(f"need N x D and M x D features, got {first.shape} and {second.shape}")
    size = min(subset_size, len(first), len(second))
    if size < 2:
        raise ValueError(
            f"KID needs at least 2 samples in each set, got {len(first)}, {len(second)}"
        )
    generator = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(
            first[generator.choice(len(first), size, replace=False)],
            second[generator.choice(len(second), size, replace=False)],
            degree,
            gamma,
            coef0,
        )
        for _ in range(subsets)
    ]
    return KernelDistance(float(np.mean(values)), float(np.std(values)), subsets, size)
