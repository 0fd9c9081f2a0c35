"""Benchmark: seconds to score N generated against N real 64 x 64 faces, against torchmetrics.

    .venv/bin/python benchmarks/evaluate.py [--n N] [--repeats R] [--devices cpu cuda] [--batch-size B]

Images: the first N of ../shared/data/celeba-sample-10k (skipped with a message when absent),
cropped and resized as the crop (center) and pack stages do, untimed: "real". "Generated":
the same faces in a shuffled order with Gaussian pixel noise (sigma 0.1 of the range), so the
distances are small but not zero. Both are uint8 N x 64 x 64 x 3 arrays, as packed data is.

Timed, on every device asked for (CUDA only when present), with the same EfficientNet-Lite0
module, input conversion and batch size:
  torchmetrics  FrechetInceptionDistance(feature=<our EfficientNetLite0 module>): update() with
                every real batch, then every generated batch, then compute(): the standard
                tool driven with the same feature network;
  ours (cold)   real features through the cache of real statistics (a miss: embedded and
                written), generated features, Fréchet distance: the first evaluation of a
                dataset (what face_generation/evaluation/evaluate_model.py does);
  ours (warm)   the same with the cache filled: only the generated images are embedded, as
                in every later evaluation of the same packed data.
Other processes may compete for the cores, so the three run interleaved, in alternating order,
--repeats times; the table gives the median (and the range), and each speed-up is the median
of the per-repeat ratios torchmetrics / ours. KID (100 subsets of min(1000, N)) and
precision/recall (k=3) on the same features are timed apart, once: torchmetrics' FID has no
counterpart for them. Prints a table and writes benchmarks/results/evaluate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torchmetrics
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import machine  # noqa: E402
from face_generation.config import compose  # noqa: E402
from face_generation.data import crop, images, pack  # noqa: E402
from face_generation.evaluation.frechet import (  # noqa: E402
    feature_statistics,
    frechet_distance_between,
)
from face_generation.evaluation.kid import kid  # noqa: E402
from face_generation.evaluation.precision_recall import precision_recall  # noqa: E402
from face_generation.evaluation.real_stats import real_features  # noqa: E402
from face_generation.networks.effnet import EfficientNetLite0, load_effnet  # noqa: E402
from face_generation.networks.network import embed_images  # noqa: E402
from face_generation.runtime.pixels import batches, to_float_nchw  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "celeba-sample-10k"
RESULTS = REPO / "benchmarks" / "results" / "evaluate.json"
NOISE_SIGMA = 0.1  # of the pixel range, on the "generated" copies


def packed_faces(count: int, resolution: int) -> np.ndarray:
    """The first `count` sample faces, cropped and resized as crop (center) + pack do."""
    paths = sorted((SAMPLE / "img_align_celeba").iterdir())[:count]
    faces = []
    for start in range(0, len(paths), 1000):
        crops = []
        for path in paths[start : start + 1000]:
            pixels = images.decode_rgb(images.read_bytes(str(path)))
            left, top, right, bottom = crop.center_box(pixels.shape[1], pixels.shape[0], 1.0, 0.0)
            crops.append(pixels[top:bottom, left:right])
        stacked = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
        faces.append(pack.resize_batch(stacked, resolution, antialias=True))
    return np.concatenate(faces)


def generated_from(real: np.ndarray, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    shuffled = real[generator.permutation(len(real))].astype(np.float32)
    noisy = shuffled + generator.normal(0, NOISE_SIGMA * 255, shuffled.shape)
    return np.clip(noisy.round(), 0, 255).astype(np.uint8)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PooledFeatures(nn.Module):
    """What torchmetrics' FID calls on each batch: [-1, 1] images -> the N x D embedding tensor."""

    def __init__(self, network: EfficientNetLite0) -> None:
        super().__init__()
        self.network = network
        self.num_features = network.num_features  # torchmetrics reads it

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.forward(self.network.preprocess(images, (-1.0, 1.0))).embedding


def run_torchmetrics(
    network: EfficientNetLite0,
    real: np.ndarray,
    fake: np.ndarray,
    batch_size: int,
    device: torch.device,
) -> tuple[float, float]:
    metric = FrechetInceptionDistance(feature=PooledFeatures(network)).to(device)
    started = time.perf_counter()
    for is_real, faces in ((True, real), (False, fake)):
        for batch in batches(faces, batch_size):
            metric.update(to_float_nchw(batch, None, device=device), real=is_real)
    value = float(metric.compute())
    sync(device)
    return time.perf_counter() - started, value


def run_ours(
    network: EfficientNetLite0,
    real: np.ndarray,
    fake: np.ndarray,
    batch_size: int,
    device: torch.device,
    cache_dir: Path,
) -> dict:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    reference = real_features(
        cache_dir,
        network.cache_key,
        "benchmark",
        "test",
        len(real),
        lambda: embed_images(network, real, batch_size=batch_size, device=device),
    )
    timings["real_features"] = time.perf_counter() - started
    mark = time.perf_counter()
    generated = embed_images(network, fake, batch_size=batch_size, device=device)
    sync(device)
    timings["generated_features"] = time.perf_counter() - mark
    mark = time.perf_counter()
    distance = frechet_distance_between(reference.statistics, feature_statistics(generated))
    timings["frechet"] = time.perf_counter() - mark
    timings["total_fd"] = time.perf_counter() - started
    return {
        "seconds": timings,
        "fd": distance,
        "from_cache": reference.from_cache,
        "features": (reference.features, generated),
    }


def time_kid_pr(real: np.ndarray, fake: np.ndarray, device: torch.device) -> dict:
    started = time.perf_counter()
    kernel = kid(real, fake, subsets=100, subset_size=1000)
    kid_seconds = time.perf_counter() - started
    started = time.perf_counter()
    pr = precision_recall(real, fake, k=3, device=device)
    sync(device)
    return {
        "kid_seconds": kid_seconds,
        "kid": kernel.mean,
        "kid_std": kernel.std,
        "kid_subset_size": kernel.subset_size,
        "precision_recall_seconds": time.perf_counter() - started,
        "precision": pr.precision,
        "recall": pr.recall,
    }


def measure_repeat(
    network: EfficientNetLite0,
    real: np.ndarray,
    fake: np.ndarray,
    batch_size: int,
    device: torch.device,
    repeat: int,
) -> dict:
    """torchmetrics, ours cold and ours warm once each; torchmetrics first on even repeats,
    last on odd ones, so that a slow spell on a shared machine does not favour one side."""
    row: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as cache:

        def torchmetrics() -> None:
            row["torchmetrics_seconds"], row["torchmetrics_fd"] = run_torchmetrics(
                network, real, fake, batch_size, device
            )

        def ours() -> None:
            cold = run_ours(network, real, fake, batch_size, device, Path(cache))
            warm = run_ours(network, real, fake, batch_size, device, Path(cache))
            assert not cold["from_cache"] and warm["from_cache"]
            row.update(cold=cold["seconds"], warm=warm["seconds"], ours_fd=cold["fd"])
            row["features"] = cold["features"]

        for step in (torchmetrics, ours) if repeat % 2 == 0 else (ours, torchmetrics):
            step()
    return row


def summary(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "all": values,
    }


def spread(seconds: dict) -> str:
    return f"{seconds['median']:.1f} ({seconds['min']:.1f}-{seconds['max']:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000, help="real and generated images each")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved measurements of each (median)"
    )
    parser.add_argument(
        "--devices", nargs="+", default=None, help="default: cpu, and cuda when present"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: all)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not SAMPLE.is_dir():
        print(f"skipped: {SAMPLE} is absent (the CelebA sample this benchmark reads)")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    machine_info = machine(
        timm=timm.__version__,
        torchmetrics=torchmetrics.__version__,
        numpy=np.__version__,
        load_average_at_start=os.getloadavg(),
    )  # before the run: the load average at the start
    started = time.perf_counter()
    real = packed_faces(args.n, args.resolution)
    fake = generated_from(real, seed=0)
    print(
        f"{len(real)} real + {len(fake)} generated {args.resolution}px faces from {SAMPLE} "
        f"(packed on the fly, untimed: {time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    network = load_effnet(compose("config").eval.backbones.effnet_lite0)
    results = []
    for name in devices:
        device = torch.device(name)
        network.to(device)
        embed_images(network, real[: args.batch_size], batch_size=args.batch_size, device=device)
        runs: list[dict] = []
        for repeat in range(args.repeats):
            runs.append(measure_repeat(network, real, fake, args.batch_size, device, repeat))
            row = runs[-1]
            print(
                f"  {name} repeat {repeat + 1}/{args.repeats}: torchmetrics "
                f"{row['torchmetrics_seconds']:.1f} s, ours cold {row['cold']['total_fd']:.1f} s, "
                f"warm {row['warm']['total_fd']:.1f} s",
                flush=True,
            )
        real_features, fake_features = runs[0].pop("features")
        extras = time_kid_pr(real_features, fake_features, device)
        for row in runs[1:]:
            row.pop("features")
        torchmetrics_fd, ours_fd = runs[0]["torchmetrics_fd"], runs[0]["ours_fd"]
        results.append(
            {
                "device": name,
                "torchmetrics_fid_seconds": summary([r["torchmetrics_seconds"] for r in runs]),
                "ours_cold_seconds": summary([r["cold"]["total_fd"] for r in runs]),
                "ours_warm_seconds": summary([r["warm"]["total_fd"] for r in runs]),
                "speedup_cold": statistics.median(
                    r["torchmetrics_seconds"] / r["cold"]["total_fd"] for r in runs
                ),
                "speedup_warm": statistics.median(
                    r["torchmetrics_seconds"] / r["warm"]["total_fd"] for r in runs
                ),
                "ms_per_image_embedded": statistics.median(
                    1000 * r["warm"]["generated_features"] / len(fake) for r in runs
                ),
                "torchmetrics_fd": torchmetrics_fd,
                "ours_fd": ours_fd,
                "fd_relative_difference": abs(ours_fd - torchmetrics_fd) / abs(torchmetrics_fd),
                "repeats": runs,
            }
            | extras
        )
    report = {
        "benchmark": "evaluate",
        "images_real": len(real),
        "images_generated": len(fake),
        "resolution": args.resolution,
        "feature_network": network.cache_key,
        "batch_size": args.batch_size,
        "generated": f"the real faces shuffled, plus Gaussian noise sigma {NOISE_SIGMA} of the range",
        "command": "python benchmarks/evaluate.py " + " ".join(sys.argv[1:]),
        "repeats": args.repeats,
        "machine": machine_info | {"load_average_at_end": os.getloadavg()},
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(
        f"fd_effnet, {len(fake)} generated vs {len(real)} real {args.resolution}px faces, "
        f"batch {args.batch_size}, {report['machine']['cores_usable']} cores, "
        f"median of {args.repeats} (min-max)"
    )
    print(
        "| device | torchmetrics FID s | ours cold s | ours warm s | speed-up cold, warm "
        "| FD torchmetrics, ours | KID s | P/R s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in results:
        print(
            f"| {row['device']} | {spread(row['torchmetrics_fid_seconds'])} "
            f"| {spread(row['ours_cold_seconds'])} | {spread(row['ours_warm_seconds'])} "
            f"| {row['speedup_cold']:.2f}×, {row['speedup_warm']:.2f}× "
            f"| {row['torchmetrics_fd']:.4f}, {row['ours_fd']:.4f} "
            f"| {row['kid_seconds']:.1f} | {row['precision_recall_seconds']:.1f} |"
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
