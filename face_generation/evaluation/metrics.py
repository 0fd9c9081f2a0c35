"""The evaluation metrics in one import: small functions on feature or image arrays.

Distribution metrics, on N x D features of real and generated images (`features/network.py`
embeds images; `real_stats.py` caches the real side):
    frechet_distance(mu1, sigma1, mu2, sigma2), feature_statistics(features)   -> fd_<network>
    kid(features_a, features_b, subsets, subset_size)                          -> kid_<network>
    precision_recall(real, fake, k)                                            -> precision/recall
Reconstruction metrics, on row-aligned image batches:
    ssim(reconstructions, originals, value_range), psnr(...)
Identity, on row-aligned embeddings (`features/identity.py`):
    identity_similarity(embeddings_a, embeddings_b, threshold)
The networks behind them (EfficientNet-Lite0, DINOv2, Inception-v3 for fid_inception, LPIPS,
dlib, FaceNet) live in `features/`, one file each.
"""

from __future__ import annotations

from face_generation.evaluation.frechet import (
    FeatureStatistics,
    feature_statistics,
    frechet_distance,
    frechet_distance_between,
)
from face_generation.evaluation.identity import IdentitySimilarity, identity_similarity
from face_generation.evaluation.kid import KernelDistance, kid
from face_generation.evaluation.precision_recall import PrecisionRecall, precision_recall
from face_generation.evaluation.real_stats import RealFeatures, packed_data_hash, real_features
from face_generation.evaluation.reconstruction import psnr, ssim

__all__ = [
    "FeatureStatistics",
    "IdentitySimilarity",
    "KernelDistance",
    "PrecisionRecall",
    "RealFeatures",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_between",
    "identity_similarity",
    "kid",
    "packed_data_hash",
    "precision_recall",
    "psnr",
    "real_features",
    "ssim",
]
