"""Feature vectors with a known distribution, for the metric tests (not a test module)."""

from __future__ import annotations

import numpy as np


def gaussian_features(count: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Samples of a Gaussian with a random (known) covariance A A^T + I/2, mean `shift`."""
    generator = np.random.default_rng(seed)
    mixing = np.random.default_rng(1234).normal(size=(dim, dim)) / np.sqrt(dim)
    noise = generator.normal(size=(count, dim))
    return noise @ mixing.T + generator.normal(size=(count, dim)) / np.sqrt(2) + shift
