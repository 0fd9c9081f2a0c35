"""The maths of the distribution metrics (Fréchet distance, KID, precision and recall) against
hand-computed values and independent numpy/scipy references: numpy and torch only, no feature
network and no fixture of conftest.py, so `scripts/mutate.py` runs this file with
`--noconftest` in a few seconds per mutant."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist

from face_generation.evaluation.frechet import (
    FeatureStatistics,
    feature_statistics,
    frechet_distance,
    frechet_distance_between,
)
from face_generation.evaluation.kid import KernelDistance, kid, mmd2_unbiased
from face_generation.evaluation.precision_recall import (
    PrecisionRecall,
    kth_neighbour_radii,
    precision_recall,
)
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
    # For a set with itself the formula comes out near -5e-6 here (the square roots of the
    # eigenvalues of order ±1e-15 of a singular covariance): a distance is never below zero.
    assert frechet_distance_between(first, first) == 0.0


@pytest.mark.parametrize(
    ("mean2", "cov1", "cov2"),
    [
        (np.zeros(4), np.eye(3), np.eye(3)),  # the second mean alone is longer
        (np.zeros(2), np.eye(3), np.eye(3)),  # or shorter
        (np.zeros(3), np.eye(3), np.eye(4)),  # the second covariance alone is larger
        (np.zeros(3), np.eye(3), np.eye(2)),  # or smaller
        (np.zeros(3), np.eye(4), np.eye(4)),  # the covariances agree, larger than the means
        (np.zeros(3), np.eye(2), np.eye(2)),  # or smaller
    ],
)
def test_frechet_distance_rejects_mismatched_shapes(
    mean2: np.ndarray, cov1: np.ndarray, cov2: np.ndarray
) -> None:
    with pytest.raises(ValueError, match="shapes disagree"):
        frechet_distance(np.zeros(3), cov1, mean2, cov2)


def test_feature_statistics_are_the_mean_and_the_unbiased_covariance() -> None:
    statistics = feature_statistics(np.array([[0.0, 0.0], [2.0, 1.0], [1.0, 5.0]]))
    # Deviations (-1, -2), (1, -1), (0, 3): variances 2 / 2 and 14 / 2, covariance (2 - 1) / 2.
    np.testing.assert_array_equal(statistics.mean, [1.0, 2.0])
    np.testing.assert_allclose(statistics.cov, [[1.0, 0.5], [0.5, 7.0]], rtol=1e-15)
    assert statistics.count == 3
    # Two samples, the fewest that have a covariance: (0, 1) and (2, 3) deviate by ±(1, 1).
    two = feature_statistics(np.array([[0.0, 1.0], [2.0, 3.0]]))
    np.testing.assert_array_equal(two.mean, [1.0, 2.0])
    np.testing.assert_array_equal(two.cov, [[2.0, 2.0], [2.0, 2.0]])
    assert two.count == 2


@pytest.mark.parametrize("shape", [(1, 4), (6,), (6, 4, 2), (6, 1, 4)])
def test_feature_statistics_refuse_anything_but_two_or_more_rows_of_features(
    shape: tuple[int, ...],
) -> None:
    with pytest.raises(ValueError, match=r"need N x D features with N >= 2"):
        feature_statistics(np.ones(shape))


def test_feature_statistics_and_frechet_distance_take_torch_tensors() -> None:
    first, second = gaussian_features(50, 6, seed=21), gaussian_features(40, 6, seed=22, shift=1)
    tensors = [torch.tensor(array, requires_grad=True) for array in (first, second)]
    from_numpy = [feature_statistics(array) for array in (first, second)]
    from_torch = [feature_statistics(tensor) for tensor in tensors]
    for ours, reference in zip(from_torch, from_numpy, strict=True):
        np.testing.assert_array_equal(ours.mean, reference.mean)
        np.testing.assert_array_equal(ours.cov, reference.cov)
    tensor_statistics = [torch.tensor(value) for s in from_numpy for value in (s.mean, s.cov)]
    assert frechet_distance(*tensor_statistics) == frechet_distance_between(*from_numpy) > 1


# --- KID ---


def kid_reference(
    first: np.ndarray,
    second: np.ndarray,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
) -> float:
    """Unbiased MMD² with k(x, y) = (gamma x.y + coef0)^degree, summed pair by pair; by default
    KID's kernel (x.y / d + 1)³."""
    count, dim = first.shape
    scale = 1 / dim if gamma is None else gamma

    def kernel(x: np.ndarray, y: np.ndarray) -> float:
        return (float(np.dot(x, y)) * scale + coef0) ** degree

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


def test_kid_of_two_samples_per_side_by_hand() -> None:
    # k(x, y) = (x.y / 2 + 1)³. Within a = {(2, 2), (2, 0)}: x.y = 4, k = 27, twice, / (2 * 1).
    # Within b = {(0, 0), (0, 2)}: x.y = 0, k = 1. Between: x.y = 0, 4, 0, 0 → 1 + 27 + 1 + 1
    # = 30, times 2 / 2². MMD² = 27 + 1 - 15 = 13, whichever order the subsets take the rows in.
    first, second = np.array([[2.0, 2.0], [2.0, 0.0]]), np.array([[0.0, 0.0], [0.0, 2.0]])
    assert mmd2_unbiased(first, second) == 13.0
    result = kid(first, second, subsets=5, subset_size=2)
    assert (result.mean, result.std, result.subsets, result.subset_size) == (13.0, 0.0, 5, 2)
    assert kid(first, second, subsets=5, subset_size=1000).subset_size == 2


@pytest.mark.parametrize(
    ("first_rows", "second_rows", "subset_size"), [(1, 5, 1000), (5, 1, 1000), (5, 5, 1)]
)
def test_kid_refuses_subsets_of_one_sample(
    first_rows: int, second_rows: int, subset_size: int
) -> None:
    first, second = gaussian_features(first_rows, 3, 23), gaussian_features(second_rows, 3, 24)
    with pytest.raises(ValueError, match="KID needs at least 2 samples"):
        kid(first, second, subsets=2, subset_size=subset_size)


@pytest.mark.parametrize(("first_rows", "second_rows"), [(1, 1), (3, 2), (2, 3)])
def test_mmd2_unbiased_refuses_single_or_unequal_sets(first_rows: int, second_rows: int) -> None:
    with pytest.raises(ValueError, match="need two sets of the same size >= 2"):
        mmd2_unbiased(np.ones((first_rows, 3)), np.ones((second_rows, 3)))


@pytest.mark.parametrize(
    ("first_shape", "second_shape"),
    [
        ((5, 4, 2), (5, 4)),
        ((5, 4), (5, 4, 2)),
        ((5, 4, 2), (5, 4, 2)),
        ((5,), (5,)),
        ((5,), (5, 4)),
        ((5, 4), (5,)),
        ((5, 4), (5, 3)),
        ((5, 3), (5, 4)),
    ],
)
def test_kid_refuses_features_that_are_not_n_by_d(
    first_shape: tuple[int, ...], second_shape: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match="need N x D and M x D features"):
        kid(np.ones(first_shape), np.ones(second_shape), subsets=2, subset_size=5)


def test_kid_of_features_as_wide_as_a_feature_network_s() -> None:
    # 1280 dimensions, as EfficientNet-Lite0's features: a width CPython does not keep as one
    # int object, so an identity test (`is not`) of the two widths would refuse equal ones.
    first = gaussian_features(6, 1280, seed=38)
    second = gaussian_features(6, 1280, seed=39, shift=0.1)
    result = kid(first, second, subsets=1, subset_size=6)
    assert result.mean == pytest.approx(kid_reference(first, second), rel=1e-10)


def test_kid_and_mmd2_use_the_kernel_they_are_given() -> None:
    first = gaussian_features(12, 5, seed=25)
    second = gaussian_features(12, 5, seed=26, shift=0.4)
    reference = kid_reference(first, second, degree=2, gamma=0.3, coef0=0.5)
    assert reference != pytest.approx(kid_reference(first, second), rel=0.01)
    result = kid(first, second, subsets=1, subset_size=12, degree=2, gamma=0.3, coef0=0.5)
    assert result.mean == pytest.approx(reference, rel=1e-10)
    direct = mmd2_unbiased(first, second, degree=2, gamma=0.3, coef0=0.5)
    assert direct == pytest.approx(reference, rel=1e-10)
    assert mmd2_unbiased(first, second) == pytest.approx(kid_reference(first, second), rel=1e-10)


def test_kid_defaults_are_100_subsets_of_1000_and_seed_0() -> None:
    first, second = gaussian_features(30, 3, seed=27), gaussian_features(30, 3, seed=28, shift=1)
    default = kid(first, second, subset_size=5)
    assert default == kid(first, second, subsets=100, subset_size=5, seed=0)
    assert default.subsets == 100
    assert default.mean != kid(first, second, subsets=100, subset_size=5, seed=1).mean
    large = kid(gaussian_features(1001, 2, 29), gaussian_features(1001, 2, 30), subsets=1)
    assert large.subset_size == 1000


# --- precision and recall ---


def precision_recall_reference(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al.'s definition with scipy's pairwise distances, in float64."""
    real_radii = np.sort(cdist(real, real), axis=1)[:, k]  # column 0: the sample itself
    fake_radii = np.sort(cdist(fake, fake), axis=1)[:, k]
    precision = (cdist(fake, real) <= real_radii[None, :]).any(axis=1).mean()
    recall = (cdist(real, fake) <= fake_radii[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


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


def test_precision_and_recall_by_hand_on_a_line() -> None:
    # Real -5, 0, 1, 2, 3 (k = 1): radii 5, 1, 1, 1, 1. Fake 4, 10, 11: radii 6, 1, 1.
    # Precision: 4 lies exactly on the ball of radius 1 around 3 (inside: <=), 10 and 11 in
    # none: 1 / 3. Recall: 0, 1, 2, 3 within 6 of 4, -5 in no ball: 4 / 5. The first sample of
    # each set decides its share.
    real = np.array([[-5.0], [0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[4.0], [10.0], [11.0]])
    result = precision_recall(real, fake, k=1, device="cpu")
    assert result.precision == pytest.approx(1 / 3, rel=1e-6)
    assert result.recall == pytest.approx(4 / 5, rel=1e-6)
    assert result.k == 1


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_and_recall_match_a_scipy_reference_for_any_block_of_rows(k: int) -> None:
    # Small integer features: exact distances in float32 too, and many of them tie a radius.
    generator = np.random.default_rng(31)
    real = generator.integers(-3, 4, size=(90, 4)).astype(np.float64)
    fake = generator.integers(-3, 4, size=(70, 4)) + np.array([3.0, 1.0, 0.0, 0.0])
    precision, recall = precision_recall_reference(real, fake, k)
    assert 0.05 < precision < 0.95 and 0.05 < recall < 0.95
    one_block = precision_recall(real, fake, k=k, block=1024, device="cpu")
    assert one_block.precision == pytest.approx(precision, abs=1e-6)
    assert one_block.recall == pytest.approx(recall, abs=1e-6)
    for block in (1, 7, 64, 89, 90):  # blocks of rows smaller than both sets
        assert precision_recall(real, fake, k=k, block=block, device="cpu") == one_block


@pytest.mark.parametrize("block", [1, 7, 40, 41, 1000])
def test_kth_neighbour_radii_are_taken_along_each_row(block: int) -> None:
    features = gaussian_features(41, 6, seed=32)
    expected = np.sort(cdist(features, features), axis=1)[:, 3]
    radii = kth_neighbour_radii(torch.tensor(features, dtype=torch.float32), 3, block)
    np.testing.assert_allclose(radii.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("real_shape", "fake_shape"),
    [
        ((8, 4, 2), (8, 4, 2)),
        ((8, 4, 2), (8, 4)),
        ((8, 4), (8, 4, 2)),
        ((8,), (8,)),
        ((8, 4), (8, 3)),
    ],
)
def test_precision_and_recall_refuse_features_that_are_not_n_by_d(
    real_shape: tuple[int, ...], fake_shape: tuple[int, ...]
) -> None:
    generator = np.random.default_rng(33)
    real, fake = generator.normal(size=real_shape), generator.normal(size=fake_shape)
    with pytest.raises(ValueError, match="need N x D and M x D features"):
        precision_recall(real, fake, k=3, device="cpu")


@pytest.mark.parametrize(("real_rows", "fake_rows"), [(3, 10), (10, 3), (2, 10), (10, 2)])
def test_precision_and_recall_need_more_than_k_samples_in_each_set(
    real_rows: int, fake_rows: int
) -> None:
    real, fake = gaussian_features(real_rows, 4, 34), gaussian_features(fake_rows, 4, 35)
    with pytest.raises(ValueError, match="k=3 nearest neighbours need more than 3 samples"):
        precision_recall(real, fake, k=3, device="cpu")
    enough = gaussian_features(4, 4, 34), gaussian_features(4, 4, 35)
    assert precision_recall(*enough, k=3, device="cpu").k == 3  # k + 1 samples are enough


def test_precision_and_recall_take_torch_tensors_and_default_to_k_3() -> None:
    real, fake = gaussian_features(60, 5, seed=36), gaussian_features(50, 5, seed=37, shift=0.7)
    from_numpy = precision_recall(real, fake, k=3, device="cpu")
    tensors = [torch.tensor(array, requires_grad=True) for array in (real, fake)]
    assert precision_recall(*tensors, device="cpu") == from_numpy
    assert 0 < from_numpy.precision < 1 and 0 < from_numpy.recall < 1
    assert from_numpy != precision_recall(real, fake, k=1, device="cpu")


@pytest.mark.parametrize(
    ("result", "field"),
    [
        (FeatureStatistics(np.zeros(2), np.eye(2), 3), "count"),
        (KernelDistance(0.1, 0.01, 100, 1000), "mean"),
        (PrecisionRecall(0.5, 0.25, 3), "precision"),
    ],
)
def test_metric_results_are_read_only(result: object, field: str) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(result, field, 0)
