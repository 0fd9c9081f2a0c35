"""Cache of the real images' features and statistics, so an evaluation embeds only its samples.

One file per (feature network, packed-data hash, split, image count):
    <cache_dir>/<network cache_key>/<data_hash>-<split>-<count>.npz
holding the N x D float32 features (KID and precision/recall need them) and their float64
mean and covariance (the Fréchet distance needs only those). The key changes whenever the
packed arrays change (the data hash in data/packed/<res>/meta.json) or the network or its
preprocessing does (the network's `cache_key`), so a stale file is never read. Files are
written to a temporary name and renamed, so a crash never leaves half a cache entry.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from face_generation.evaluation.frechet import FeatureStatistics, feature_statistics


@dataclass(frozen=True)
class RealFeatures:
    features: np.ndarray  # N x D float32
    statistics: FeatureStatistics
    from_cache: bool


def packed_data_hash(packed_dir: str | Path) -> str:
    """The data hash the pack stage wrote into data/packed/<resolution>/meta.json."""
    meta = Path(packed_dir) / "meta.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} does not exist; run the pack stage (dvc repro pack) first")
    return str(json.loads(meta.read_text())["data_hash"])


def cache_path(cache_dir: str | Path, network: str, data_hash: str, split: str, count: int) -> Path:
    return Path(cache_dir) / network / f"{data_hash}-{split}-{count}.npz"


def load_entry(path: Path, count: int) -> RealFeatures | None:
    """The cached entry, or None when it is missing or unreadable (then it is recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            features, mean, cov = stored["features"], stored["mean"], stored["cov"]
    except (OSError, KeyError, ValueError):
        return None
    if len(features) != count or mean.shape != features.shape[1:] or cov.shape != mean.shape * 2:
        return None
    return RealFeatures(features, FeatureStatistics(mean, cov, len(features)), from_cache=True)


def save_entry(path: Path, features: np.ndarray, statistics: FeatureStatistics) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp.npz")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, features=features, mean=statistics.mean, cov=statistics.cov)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def real_features(
    cache_dir: str | Path,
    network: str,
    data_hash: str,
    split: str,
    count: int,
    embed: Callable[[], np.ndarray],
) -> RealFeatures:
    """Features and statistics of `count` real images of `split`, from the cache or `embed()`.

    `network` is the feature network's `cache_key`; `embed` computes the count x D features
    on a cache miss (and must embed the same images every time: the first `count`, say).
    """
    path = cache_path(cache_dir, network, data_hash, split, count)
    cached = load_entry(path, count)
    if cached is not None:
        return cached
    features = np.asarray(embed(), dtype=np.float32)
    if len(features) != count:
        raise ValueError(f"embed() returned {len(features)} feature rows, expected {count}")
    statistics = feature_statistics(features)
    save_entry(path, features, statistics)
    return RealFeatures(features, statistics, from_cache=False)
