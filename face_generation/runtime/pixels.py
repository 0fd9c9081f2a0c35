"""The one image convention of the feature networks and metrics, and conversions into it.

Images reach the metrics in two forms, and nothing is guessed from the pixel values:
  * uint8 (numpy or torch), N x H x W x 3 RGB, 0..255: the packed arrays' layout;
  * float (numpy or torch), N x 3 x H x W RGB, with an explicit `value_range`, (0, 1) or
    (-1, 1) (a generator's tanh output), mapped linearly onto the network's range.
`value_range` describes float input only: uint8 input is always (0, 255) and ignores it, so
one call can compare float reconstructions with uint8 originals. Float input without a
`value_range` is an error, because a batch of dark [-1, 1] images looks like one of [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

ImageBatch = np.ndarray | torch.Tensor
ValueRange = tuple[float, float] | Sequence[float] | None

UINT8_RANGE = (0.0, 255.0)


def check_layout(images: ImageBatch) -> None:
    """Raise a clear error unless `images` is uint8 NHWC RGB or float NCHW RGB."""
    if images.ndim != 4:
        raise ValueError(
            f"expected a batch of images (4 dimensions), got shape {tuple(images.shape)}"
        )
    if is_uint8(images):
        if images.shape[-1] != 3:
            raise ValueError(
                f"uint8 images must be N x H x W x 3 RGB (the packed layout); got {tuple(images.shape)}"
            )
    elif images.shape[1] != 3:
        raise ValueError(
            f"float images must be N x 3 x H x W RGB with a value_range; got {tuple(images.shape)}"
        )


def is_uint8(images: ImageBatch) -> bool:
    return images.dtype in (np.uint8, torch.uint8)


def resolve_range(images: ImageBatch, value_range: ValueRange) -> tuple[float, float]:
    """The (low, high) that the pixel values of `images` span, from dtype or `value_range`."""
    if is_uint8(images):
        return UINT8_RANGE  # value_range describes float images only
    if value_range is None:
        raise ValueError(
            "float images need an explicit value_range: (0, 1) or (-1, 1) "
            "(uint8 N x H x W x 3 images need none)"
        )
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    return low, high


def to_float_nchw(
    images: ImageBatch,
    value_range: ValueRange,
    target_range: tuple[float, float] = (-1.0, 1.0),
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """N x 3 x H x W `dtype` on `device`, with pixel values mapped onto `target_range`."""
    check_layout(images)
    low, high = resolve_range(images, value_range)
    if isinstance(images, np.ndarray):
        # A read-only (memory-mapped) slice is copied: torch tensors must be writable.
        array = images if images.flags.writeable else np.array(images)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        tensor = images
    tensor = tensor.to(device) if device is not None else tensor
    if is_uint8(images):
        tensor = tensor.permute(0, 3, 1, 2)
    target_low, target_high = target_range
    scale = (target_high - target_low) / (high - low)
    return (tensor.to(dtype) - low) * scale + target_low


def to_uint8_nhwc(images: ImageBatch, value_range: ValueRange) -> np.ndarray:
    """uint8 N x H x W x 3 RGB numpy array (float input is clipped and rounded)."""
    check_layout(images)
    if is_uint8(images):
        return np.ascontiguousarray(
            images.cpu().numpy() if isinstance(images, torch.Tensor) else images
        )
    unit = to_float_nchw(images, value_range, (0.0, 255.0), device="cpu")
    return unit.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def resize(images: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """Bilinear resize of N x C x H x W to size x size; with `antialias`, shrinking averages every source pixel."""
    if images.shape[-2:] == (size, size):
        return images
    return nn.functional.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias
    )


def batches(images: ImageBatch, batch_size: int) -> Iterator[ImageBatch]:
    """Consecutive slices of at most `batch_size` images (a memory-mapped array stays lazy)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]
