"""Training batches from the packed uint8 arrays (data/packed/<res>/<split>.npy, N×H×W×3).

No image is decoded during training. On CUDA the whole split is uploaded once and every
batch is gathered, flipped and normalised on the GPU; on the CPU batches are gathered from
the (memory-mapped) array, in background workers when `train.num_workers` > 0.

The order is a pure function of (seed, step): batch k holds positions k·B … k·B+B-1 of an
endless sequence of per-epoch permutations, and its flips come from a generator seeded with
(seed, k). A resumed run therefore sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

PERMUTATION_STREAM = 0  # seed-sequence tags keep permutations and flips independent
FLIP_STREAM = 1


class DataError(ValueError):
    """Packed arrays that training cannot use; the message says which stage to rerun."""


@dataclass
class Batch:
    """Images in [-1, 1], N×3×H×W (channels_last on CUDA), plus row-aligned extra arrays."""

    images: torch.Tensor
    rows: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


def load_split(packed_dir: Path, split: str, resolution: int) -> np.ndarray:
    """The packed uint8 array of one split, memory-mapped, after checking its shape."""
    path = packed_dir / f"{split}.npy"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run the data stages first (`dvc repro pack`, or "
            f"`python -m face_generation.data.pack` after download, split and crop) with "
            f"data.resolution={resolution}"
        )
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as error:
        raise DataError(
            f"{path} is not a readable .npy array ({error}); rerun the pack stage"
        ) from error
    expected = (resolution, resolution, 3)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != expected:
        raise DataError(
            f"{path} holds a {array.dtype} array of shape {array.shape}; training expects "
            f"uint8 N×{resolution}×{resolution}×3 (data.resolution={resolution}): rerun the pack stage"
        )
    if len(array) == 0:
        raise DataError(f"{path} holds no images: the {split} split is empty")
    return array


def read_meta(packed_dir: Path) -> dict:
    """meta.json beside the arrays (resolution, counts, data_hash); empty when absent."""
    path = packed_dir / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@lru_cache(maxsize=4)
def epoch_permutation(count: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, PERMUTATION_STREAM, epoch]).permutation(count)


def batch_rows(count: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Row indices of batch `step`: a slice of the endless chain of epoch permutations."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = np.divmod(positions, count)
    rows = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        chosen = epochs == epoch
        rows[chosen] = epoch_permutation(count, seed, int(epoch))[offsets[chosen]]
    return rows


def batch_flips(batch_size: int, seed: int, step: int, hflip: bool) -> np.ndarray:
    """Which images of batch `step` are mirrored left-right (faces are roughly symmetric)."""
    if not hflip:
        return np.zeros(batch_size, dtype=bool)
    return np.random.default_rng([seed, FLIP_STREAM, step]).random(batch_size) < 0.5


def to_model_input(
    pixels: torch.Tensor, flips: torch.Tensor, memory_format: torch.memory_format
) -> torch.Tensor:
    """uint8 N×H×W×3 → float N×3×H×W in [-1, 1], mirrored where `flips`.

    The permuted view of an NHWC tensor already has channels_last strides, so asking for
    channels_last copies nothing.
    """
    images = pixels.permute(0, 3, 1, 2).contiguous(memory_format=memory_format)
    images = images.float().div_(127.5).sub_(1.0)
    return torch.where(flips[:, None, None, None], images.flip(3), images)


def upload(array: np.ndarray, device: torch.device, chunk_rows: int = 4096) -> torch.Tensor:
    """Copy a (memory-mapped) array to `device` a chunk at a time, never all of it in RAM."""
    resident = torch.empty(
        array.shape, dtype=torch.from_numpy(array[:1].copy()).dtype, device=device
    )
    for start in range(0, len(array), chunk_rows):
        chunk = torch.from_numpy(np.array(array[start : start + chunk_rows]))
        resident[start : start + len(chunk)].copy_(chunk)
    return resident


class _GatheredBatches(Dataset):
    """Item k is the uint8 rows of batch `start_step + k` (for a CPU DataLoader)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, hflip: bool,
                 start_step: int, steps: int) -> None:  # fmt: skip
        self.arrays = arrays
        self.count = len(arrays["images"])
        self.batch_size, self.seed, self.hflip = batch_size, seed, hflip
        self.start_step, self.steps = start_step, steps

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        step = self.start_step + index
        rows = batch_rows(self.count, self.batch_size, self.seed, step)
        gathered = {name: torch.from_numpy(array[rows]) for name, array in self.arrays.items()}
        gathered["rows"] = torch.from_numpy(rows)
        gathered["flips"] = torch.from_numpy(
            batch_flips(self.batch_size, self.seed, step, self.hflip)
        )
        return gathered


class PackedBatches:
    """Endless training batches from row-aligned packed arrays ("images" plus any features).

    `on_device`: upload everything to `device` once and gather there (the CUDA path);
    otherwise gather on the CPU through a DataLoader with `num_workers` processes.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        batch_size: int,
        seed: int,
        hflip: bool,
        device: torch.device,
        on_device: bool,
        num_workers: int = 0,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        counts = {name: len(array) for name, array in arrays.items()}
        if "images" not in arrays or len(set(counts.values())) != 1:
            raise ValueError(
                f"packed arrays must include 'images' and be row-aligned; got {counts}"
            )
        self.arrays = arrays
        self.count = counts["images"]
        self.batch_size, self.seed, self.hflip = batch_size, seed, hflip
        self.device, self.on_device, self.num_workers = device, on_device, num_workers
        self.memory_format = memory_format
        self.resident: dict[str, torch.Tensor] = {}
        if on_device:
            self.resident = {name: upload(array, device) for name, array in arrays.items()}

    def iterate(self, start_step: int, steps: int) -> Iterator[Batch]:
        """Batches `start_step` … `steps - 1`."""
        if self.on_device:
            for step in range(start_step, steps):
                rows = torch.from_numpy(batch_rows(self.count, self.batch_size, self.seed, step))
                flips = torch.from_numpy(batch_flips(self.batch_size, self.seed, step, self.hflip))
                rows, flips = (
                    rows.to(self.device, non_blocking=True),
                    flips.to(self.device, non_blocking=True),
                )
                gathered = {name: tensor[rows] for name, tensor in self.resident.items()}
                yield self._batch(gathered, rows, flips)
            return
        dataset = _GatheredBatches(
            self.arrays, self.batch_size, self.seed, self.hflip, start_step, steps
        )
        loader = DataLoader(
            dataset,
            batch_size=None,  # items are whole batches already
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # else starting the loader draws from the global RNG
        )
        for gathered in loader:
            rows, flips = gathered.pop("rows"), gathered.pop("flips")
            gathered = {
                name: tensor.to(self.device, non_blocking=True) for name, tensor in gathered.items()
            }
            yield self._batch(gathered, rows.to(self.device), flips.to(self.device))

    def _batch(
        self, gathered: dict[str, torch.Tensor], rows: torch.Tensor, flips: torch.Tensor
    ) -> Batch:
        images = to_model_input(gathered.pop("images"), flips, self.memory_format)
        return Batch(images=images, rows=rows, features=gathered)
