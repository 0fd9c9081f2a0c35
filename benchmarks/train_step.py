"""Benchmark: images/s of a full training step (data + forward + backward + update) for the
VAE and DCGAN, our loop's data path against the textbook one, in the same run.

    .venv/bin/python benchmarks/train_step.py [--images N] [--steps S] [--repeats R] [--workers W]

On the first N images of ../shared/data/celeba-sample-10k (skipped with a message when absent):
  textbook  torchvision ImageFolder decoding each JPEG every step (CenterCrop 89, Resize 64,
            RandomHorizontalFlip, ToTensor, Normalize), DataLoader with W worker processes,
            shuffle; float32, contiguous tensors, no compile;
  ours      the same images packed once (PIL, centre crop 89x89 -> 64x64) into an in-memory
            uint8 array, batches from training/data.py:PackedBatches (on CUDA: the array lives
            on the GPU, batches are gathered, flipped and normalised there) and the step set-up
            of training/device.py (on CUDA: bf16 autocast, channels_last, TF32; --compile adds
            torch.compile). On the CPU both run float32: the difference is the data path.
Both run the same networks (configs/model/*.yaml at 64x64) through the same
family's train_step (face_generation/families/). Each measurement runs --warmup untimed steps, then --steps timed
ones. Other processes may compete for the cores, so textbook and ours run interleaved, in
alternating order, --repeats times; the table gives the median (with the range), and the
ratio is the median of the per-repeat ratios ours/textbook.
Prints a table and writes benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision import transforms as T

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from face_generation.config import compose  # noqa: E402
from face_generation.runtime.device import computes_in_bf16  # noqa: E402
from face_generation.runtime.family import Batch, StepContext  # noqa: E402
from face_generation.runtime.registry import family_for  # noqa: E402
from face_generation.training.data import PackedBatches  # noqa: E402
from face_generation.training.device import step_context  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "celeba-sample-10k"
RESULTS = REPO / "benchmarks" / "results" / "train_step.json"
RESOLUTION = 64
CROP = 89  # the face square of CelebA's 89x109 half-size aligned images


def face_transform() -> T.Compose:
    return T.Compose([T.CenterCrop(CROP), T.Resize(RESOLUTION)])


def pack_images(folder: datasets.ImageFolder, count: int) -> np.ndarray:
    """The first `count` images of the folder, decoded once: uint8 N x 64 x 64 x 3."""
    crop = face_transform()
    faces = []
    for path, _ in folder.samples[:count]:
        with Image.open(path) as image:
            faces.append(np.asarray(crop(image.convert("RGB"))))
    return np.stack(faces)


def textbook_batches(
    folder_root: Path, count: int, batch_size: int, workers: int, device: torch.device
) -> Generator[Batch, None, None]:
    transform = T.Compose(
        [
            face_transform(),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    dataset = Subset(datasets.ImageFolder(str(folder_root), transform=transform), range(count))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    while True:  # epochs, for as long as the measurement asks
        for images, labels in loader:
            yield Batch(images=images.to(device, non_blocking=True), rows=labels)


def backend_settings() -> tuple[str, str, bool]:
    """The global float32/cuDNN switches that training/device.py changes on CUDA."""
    return (
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,  # type: ignore[attr-defined]
        torch.backends.cudnn.benchmark,
    )


def restore_backend_settings(settings: tuple[str, str, bool]) -> None:
    matmul, conv, benchmark = settings
    torch.backends.cuda.matmul.fp32_precision = matmul
    torch.backends.cudnn.conv.fp32_precision = conv  # type: ignore[attr-defined]
    torch.backends.cudnn.benchmark = benchmark


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model: str,
    batches: Iterator[Batch],
    context: StepContext,
    compile_networks: bool,
    batch_size: int,
    warmup: int,
    steps: int,
) -> float:
    """Images per second over `steps` full training steps, after `warmup` untimed ones."""
    torch.manual_seed(0)
    cfg = compose("config", [f"model={model}", f"data.resolution={RESOLUTION}"])
    family = family_for(cfg)(cfg.model, RESOLUTION, context)
    if compile_networks:
        for network in family.networks.values():
            network.compile()
    for step in range(warmup):
        family.train_step(next(batches), step)
    synchronize(context.device)
    started = time.perf_counter()
    for step in range(warmup, warmup + steps):
        family.train_step(next(batches), step)
    synchronize(context.device)
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2048, help="images used (default 2048)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps (default 20 on CPU, 200 on CUDA)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default 3 on CPU, 30 on CUDA)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="textbook DataLoader workers",
    )
    parser.add_argument("--models", nargs="+", default=["vae", "dcgan"])
    parser.add_argument("--compile", action="store_true", help="ours: torch.compile the networks")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = parser.parse_args()

    folder_root = SAMPLE
    if not (folder_root / "img_align_celeba").is_dir():
        print(
            f"skipped: the CelebA sample is not at {folder_root} (../shared/data beside the repo)"
        )
        return
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if args.device == "auto"
        else torch.device(args.device)
    )
    on_cuda = device.type == "cuda"
    steps = args.steps or (200 if on_cuda else 20)
    warmup = args.warmup if args.warmup is not None else (30 if on_cuda else 3)
    train_cfg = compose("config").train
    defaults = backend_settings()  # PyTorch's own, for the textbook loop
    ours_context = step_context(device, train_cfg)  # sets TF32 and cudnn.benchmark on CUDA
    ours_settings = backend_settings()
    textbook_context = StepContext(device, contextlib.nullcontext, None, torch.contiguous_format)

    started = time.perf_counter()
    packed = pack_images(datasets.ImageFolder(str(folder_root)), args.images)
    pack_seconds = time.perf_counter() - started
    print(f"packed {len(packed)} images in {pack_seconds:.1f} s (not timed below); device {device}")

    def run(loop: str, model: str) -> float:
        restore_backend_settings(defaults if loop == "textbook" else ours_settings)
        if loop == "textbook":
            textbook = textbook_batches(
                folder_root, args.images, args.batch_size, args.workers, device
            )
            with contextlib.closing(textbook):  # closing stops the loader's worker processes
                return measure(
                    model, textbook, textbook_context, False, args.batch_size, warmup, steps
                )
        source = PackedBatches(
            {"images": packed}, args.batch_size, seed=0, hflip=True, device=device,
            on_device=on_cuda, memory_format=ours_context.memory_format,
        )  # fmt: skip
        return measure(
            model,
            source.iterate(0, warmup + steps),
            ours_context,
            args.compile,
            args.batch_size,
            warmup,
            steps,
        )

    results = []
    for model in args.models:
        samples: dict[str, list[float]] = {"textbook": [], "ours": []}
        for repeat in range(args.repeats):
            order = ["textbook", "ours"] if repeat % 2 == 0 else ["ours", "textbook"]
            for loop in order:
                samples[loop].append(run(loop, model))
                print(f"  {model} {loop:8s} repeat {repeat + 1}: {samples[loop][-1]:8.1f} img/s")
        ratios = [
            ours / textbook
            for ours, textbook in zip(samples["ours"], samples["textbook"], strict=True)
        ]
        results.append(
            {
                "model": model,
                "textbook_images_per_sec": statistics.median(samples["textbook"]),
                "ours_images_per_sec": statistics.median(samples["ours"]),
                "textbook_samples": samples["textbook"],
                "ours_samples": samples["ours"],
                "ratio": statistics.median(ratios),
            }
        )

    print()
    print(f"Training step at {RESOLUTION}x{RESOLUTION}, batch {args.batch_size}, {device}, {steps} timed steps, "
          f"median of {args.repeats} (range)")  # fmt: skip
    print("| model | textbook img/s | ours img/s | ours / textbook |")
    print("| --- | ---: | ---: | ---: |")
    for row in results:
        textbook, ours = row["textbook_samples"], row["ours_samples"]
        print(
            f"| {row['model']} | {row['textbook_images_per_sec']:.0f} ({min(textbook):.0f}–{max(textbook):.0f}) "
            f"| {row['ours_images_per_sec']:.0f} ({min(ours):.0f}–{max(ours):.0f}) | {row['ratio']:.2f}× |"
        )
    report = {
        "benchmark": "train_step",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if on_cuda
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "resolution": RESOLUTION,
        "batch_size": args.batch_size,
        "images": len(packed),
        "steps": steps,
        "warmup": warmup,
        "repeats": args.repeats,
        "textbook_workers": args.workers,
        "ours": {
            "precision": "bf16 autocast"
            if computes_in_bf16(device, str(train_cfg.precision))
            else "fp32",
            "channels_last": on_cuda,
            "compile": args.compile,
            "data": "uint8 array on the GPU" if on_cuda else "uint8 array in memory",
        },
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
