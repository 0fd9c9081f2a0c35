"""Writing one feature folder, data/features/<res>/<network>/, so that half of one is never read.

    <network>/meta.json              what is inside (written last): the network and its weights'
                                     hash, the packed data's hash, each array's row shape and
                                     dtype, bytes per image
    <network>/<array>/<split>.npy    row-aligned with data/packed/<res>/<split>.npy
    <network>/<array>/pca.npz        a pyramid level's PCA projection (features.pyramid_dims)

Everything is written into a hidden temporary folder beside it (`.<network>.tmp`), which
takes the folder's place in a rename at the end (`commit`). A run killed before that leaves
the temporary folder only, which the next run removes; readers (data/packed.py) also refuse a
folder without meta.json.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

META = "meta.json"
META_FORMAT = 1


def file_sha256(paths: Iterable[Path]) -> str:
    """sha256 over the bytes of the files, in order: names a network's weights."""
    digest = hashlib.sha256()
    for path in paths:
        with Path(path).open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


class FeatureFolder:
    """A feature folder being written: `create` arrays, then `commit`; `abort` on failure."""

    def __init__(self, features: Path, network: str) -> None:
        self.final = features / network
        self.temporary = features / f".{network}.tmp"
        shutil.rmtree(self.temporary, ignore_errors=True)  # what a killed run left
        self.temporary.mkdir(parents=True)

    def __enter__(self) -> FeatureFolder:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is not None:
            self.abort()

    def create(self, array: str, split: str, shape: tuple[int, ...], dtype: Any) -> np.memmap:
        """A writable memory-mapped `<array>/<split>.npy` of `shape` (rows first)."""
        path = self.temporary / array / f"{split}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(path, "w+", np.dtype(dtype), shape)

    def side_file(self, array: str, name: str) -> Path:
        """A file beside an array's splits (a PCA projection), inside the temporary folder."""
        path = self.temporary / array / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def commit(self, meta: dict[str, Any]) -> Path:
        """Describe the arrays in meta.json, then put the folder in place of the old one."""
        arrays: dict[str, dict[str, Any]] = {}
        for path in sorted(self.temporary.glob("*/*.npy")):
            array = np.load(path, mmap_mode="r")
            entry = arrays.setdefault(
                path.parent.name,
                {"row_shape": list(array.shape[1:]), "dtype": str(array.dtype), "rows": {}},
            )
            entry["rows"][path.stem] = len(array)
        row_bytes = {
            name: int(np.prod(entry["row_shape"], dtype=np.int64))
            * np.dtype(entry["dtype"]).itemsize
            for name, entry in arrays.items()
        }
        content = {
            "format": META_FORMAT,
            **meta,
            "arrays": arrays,
            "bytes_per_image": sum(row_bytes.values()),
            "bytes_per_image_by_array": row_bytes,
        }
        (self.temporary / META).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        previous = self.final.with_name(f".{self.final.name}.old")
        shutil.rmtree(previous, ignore_errors=True)
        if self.final.exists():
            self.final.rename(previous)
        self.temporary.rename(self.final)
        shutil.rmtree(previous, ignore_errors=True)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.temporary, ignore_errors=True)
