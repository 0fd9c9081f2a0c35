"""Training batches from row-aligned packed arrays: the uint8 faces plus any feature arrays.

No image is decoded during training. On CUDA every array placed on the device is uploaded
once and each batch is gathered, flipped and normalised there; on the CPU batches are gathered
from the (memory-mapped) arrays, in background workers when `train.num_workers` > 0.

The order is a pure function of (seed, step): global batch k holds positions k·B … k·B+B-1 of
an endless sequence of per-epoch permutations, and its flips come from a generator seeded with
(seed, k). Rank r of W data-parallel processes takes the r-th contiguous B/W slice of that
global batch, so the ranks together see exactly what one process would, and a resumed run sees
exactly the batches an uninterrupted one would. A flipped row is flipped in every array by
that array's policy (runtime/family.py's RowInput).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from face_generation.runtime.family import IMAGES, Batch, RowInput

PERMUTATION_STREAM = 0  # seed-sequence tags keep permutations and flips independent
FLIP_STREAM = 1


@lru_cache(maxsize=4)
def epoch_permutation(count: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, PERMUTATION_STREAM, epoch]).permutation(count)


def batch_rows(count: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Row indices of global batch `step`: a slice of the endless chain of epoch permutations."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = np.divmod(positions, count)
    rows = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        chosen = epochs == epoch
        rows[chosen] = epoch_permutation(count, seed, int(epoch))[offsets[chosen]]
    return rows


def batch_flips(batch_size: int, seed: int, step: int, hflip: bool) -> np.ndarray:
    """Which rows of global batch `step` are mirrored left-right (faces are roughly symmetric)."""
    if not hflip:
        return np.zeros(batch_size, dtype=bool)
    return np.random.default_rng([seed, FLIP_STREAM, step]).random(batch_size) < 0.5


def rank_slice(batch_size: int, rank: int, world_size: int) -> slice:
    """This rank's share of a global batch: the rank-th of world_size equal contiguous parts."""
    if batch_size % world_size:
        raise ValueError(
            f"train.batch_size={batch_size} must be divisible by the {world_size} processes"
        )
    share = batch_size // world_size
    return slice(rank * share, (rank + 1) * share)


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


def flip_rows(values: torch.Tensor, flips: torch.Tensor, policy: str) -> torch.Tensor:
    """Mirror the flipped rows of a feature array: "map" along the width of N×C×H×W, "image"
    along the width of N×H×W×C, "none" not at all."""
    if policy == "none":
        return values
    width_axis = {"map": -1, "image": 2}[policy]
    chosen = flips.to(values.device).view(-1, *([1] * (values.ndim - 1)))
    return torch.where(chosen, values.flip(width_axis), values)


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
    """Item k is the rows of this rank's part of batch `start_step + k` (for a CPU DataLoader)."""

    def __init__(self, source: PackedBatches, start_step: int, steps: int) -> None:
        self.source, self.start_step, self.steps = source, start_step, steps

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rows, flips = self.source.rows_and_flips(self.start_step + index)
        gathered = {
            name: torch.from_numpy(array[rows]) for name, array in self.source.arrays.items()
        }
        gathered["rows"], gathered["flips"] = torch.from_numpy(rows), torch.from_numpy(flips)
        return gathered


class PackedBatches:
    """Endless training batches from row-aligned arrays: "images" plus the family's inputs.

    `on_device`: upload every array placed on the device once and gather there (the CUDA
    path); otherwise gather on the CPU through a DataLoader with `num_workers` processes.
    `batch_size` is the global batch; each of `world_size` ranks gets its share.
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
        inputs: Sequence[RowInput] = (IMAGES,),
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        counts = {name: len(array) for name, array in arrays.items()}
        if "images" not in arrays or len(set(counts.values())) != 1:
            raise ValueError(
                f"packed arrays must include 'images' and be row-aligned; got {counts}"
            )
        self.inputs = {row_input.name: row_input for row_input in inputs}
        missing = set(arrays) - set(self.inputs) - {"images"}
        if missing:
            raise ValueError(f"arrays {sorted(missing)} have no RowInput saying how to use them")
        self.arrays = arrays
        self.count = counts["images"]
        self.batch_size, self.seed, self.hflip = batch_size, seed, hflip
        self.share = rank_slice(batch_size, rank, world_size)
        self.device, self.on_device, self.num_workers = device, on_device, num_workers
        self.memory_format = memory_format
        self.resident: dict[str, torch.Tensor] = {}
        if on_device:
            self.resident = {
                name: upload(array, device) if self._on_device(name) else torch.from_numpy(array)
                for name, array in arrays.items()
            }

    def rows_and_flips(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's rows of global batch `step`, and which of them are mirrored."""
        rows = batch_rows(self.count, self.batch_size, self.seed, step)
        flips = batch_flips(self.batch_size, self.seed, step, self.hflip)
        return rows[self.share], flips[self.share]

    def iterate(self, start_step: int, steps: int) -> Iterator[Batch]:
        """Batches `start_step` … `steps - 1`."""
        if self.on_device:
            for step in range(start_step, steps):
                rows_np, flips_np = self.rows_and_flips(step)
                rows = torch.from_numpy(rows_np).to(self.device, non_blocking=True)
                flips = torch.from_numpy(flips_np).to(self.device, non_blocking=True)
                gathered = {
                    name: tensor[rows if tensor.device == rows.device else rows.cpu()]
                    for name, tensor in self.resident.items()
                }
                yield self._batch(gathered, rows, flips)
            return
        loader = DataLoader(
            _GatheredBatches(self, start_step, steps),
            batch_size=None,  # items are whole batches already
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # else starting the loader draws from the global RNG
        )
        for gathered in loader:
            rows, flips = gathered.pop("rows"), gathered.pop("flips")
            gathered = {
                name: tensor.to(self.device, non_blocking=True) if self._on_device(name) else tensor
                for name, tensor in gathered.items()
            }
            yield self._batch(gathered, rows.to(self.device), flips.to(self.device))

    def _on_device(self, name: str) -> bool:
        return name == "images" or self.inputs[name].placement == "device"

    def _batch(
        self, gathered: dict[str, torch.Tensor], rows: torch.Tensor, flips: torch.Tensor
    ) -> Batch:
        images = to_model_input(gathered.pop("images"), flips, self.memory_format)
        features = {
            name: flip_rows(values, flips, self.inputs[name].flip)
            for name, values in gathered.items()
        }
        return Batch(images=images, rows=rows, features=features)
