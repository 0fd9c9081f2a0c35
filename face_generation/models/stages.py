"""Channel plans shared by the convolutional families: one stride-2 stage per halving."""

from __future__ import annotations

import math


def is_supported_resolution(resolution: int) -> bool:
    """A power of two of at least 8: the networks halve it, stage by stage, down to 4×4."""
    return resolution >= 8 and resolution & (resolution - 1) == 0


def stage_channels(resolution: int, base_channels: int, max_channels: int) -> list[int]:
    """Channels after each halving of `resolution` down to 4×4: base, 2·base, ... (capped)."""
    if not is_supported_resolution(resolution):
        raise ValueError(
            f"data.resolution must be a power of two of at least 8 for these networks; got {resolution}"
        )
    stages = int(math.log2(resolution)) - 2
    return [min(base_channels * 2**i, max_channels) for i in range(stages)]
