"""Reading what the pack and features stages wrote: row-aligned arrays per split.

    data/packed/<res>/<split>.npy                    uint8 N×H×W×3 faces (the pack stage)
    data/packed/<res>/meta.json                      resolution, counts, data_hash
    data/features/<res>/<name>/<split>.npy           a feature array row-aligned with them

Arrays are memory-mapped, so opening one costs nothing until rows are read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from face_generation.errors import UserError


class DataError(UserError):
    """Arrays that training or evaluation cannot use; the message says which stage to rerun."""


def load_split(packed_dir: Path, split: str, resolution: int) -> np.ndarray:
    """The packed uint8 array of one split, memory-mapped, after checking its shape."""
    path = packed_dir / f"{split}.npy"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run the data stages first (`dvc repro pack`, or "
            f"`python -m face_generation.data.pack` after download, split and crop) with "
            f"data.resolution={resolution}"
        )
    array = _open(path, "pack")
    expected = (resolution, resolution, 3)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != expected:
        raise DataError(
            f"{path} holds a {array.dtype} array of shape {array.shape}; training expects "
            f"uint8 N×{resolution}×{resolution}×3 (data.resolution={resolution}): rerun the pack stage"
        )
    if len(array) == 0:
        raise DataError(f"{path} holds no images: the {split} split is empty")
    return array


def features_dir(data_dir: Path, resolution: int) -> Path:
    """data/features/<res>/: one folder per feature array, row-aligned with data/packed/<res>/."""
    return data_dir / "features" / str(resolution)


def load_feature_split(features: Path, name: str, split: str, rows: int) -> np.ndarray:
    """Feature array `name` of one split, memory-mapped, checked to have one row per image."""
    path = features / name / f"{split}.npy"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: this model trains on the feature array '{name}'; run the "
            "features stage first (`dvc repro features`)"
        )
    array = _open(path, "features")
    if len(array) != rows:
        raise DataError(
            f"{path} has {len(array)} rows but the packed {split} split has {rows} images: the "
            "packed data changed after the features were computed; rerun the features stage"
        )
    return array


def read_meta(packed_dir: Path) -> dict:
    """meta.json beside the arrays (resolution, counts, data_hash); empty when absent."""
    path = packed_dir / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _open(path: Path, stage: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as error:
        raise DataError(
            f"{path} is not a readable .npy array ({error}); rerun the {stage} stage"
        ) from error
