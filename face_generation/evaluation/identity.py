"""Identity similarity between row-aligned pairs of face embeddings.

For a conditioned generator: the embedding that conditioned it against the embedding of the
face it generated; for a reconstruction: original against reconstruction. Reports the mean
cosine similarity, the mean Euclidean distance, and the share of pairs closer than the
encoder's same-person distance (0.6 for dlib's recogniser).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from face_generation.evaluation.frechet import as_float64


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
    if first.shape != second.shape or first.ndim != 2 or len(first) == 0:
        raise ValueError(
            f"need two row-aligned N x D embeddings, got {first.shape} and {second.shape}"
        )
    norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
    cosine = (first * second).sum(axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)
    distance = np.linalg.norm(first - second, axis=1)
    return IdentitySimilarity(
        cosine_mean=float(cosine.mean()),
        distance_mean=float(distance.mean()),
        same_person_share=float((distance < threshold).mean()),
        threshold=float(threshold),
        count=len(first),
    )
