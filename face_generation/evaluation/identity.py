"""Identity similarity between row-aligned pairs of face embeddings.

For a conditioned generator: the embedding that conditioned it against the embedding of the
face it generated; for a reconstruction: original against reconstruction. Reports the mean
cosine similarity, the mean Euclidean distance, and the share of pairs closer than a
same-person distance: the judge's, calibrated on real pairs of known people at a false-accept
rate (`calibrate`, which also gives the real-pair anchors a generated score is read against).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from face_generation.evaluation.frechet import as_float64


def row_cosines(
    embeddings_a: np.ndarray | torch.Tensor, embeddings_b: np.ndarray | torch.Tensor
) -> np.ndarray:
    """Cosine similarity of row i of `embeddings_a` to row i of `embeddings_b` (N x D each)."""
    first, second = as_float64(embeddings_a), as_float64(embeddings_b)
    if first.shape != second.shape or first.ndim != 2 or len(first) == 0:
        raise ValueError(
            f"need two row-aligned N x D embeddings, got {first.shape} and {second.shape}"
        )
    norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
    return (first * second).sum(axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)


def bootstrap_gap(
    same: np.ndarray, other: np.ndarray, references: int, resamples: int, level: float, seed: int
) -> tuple[float, float, float]:
    """(mean gap, low, high): the mean of `same` − `other` (per sample, in `references` equal
    blocks, one per reference) and its percentile bootstrap interval at `level`, resampling
    references with replacement (samples of one reference are not independent)."""
    per_reference = (np.asarray(same) - np.asarray(other)).reshape(references, -1).mean(axis=1)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, references, size=(resamples, references))
    means = per_reference[draws].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(per_reference.mean()), float(low), float(high)


@dataclass(frozen=True)
class IdentitySimilarity:
    cosine_mean: float
    distance_mean: float
    same_person_share: float  # share of pairs with distance < threshold
    threshold: float
    count: int


def identity_similarity(
    embeddings_a: np.ndarray | torch.Tensor,
    embeddings_b: np.ndarray | torch.Tensor,
    threshold: float,
) -> IdentitySimilarity:
    """Similarity of row i of `embeddings_a` to row i of `embeddings_b` (N x D each)."""
    first, second = as_float64(embeddings_a), as_float64(embeddings_b)
    cosine = row_cosines(first, second)
    distance = np.linalg.norm(first - second, axis=1)
    return IdentitySimilarity(
        cosine_mean=float(cosine.mean()),
        distance_mean=float(distance.mean()),
        same_person_share=float((distance < threshold).mean()),
        threshold=float(threshold),
        count=len(first),
    )


@dataclass(frozen=True)
class Calibration:
    """The judge's same-person distance at a false-accept rate, from real pairs of known people
    (threshold None: uncalibrated, too few pairs), and the real-pair anchors: the mean cosine
    of same-person and of different-person pairs, beside which a generated score is read."""

    threshold: float | None
    far: float
    tar: float | None  # share of same-person pairs accepted at the threshold
    same_pairs: int
    different_pairs: int
    same_cosine: float | None
    different_cosine: float | None


def calibrate(embeddings: np.ndarray, people: np.ndarray, far: float) -> Calibration:
    """Every pair of rows whose people are known (>= 0): the distance under which a share
    `far` of different-person pairs fall is the threshold; TAR is the share of same-person
    pairs under it."""
    known = np.flatnonzero(np.asarray(people) >= 0)
    first, second = np.triu_indices(len(known), k=1)
    rows_a, rows_b = known[first], known[second]
    same = np.asarray(people)[rows_a] == np.asarray(people)[rows_b]
    vectors = as_float64(embeddings)
    distance = np.linalg.norm(vectors[rows_a] - vectors[rows_b], axis=1)
    cosine = row_cosines(vectors[rows_a], vectors[rows_b]) if len(rows_a) else np.zeros(0)
    counts = int(same.sum()), int((~same).sum())
    if min(counts) == 0:
        return Calibration(None, far, None, *counts, None, None)
    threshold = float(np.quantile(distance[~same], far, method="lower"))
    return Calibration(
        threshold,
        far,
        float((distance[same] < threshold).mean()),
        *counts,
        float(cosine[same].mean()),
        float(cosine[~same].mean()),
    )
