"""How training steps compute: precision and memory layout on the device, and this process's rank."""

from __future__ import annotations

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from face_generation.runtime.device import autocast_for
from face_generation.runtime.family import StepContext


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the initialised process group (torchrun); (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def step_context(device: torch.device, train_cfg: DictConfig) -> StepContext:
    """`train.precision` (auto: bf16 autocast on CUDA, float32 on the CPU); channels_last and
    TF32 on CUDA."""
    autocast = autocast_for(device, str(train_cfg.precision))
    memory_format = torch.contiguous_format
    if device.type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"  # type: ignore[attr-defined]
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        memory_format = torch.channels_last
    grad_clip = float(train_cfg.grad_clip) if train_cfg.grad_clip else None
    rank, world_size = rank_and_world_size()
    return StepContext(device, autocast, grad_clip, memory_format, rank, world_size)


def reduce_mean(values: dict[str, torch.Tensor], context: StepContext) -> dict[str, torch.Tensor]:
    """Average each metric over the ranks (one collective for all of them); as is on one rank."""
    if context.world_size == 1 or not values:
        return values
    names = sorted(values)
    stacked = torch.stack([values[name].float() for name in names])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return dict(zip(names, stacked / context.world_size, strict=True))
