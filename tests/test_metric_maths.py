"""The maths of the distribution metrics (Fréchet distance, KID, precision and recall) against
hand-computed values and independent numpy/scipy references: numpy and torch only, no feature
network and no fixture of conftest.py, so `scripts/mutate.py` runs this file with
`--noconftest` in a few seconds per mutant."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg

from face_generation.evaluation.frechet import (
    feature_statistics,
    frechet_distance,
    frechet_distance_between,
)
from face_generation.evaluation.kid import kid
from face_generation.evaluation.precision_recall import precision_recall
from tests.feature_samples import gaussian_features


def sqrtm_reference(mu1, sigma1, mu2, sigma2) -> float:
    """pytorch-fid's formula with scipy.linalg.sqrtm, in float64."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))


# --- Fréchet distance ---


def test_frechet_distance_of_a_set_with_itself_is_zero() -> None:
    statistics = feature_statistics(gaussian_features(500, 32, seed=0))
    distance = frechet_distance_between(statistics, statistics)
    assert 0.0 <= distance < 1e-9 * np.trace(statistics.cov)


def test_frechet_distance_matches_scipy_sqrtm_reference() -> None:
    for dim, count in [(8, 200), (64, 1000), (256, 2000)]:
        first = feature_statistics(gaussian_features(count, dim, seed=1))
        second = feature_statistics(gaussian_features(count, dim, seed=2, shift=0.3))
        ours = frechet_distance(first.mean, first.cov, second.mean, second.cov)
        reference = sqrtm_reference(first.mean, first.cov, second.mean, second.cov)
        assert ours == pytest.approx(reference, rel=1e-6), (dim, ours, reference)
        assert ours > 0.3**2 * dim * 0.5  # the mean shift alone is 0.09 per dimension


def test_frechet_distance_of_known_gaussians_has_its_closed_form() -> None:
    # Commuting (diagonal) covariances: d² = |mu1 - mu2|² + Σ (sqrt(a_i) - sqrt(b_i))².
    variances_a, variances_b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mean_a, mean_b = np.zeros(4), np.array([1.0, 0.0, -2.0, 0.5])
    expected = 1 + 4 + 0.25 + (1 + 1 + 0 + 0.25)
    assert frechet_distance(
        mean_a, np.diag(variances_a), mean_b, np.diag(variances_b)
    ) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_grows_monotonically_with_added_noise() -> None:
    real = gaussian_features(800, 32, seed=3)
    noise = np.random.default_rng(4).normal(size=real.shape)
    reference = feature_statistics(real)
    distances = [
        frechet_distance_between(reference, feature_statistics(real + level * noise))
        for level in (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
    ]
    assert distances[0] < 1e-9
    assert all(later > earlier for earlier, later in itertools.pairwise(distances))


def test_frechet_distance_is_symmetric() -> None:
    first = feature_statistics(gaussian_features(300, 48, seed=5))
    second = feature_statistics(gaussian_features(300, 48, seed=6, shift=0.2) * 1.5)
    forward = frechet_distance_between(first, second)
    backward = frechet_distance_between(second, first)
    assert forward > 1 and forward == pytest.approx(backward, rel=1e-9)


def test_frechet_distance_with_fewer_samples_than_dimensions_is_finite() -> None:
    # Singular covariances (N < D): sqrtm needs an offset here; the eigen route does not.
    first = feature_statistics(gaussian_features(20, 64, seed=7))
    second = feature_statistics(gaussian_features(20, 64, seed=8))
    distance = frechet_distance_between(first, second)
    assert np.isfinite(distance) and distance > 0
    assert frechet_distance_between(first, first) < 1e-9 * np.trace(first.cov)


def test_frechet_distance_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes disagree"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --- KID ---


def kid_reference(first: np.ndarray, second: np.ndarray) -> float:
    """Unbiased MMD² with k(x, y) = (x.y / d + 1)³, summed pair by pair."""
    count, dim = first.shape

    def kernel(x: np.ndarray, y: np.ndarray) -> float:
        return (float(np.dot(x, y)) / dim + 1.0) ** 3

    within = sum(
        kernel(a[i], a[j])
        for a in (first, second)
        for i in range(count)
        for j in range(count)
        if i != j
    )
    between = sum(kernel(first[i], second[j]) for i in range(count) for j in range(count))
    return within / (count * (count - 1)) - 2 * between / count**2


def test_kid_matches_a_direct_pairwise_reference() -> None:
    first = gaussian_features(30, 8, seed=9)
    second = gaussian_features(30, 8, seed=10, shift=0.5)
    result = kid(first, second, subsets=1, subset_size=30)
    assert result.subset_size == 30
    assert result.mean == pytest.approx(kid_reference(first, second), rel=1e-10)
    assert result.std == 0.0


def test_kid_averages_the_reference_over_random_subsets() -> None:
    first = gaussian_features(60, 6, seed=11)
    second = gaussian_features(50, 6, seed=12, shift=0.3)
    result = kid(first, second, subsets=4, subset_size=20, seed=7)
    generator = np.random.default_rng(7)  # the subsets kid() draws: without replacement, a then b
    values = [
        kid_reference(
            first[generator.choice(60, 20, replace=False)],
            second[generator.choice(50, 20, replace=False)],
        )
        for _ in range(4)
    ]
    assert result.mean == pytest.approx(np.mean(values), rel=1e-10)
    assert result.std == pytest.approx(np.std(values), rel=1e-8)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift() -> None:
    same = kid(gaussian_features(400, 16, 13), gaussian_features(400, 16, 14), 20, 200)
    shifted = kid(gaussian_features(400, 16, 13), gaussian_features(400, 16, 14, 0.5), 20, 200)
    farther = kid(gaussian_features(400, 16, 13), gaussian_features(400, 16, 14, 1.0), 20, 200)
    assert abs(same.mean) < 3 * same.std + 1e-3
    assert 0 < shifted.mean < farther.mean
    assert shifted.mean > 10 * abs(same.mean)


def test_kid_caps_the_subset_size_at_the_smaller_set() -> None:
    result = kid(gaussian_features(40, 4, 15), gaussian_features(25, 4, 16), 3, 1000)
    assert result.subset_size == 25


# --- precision and recall ---


def test_precision_and_recall_are_one_for_identical_sets() -> None:
    features = gaussian_features(300, 16, seed=17)
    result = precision_recall(features, features.copy(), k=3, device="cpu")
    assert result.precision == 1.0 and result.recall == 1.0


def test_precision_and_recall_fall_for_shifted_sets() -> None:
    real = gaussian_features(400, 16, seed=18)
    near = precision_recall(real, gaussian_features(400, 16, seed=19, shift=0.1), k=3, device="cpu")
    far = precision_recall(real, gaussian_features(400, 16, seed=19, shift=1.0), k=3, device="cpu")
    assert far.precision < near.precision and far.recall < near.recall
    assert far.precision < 0.5 and far.recall < 0.5
    assert near.precision > 0.6 and near.recall > 0.6


def test_precision_stays_and_recall_falls_under_mode_collapse() -> None:
    real = gaussian_features(400, 8, seed=20)
    # The generator reproduces only the real samples nearest the mean: realistic, not varied.
    collapsed = real[np.argsort(np.linalg.norm(real - real.mean(0), axis=1))[:100]]
    result = precision_recall(real, collapsed, k=3, device="cpu")
    assert result.precision == 1.0 and result.recall < 0.7
