"""Data-parallel training under torchrun: the process group, and what every rank must agree on.

`torchrun --nproc_per_node=N -m face_generation.train ...` (or `train.nproc=N`, which relaunches
the command under torchrun) starts N processes with RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address in their environment. `process_group` joins them (gloo on the CPU, NCCL on
CUDA, one GPU per local rank) with `train.dist_timeout_s` on every collective, so a rank that
dies or hangs ends the others with an error instead of a wait forever. Gradients are averaged
where every family's step updates its networks (`families/optimization.optimizer_step`); the
loop asks `stop_requested` each step so a signal stops every rank after the same step.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

# The environment torchrun gives each process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SIGNALS = ("SIGINT", "SIGTERM")  # the loop's SignalStop names, as codes a collective carries


class RanksDiverged(RuntimeError):
    """The ranks' weights differ: their steps were not the same (gradients not averaged)."""


class ProcessLost(RuntimeError):
    """A collective failed: another training process died or stopped answering in time."""


def collective_failure(error: BaseException) -> bool:
    """Whether `error` is a collective's failure (gloo raises plain RuntimeErrors)."""
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and any(name in str(error) for name in ("gloo", "NCCL"))
    )


def under_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """This machine's `python -m face_generation.train ARGS` as `torchrun` with `nproc`
    processes (a single-machine rendezvous; several machines: call torchrun yourself)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "face_generation.train",
        *argv,
    ]


def rank_device(device: torch.device) -> torch.device:
    """This rank's GPU under torchrun (cuda:LOCAL_RANK); the device as it is otherwise."""
    if device.type == "cuda" and device.index is None and under_torchrun():
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


@contextmanager
def process_group(device: torch.device, timeout_s: float) -> Iterator[None]:
    """Join torchrun's process group for the block (nothing without torchrun); every rank
    waits for the others at the end, so none leaves while rank 0 still writes."""
    if not under_torchrun() or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        timeout=timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield
        dist.barrier()
    except Exception as error:
        if not collective_failure(error):
            raise
        raise ProcessLost(
            "another training process died or did not answer within "
            f"train.dist_timeout_s={timeout_s:g} s (torchrun ends the job): "
            f"{str(error).splitlines()[0]}"
        ) from error
    finally:
        dist.destroy_process_group()


def stop_requested(received: str | None, world_size: int) -> str | None:
    """The signal any rank received (each rank's own when alone), so that every rank stops
    after the same step: one small all-reduce per step under torchrun."""
    if world_size == 1:
        return received
    code = torch.tensor([SIGNALS.index(received) + 1 if received else 0])
    if dist.get_backend() == "nccl":
        code = code.cuda()
    dist.all_reduce(code, op=dist.ReduceOp.MAX)
    return SIGNALS[int(code.item()) - 1] if int(code.item()) else None


def check_same_weights(networks: Mapping[str, nn.Module], world_size: int) -> None:
    """Raise RanksDiverged unless every rank holds the same weights (a digest of each
    network's parameters, gathered from all ranks): what averaged gradients guarantee."""
    if world_size == 1:
        return
    digests = {}
    for name, network in sorted(networks.items()):
        digest = hashlib.sha256()
        for parameter in network.parameters():
            digest.update(parameter.detach().float().cpu().numpy().tobytes())
        digests[name] = digest.hexdigest()
    gathered: list[dict[str, str] | None] = [None] * world_size
    dist.all_gather_object(gathered, digests)
    differing = sorted(
        name for name in digests if len({str(ranks[name]) for ranks in gathered if ranks}) > 1
    )
    if differing:
        raise RanksDiverged(
            f"the ranks' weights of {', '.join(differing)} differ: their gradients were not "
            "averaged (a network updated outside families/optimization.optimizer_step?)"
        )
