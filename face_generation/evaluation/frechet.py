"""Fréchet distance between two feature distributions, each summarised by mean and covariance.

    d² = |mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr((S1 S2)^½)

as in FID (Heusel et al. 2017), but the metric is named after the network that produced the
features (`fd_effnet`), never "FID" unless they are Inception-v3's. Computed in float64.
tr((S1 S2)^½) equals tr((A S2 A)^½) with A = S1^½ (the two products are similar matrices),
and A S2 A is symmetric positive semi-definite, so two symmetric eigendecompositions give it
exactly, with no complex round-off and no failure on singular covariances (fewer samples than
dimensions), where `scipy.linalg.sqrtm` of the non-symmetric S1 S2 needs an offset hack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class FeatureStatistics:
    """Mean (D,) and covariance (D, D) of N feature vectors, float64."""

    mean: np.ndarray
    cov: np.ndarray
    count: int


def as_float64(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float64)


def feature_statistics(features: np.ndarray | torch.Tensor) -> FeatureStatistics:
    """Mean and unbiased covariance (N - 1 in the denominator, as pytorch-fid) of N x D features."""
    values = as_float64(features)
    if values.ndim != 2 or len(values) < 2:
        raise ValueError(f"need N x D features with N >= 2, got shape {values.shape}")
    return FeatureStatistics(values.mean(axis=0), np.cov(values, rowvar=False), len(values))


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (round-off below 0 clipped)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """tr((cov1 cov2)^½) for covariance matrices."""
    root1 = psd_sqrt(cov1)
    inner = root1 @ cov2 @ root1
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())


def frechet_distance(
    mu1: np.ndarray | torch.Tensor,
    sigma1: np.ndarray | torch.Tensor,
    mu2: np.ndarray | torch.Tensor,
    sigma2: np.ndarray | torch.Tensor,
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (d², as FID reports it)."""
    mean1, mean2 = as_float64(mu1), as_float64(mu2)
    cov1, cov2 = as_float64(sigma1), as_float64(sigma2)
    if mean1.shape != mean2.shape or cov1.shape != cov2.shape or cov1.shape != (len(mean1),) * 2:
        raise ValueError(
            f"shapes disagree: mu {mean1.shape} {mean2.shape}, sigma {cov1.shape} {cov2.shape}"
        )
    difference = mean1 - mean2
    distance = (
        difference @ difference
        + np.trace(cov1)
        + np.trace(cov2)
        - 2 * trace_sqrt_product(cov1, cov2)
    )
    return max(float(distance), 0.0)  # a distance; round-off can dip a hair below zero


def frechet_distance_between(first: FeatureStatistics, second: FeatureStatistics) -> float:
    return frechet_distance(first.mean, first.cov, second.mean, second.cov)
