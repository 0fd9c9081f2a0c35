"""Benchmark: our diffusion family against denoising-diffusion-pytorch, side by side in one run.

    .venv/bin/python benchmarks/diffusion.py [--batch-size B] [--steps S] [--repeats R] [--device D]
                                             [--no-sampling] [--ours OVERRIDE ...]
                                             [--precision auto|bf16|fp32]

At 64x64 and the same batch, on the same faces (scikit-image's 100 embedded LFW faces,
upsampled to 64x64 and repeated to fill a batch):
  peer  denoising-diffusion-pytorch's Unet(dim=64, dim_mults=(1, 2, 4, 8)) in its
        GaussianDiffusion (linear schedule, noise prediction: the same task as ours), Adam;
  ours  the diffusion family (face_generation/families/diffusion.py) with a UNet of matched
        size (MATCHED below: parameters and forward FLOPs per image within 10% of the peer's),
        through its own train_step and the loop's step set-up (training/device.py).
Measured for each: training images/s (a full step: noising, forward, backward, Adam) and
DDIM-50 sampling images/s (eta 0, EMA-free weights, eval mode). The two contenders run
interleaved, in alternating order, --repeats times; the table gives the median with the
range, and each speed-up is the median of the per-repeat ratios (ours/peer for images/s,
peer/ours for CPU seconds per image). CPU seconds per image
(this process's, all threads) are recorded too: on a machine other jobs share they move less
than wall time. Parameters and FLOPs are counted with torch's FlopCounterMode (attention
through its maths kernel, so that it is counted: a multiply-add is 2 FLOPs).
--no-sampling times training only (DDIM-50 is most of a repeat's time); --ours adds config
overrides to our side (an architecture choice against the same peer, e.g.
model.attention_resolutions=[8]); --precision sets both sides' training and sampling (bf16
autocast on CUDA by default, fp32 on the CPU; bf16 on a CPU with AMX). Torch's threads are
OMP_NUM_THREADS's, the same for both.
Prints a table and writes benchmarks/results/diffusion.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # the peer's samplers draw progress bars

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import machine  # noqa: E402
from face_generation.config import compose  # noqa: E402
from face_generation.families.diffusion import DiffusionFamily  # noqa: E402
from face_generation.runtime.device import PRECISIONS, computes_in_bf16  # noqa: E402
from face_generation.runtime.family import Batch, StepContext  # noqa: E402
from face_generation.training.device import step_context  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "diffusion.json"
RESOLUTION = 64
SAMPLING_STEPS = 50  # DDIM-50
PEER = {"dim": 64, "dim_mults": (1, 2, 4, 8)}
# Ours at the peer's size: its channel multipliers, 2 residual blocks per level but the
# smallest (the peer puts 2 per level, some of them narrower): 36.1M parameters, 15.2 GFLOPs.
MATCHED = [
    "model.channels=64",
    "model.channel_mults=[1,2,4,8]",
    "model.num_res_blocks=[2,2,2,1]",
    "model.attention_resolutions=[16,8]",
    "model.head_channels=32",  # the peer's 4 heads of 32 at 128 channels
    "model.groups=32",
    "model.dropout=0.0",
    "model.optimizer.lr=0.0001",
]


def faces(batch_size: int, device: torch.device) -> torch.Tensor:
    """A batch of real faces in [-1, 1], B x 3 x 64 x 64."""
    from skimage.data import lfw_subset

    grey = torch.from_numpy(lfw_subset()).float()[:, None]  # 100 x 1 x 25 x 25 in [0, 1]
    rgb = F.interpolate(grey, size=RESOLUTION, mode="bilinear", antialias=True).repeat(1, 3, 1, 1)
    return (rgb[torch.arange(batch_size) % len(rgb)] * 2 - 1).to(device)


def size(network: nn.Module, forward: Callable[[torch.Tensor], Any], device: torch.device) -> dict:
    """Parameters, and forward FLOPs per image (counted on a batch of 2)."""
    x = torch.zeros(2, 3, RESOLUTION, RESOLUTION, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        forward(x)
    return {
        "parameters": sum(p.numel() for p in network.parameters()),
        "gflops_per_image": counter.get_total_flops() / 2 / 1e9,
    }


class Peer:
    def __init__(self, device: torch.device) -> None:
        from denoising_diffusion_pytorch import GaussianDiffusion, Unet

        torch.manual_seed(0)
        self.network = Unet(**PEER)
        self.diffusion = GaussianDiffusion(
            self.network,
            image_size=RESOLUTION,
            timesteps=1000,
            sampling_timesteps=SAMPLING_STEPS,  # fewer than timesteps: its DDIM sampler
            objective="pred_noise",
            beta_schedule="linear",
            ddim_sampling_eta=0.0,
        ).to(device)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=1e-4)

    def size(self, device: torch.device) -> dict:
        t = torch.zeros(2, dtype=torch.long, device=device)
        return size(self.network, lambda x: self.network(x, t), device)

    def train_step(self, images: torch.Tensor, context: StepContext) -> None:
        with context.autocast():
            loss = self.diffusion((images + 1) / 2)  # it takes [0, 1] and normalises itself
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def sample(self, n: int) -> torch.Tensor:
        return self.diffusion.sample(batch_size=n)


class Ours:
    def __init__(
        self, device: torch.device, context: StepContext, overrides: list[str] | None = None
    ) -> None:
        cfg = compose("config", ["model=diffusion", *MATCHED, *(overrides or [])])
        torch.manual_seed(0)
        self.family = DiffusionFamily(cfg.model, RESOLUTION, context)
        self.network = self.family.model

    def size(self, device: torch.device) -> dict:
        t = torch.zeros(2, dtype=torch.long, device=device)
        return size(self.network, lambda x: self.network(x, t), device)

    def conditions(self, n: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Condition rows for n images (random: the cost does not depend on their values)."""
        array, width = self.family.condition_array, self.network.cond_dim
        if array is None or width is None:
            return {}
        rows = torch.randn(n, width, generator=torch.Generator().manual_seed(0))
        return {array: rows.to(device)}

    def train_step(self, images: torch.Tensor, context: StepContext) -> None:
        rows = torch.arange(len(images))
        features = self.conditions(len(images), images.device)
        self.family.train_step(Batch(images=images, rows=rows, features=features), 0)

    def sample(self, n: int) -> torch.Tensor:
        device = next(self.network.parameters()).device
        cond = self.conditions(n, device).get(str(self.family.condition_array))
        return DiffusionFamily.sample(
            self.network, n, cond=cond, steps=SAMPLING_STEPS, sampler="ddim"
        )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], Any], device: torch.device, count: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of `count` calls of `run`."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        run()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(
    contender: Peer | Ours, images: torch.Tensor, context: StepContext, args: argparse.Namespace
) -> dict[str, float]:
    """Training and DDIM-50 sampling throughput of one contender, after untimed warm-ups."""
    network = contender.network
    network.train()
    step = lambda: contender.train_step(images, context)  # noqa: E731
    timed(step, context.device, args.warmup)
    wall, cpu = timed(step, context.device, args.steps)
    batch = len(images)
    result = {
        "train_images_per_sec": args.steps * batch / wall,
        "train_cpu_s_per_image": cpu / (args.steps * batch),
    }
    if args.no_sampling:
        return result
    network.eval()
    with torch.no_grad(), context.autocast():  # as TrainedGenerator samples in this precision
        wall, cpu = timed(lambda: contender.sample(batch), context.device, 1)
    result["sample_images_per_sec"] = batch / wall
    result["sample_cpu_s_per_image"] = cpu / batch
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed training steps (default 3 on CPU, 50 on CUDA)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default 1 on CPU, 10 on CUDA)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--no-sampling", action="store_true", help="time training only")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="both sides, training and sampling: auto (bf16 autocast on CUDA, fp32 on the CPU), "
        "bf16 (autocast; on the CPU fast where it has AMX) or fp32",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON report")
    parser.add_argument(
        "--ours", nargs="*", default=[], help="config overrides of our side (after MATCHED)"
    )
    args = parser.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    on_cuda = device.type == "cuda"
    load_at_start = os.getloadavg()
    args.steps = args.steps or (50 if on_cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if on_cuda else 1)
    train_cfg = compose("config", [f"train.precision={args.precision}"]).train
    context = step_context(device, train_cfg)  # the same autocast for both sides
    bf16 = computes_in_bf16(device, args.precision)
    images = faces(args.batch_size, device).contiguous(memory_format=context.memory_format)

    contenders: dict[str, Peer | Ours] = {
        "peer": Peer(device),
        "ours": Ours(device, context, args.ours),
    }
    sizes = {name: contender.size(device) for name, contender in contenders.items()}
    for name, measured in sizes.items():
        print(f"{name}: {measured['parameters'] / 1e6:.2f}M parameters, "
              f"{measured['gflops_per_image']:.2f} GFLOPs per image (forward)")  # fmt: skip

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    for repeat in range(args.repeats):
        order = ["peer", "ours"] if repeat % 2 == 0 else ["ours", "peer"]
        for name in order:
            runs[name].append(measure(contenders[name], images, context, args))
            runs[name][-1]["load_average_1min"] = os.getloadavg()[0]
            print(f"  repeat {repeat + 1} {name}: " + ", ".join(
                f"{key} {value:.3g}" for key, value in runs[name][-1].items()))  # fmt: skip

    def summary(name: str, key: str) -> dict[str, float]:
        values = [run[key] for run in runs[name]]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    def speedup(key: str) -> float:
        """Median over the repeats of ours/peer for images/s, peer/ours for CPU s/image."""
        pairs = zip(runs["ours"], runs["peer"], strict=True)
        if key.endswith("per_sec"):
            return statistics.median(ours[key] / peer[key] for ours, peer in pairs)
        return statistics.median(peer[key] / ours[key] for ours, peer in pairs)

    keys = ("train_images_per_sec", "sample_images_per_sec", "train_cpu_s_per_image",
            "sample_cpu_s_per_image")  # fmt: skip
    keys = tuple(key for key in keys if key in runs["ours"][0])
    results = {
        name: {**sizes[name], **{key: summary(name, key) for key in keys}, "runs": runs[name]}
        for name in contenders
    }
    speedups = {key: speedup(key) for key in keys}
    print()
    print(f"Diffusion at {RESOLUTION}x{RESOLUTION}, batch {args.batch_size}, {device}, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, {args.steps} timed training steps, "
          f"median of {args.repeats} (range)")  # fmt: skip
    headers = {"train_images_per_sec": "train img/s", "sample_images_per_sec": "DDIM-50 img/s",
               "train_cpu_s_per_image": "train CPU s/img",
               "sample_cpu_s_per_image": "DDIM-50 CPU s/img"}  # fmt: skip
    print("| | parameters | GFLOPs/img | " + " | ".join(headers[key] for key in keys) + " |")
    print("| --- | ---: | ---: |" + " ---: |" * len(keys))
    for name in contenders:
        row = results[name]
        cells = [
            f"{row[key]['median']:.3g} ({row[key]['min']:.3g}–{row[key]['max']:.3g})"
            for key in keys
        ]
        print(f"| {name} | {row['parameters'] / 1e6:.2f}M | {row['gflops_per_image']:.2f} | "
              + " | ".join(cells) + " |")  # fmt: skip
    print(f"| ours vs peer | ×{results['ours']['parameters'] / results['peer']['parameters']:.3f} "
          f"| ×{results['ours']['gflops_per_image'] / results['peer']['gflops_per_image']:.3f} | "
          + " | ".join(f"{speedups[key]:.2f}× faster" for key in keys) + " |")  # fmt: skip
    report = {
        "benchmark": "diffusion",
        "machine": machine(denoising_diffusion_pytorch=peer_version())
        | {"load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()},
        "device": str(device),
        "resolution": RESOLUTION,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "sampling_steps": SAMPLING_STEPS,
        "peer": {"unet": {**PEER, "dim_mults": list(PEER["dim_mults"])}},
        "ours": {"overrides": [*MATCHED, *args.ours]},
        "threads": torch.get_num_threads(),
        "precision": "bf16 autocast" if bf16 else "fp32",
        "results": results,
        "speedups_ours_vs_peer": speedups,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def peer_version() -> str:
    from importlib.metadata import version

    return version("denoising-diffusion-pytorch")


if __name__ == "__main__":
    main()
