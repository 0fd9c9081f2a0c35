"""Reading what the pack and features stages wrote: row-aligned arrays per split.

    data/packed/<res>/<split>.npy                    uint8 N×H×W×3 faces (the pack stage)
    data/packed/<res>/meta.json                      resolution, counts, data_hash
    data/features/<res>/<network>/<array>/<split>.npy  a feature array row-aligned with them
    data/features/<res>/<network>/meta.json          written last by the features stages:
                                                     the network, the packed data_hash, shapes

A feature array is named `<network>/<array>` (`dlib/identity`, `effnet_lite0/pyramid_8`,
`labels/identity`), which is also the name of the `RowInput` a family declares for it; its
`<network>/ok` array flags the rows the network failed on (consumers skip them). Arrays are
memory-mapped, so opening one costs nothing until rows are read.
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
    """data/features/<res>/: one folder per network, row-aligned with data/packed/<res>/."""
    return data_dir / "features" / str(resolution)


def feature_meta(features: Path, network: str) -> dict:
    """meta.json of the feature folder of `network`, checked against the packed data it was
    computed from (data/packed/<res>/ beside data/features/<res>/)."""
    folder = features / network
    path = folder / "meta.json"
    if not path.is_file():
        state = (
            "is incomplete (no meta.json: a stage killed" if folder.is_dir() else "does not exist ("
        )
        raise FileNotFoundError(
            f"{folder} {state} before it finished): run the features stages first (`dvc repro`, "
            "whose stages labels, features and identity write data/features/)"
        )
    meta = json.loads(path.read_text())
    packed = read_meta(features.parent.parent / "packed" / features.name)
    if packed.get("data_hash") != meta.get("data_hash"):
        stage = meta.get("stage", "features")
        raise DataError(
            f"{folder} was computed from packed data {meta.get('data_hash')}, but "
            f"data/packed/{features.name}/ now holds {packed.get('data_hash')}: the features are "
            f"stale; rerun the `{stage}` stage (`dvc repro {stage}`)"
        )
    return meta


def load_feature_split(features: Path, name: str, split: str, rows: int) -> np.ndarray:
    """Feature array `name` (`<network>/<array>`) of one split, memory-mapped, checked to come
    from the current packed data and to have one row per image."""
    network = name.split("/")[0]
    meta = feature_meta(features, network)
    path = features / name / f"{split}.npy"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: this model trains on the feature array '{name}', which the "
            f"`{meta.get('stage', 'features')}` stage did not write with this configuration"
        )
    array = _open(path, str(meta.get("stage", "features")))
    if len(array) != rows:
        raise DataError(
            f"{path} has {len(array)} rows but the packed {split} split has {rows} images: the "
            f"packed data changed after the features were computed; rerun the "
            f"`{meta.get('stage', 'features')}` stage"
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
