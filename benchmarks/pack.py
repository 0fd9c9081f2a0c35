"""Benchmark: crop+pack throughput (images/s) against a naive PIL loop, in the same run.

    .venv/bin/python benchmarks/pack.py [--n N] [--resolution 64 32] [--repeats R]

On ../shared/data/celeba-sample-10k (skipped with a message when absent) it times
  naive   for each file: PIL open, convert RGB, resize (bilinear, PIL's antialiased filter,
          the one pack uses) to R x R, np.asarray; one process;
  stages  the real `crop` (method=center) and `pack` stages, `crop.run` then `pack.run`, from
          a config composed into a temporary directory: everything they do, tables, .npy
          files and the data hash included (the outputs of the previous run are deleted
          before each, untimed, as `dvc repro` deletes a stage's outputs before it runs);
  core    the functions under them, `crop.crop_centered` then `pack.pack_rows`: read headers,
          decode, crop and resize into one array in memory, which is what the naive loop does.
Both ours read headers in one thread and pack with `data.pack.workers` threads (config: 2,
one per core). `download` and `split` run once, untimed (their time is reported apart).
Other processes may compete for the cores, so the contenders run interleaved, in rotating
order, `--repeats` times: the table gives medians with their range, and each ratio is the
median of the per-repeat ratios to naive. CPU time (all threads of this process, and of
any child) is recorded too: it is less sensitive to competing load.
Prints a table and writes benchmarks/results/pack.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from omegaconf import DictConfig
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import machine  # noqa: E402
from face_generation.config import compose  # noqa: E402
from face_generation.data import crop, download, pack, split  # noqa: E402
from face_generation.data.tables import (  # noqa: E402
    SPLITS,
    Skipped,
    crops_path,
    manifest_path,
    packed_dir,
    read_table,
    split_path,
    write_table,
)

SAMPLE = REPO.parent / "shared" / "data" / "celeba-sample-10k"
RESULTS = REPO / "benchmarks" / "results" / "pack.json"
CONTENDERS = ("naive", "stages", "core")


def naive(paths: list[str], resolution: int) -> list[np.ndarray]:
    faces = []
    for path in paths:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize(
                (resolution, resolution), Image.Resampling.BILINEAR
            )
            faces.append(np.asarray(resized))
    return faces


def stages(cfg: DictConfig) -> None:
    crop.run(cfg)
    pack.run(cfg)


def remove_outputs(cfg: DictConfig) -> None:
    """Delete what crop and pack wrote, as `dvc repro` does before it reruns a stage: freeing
    the page cache of the last run's arrays is not part of this run's work."""
    shutil.rmtree(packed_dir(cfg), ignore_errors=True)
    crops_path(cfg).unlink(missing_ok=True)


def core(cfg: DictConfig, rows: list[dict[str, str]]) -> np.ndarray:
    kept = crop.crop_centered(rows, cfg.data.crop, int(cfg.data.max_pixels), Skipped())
    in_split_order = [row for split in SPLITS for row in kept if row["split"] == split]
    faces, _, _ = pack.pack_rows(
        in_split_order, int(cfg.data.resolution), cfg.data.pack, int(cfg.data.max_pixels), "pack"
    )
    return faces


def cpu_seconds() -> float:
    """User + system time of this process and of its finished children (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(function: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of one call; the stages' progress bars and summaries are hidden."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        function()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def config(workdir: Path, overrides: list[str]) -> DictConfig:
    paths = [f"paths.data={workdir / 'data'}", f"paths.metrics={workdir / 'metrics'}"]
    return compose("config", ["data=folder", f"data.path={SAMPLE}", *paths, *overrides])


def prepare(cfg: DictConfig, n: int) -> tuple[list[str], float]:
    """Run download and split (untimed) on the first n images; return their paths."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rows = download.run(cfg)
        if n < len(rows):
            rows = rows[:n]
            write_table(manifest_path(cfg), rows, list(rows[0]))
        split.run(cfg)
    return [row["path"] for row in rows], time.perf_counter() - started


def summary(wall: list[float], cpu: list[float], count: int) -> dict:
    rates = [count / seconds for seconds in wall]
    return {
        "images_per_s_median": statistics.median(rates),
        "images_per_s_min": min(rates),
        "images_per_s_max": max(rates),
        "cpu_ms_per_image_median": 1000 * statistics.median(cpu) / count,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000, help="images: the first n of the sample")
    parser.add_argument("--resolution", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, help="data.pack.workers (default: the config's)")
    parser.add_argument("--workdir", help="where the stages write (default: the system temp dir)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not SAMPLE.is_dir():
        print(f"skipped: {SAMPLE} is absent (the CelebA sample this benchmark reads)")
        return
    torch.set_num_threads(1)  # the naive loop is one process; pack's workers set their own
    workers = [] if args.workers is None else [f"data.pack.workers={args.workers}"]
    load_at_start = os.getloadavg()

    wall: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pack-", dir=args.workdir) as temporary:
        workdir = Path(temporary)
        paths, setup_seconds = prepare(config(workdir, workers), args.n)
        count = len(paths)
        configs = {r: config(workdir, [*workers, f"data.resolution={r}"]) for r in args.resolution}
        split_rows = read_table(split_path(configs[args.resolution[0]]), "split")
        print(f"{count} images from {SAMPLE}; download+split (untimed) {setup_seconds:.1f} s")
        timed(partial(naive, paths, 64))  # warm the page cache and lazy imports, untimed
        timed(partial(stages, configs[args.resolution[0]]))
        for repeat in range(args.repeats):
            for resolution in args.resolution:
                cfg = configs[resolution]
                runs: dict[str, Callable[[], object]] = {
                    "naive": partial(naive, paths, resolution),
                    "stages": partial(stages, cfg),
                    "core": partial(core, cfg, split_rows),
                }
                shift = repeat % len(CONTENDERS)  # rotate who goes first
                for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
                    if name == "stages":
                        remove_outputs(cfg)  # untimed
                    seconds, cpu_seconds_used = timed(runs[name])
                    wall.setdefault((name, resolution), []).append(seconds)
                    cpu.setdefault((name, resolution), []).append(cpu_seconds_used)
                    print(
                        f"  repeat {repeat + 1}/{args.repeats}  {resolution:>3}  {name:<6} "
                        f"{count / seconds:7.0f} img/s",
                        flush=True,
                    )
            packed = np.load(workdir / "data" / "packed" / str(resolution) / "train.npy")
            assert packed.shape[1:] == (resolution, resolution, 3), packed.shape

    results = []
    for resolution in args.resolution:
        row: dict = {"resolution": resolution}
        for name in CONTENDERS:
            row[name] = summary(wall[name, resolution], cpu[name, resolution], count)
        for name in ("stages", "core"):
            ratios = [
                naive_seconds / ours_seconds
                for naive_seconds, ours_seconds in zip(
                    wall["naive", resolution], wall[name, resolution], strict=True
                )
            ]
            row[name] |= {
                "ratio_to_naive_median": statistics.median(ratios),
                "ratio_to_naive_min": min(ratios),
                "ratio_to_naive_max": max(ratios),
            }
        results.append(row)
    facts = machine(
        torchvision=torchvision.__version__, pillow=PIL.__version__, numpy=np.__version__
    ) | {
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
    }
    report = {
        "benchmark": "pack",
        "command": "python benchmarks/pack.py " + " ".join(sys.argv[1:]),
        "images": count,
        "repeats": args.repeats,
        "workers": int(configs[args.resolution[0]].data.pack.workers),
        "setup_download_split_seconds": setup_seconds,
        "machine": facts,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"\ncrop+pack against the naive PIL loop: {count} images, {args.repeats} repeats, "
        f"{report['workers']} workers, {facts['cores_usable']} cores, load average "
        f"{load_at_start[0]:.1f} at start, {facts['load_average_at_end'][0]:.1f} at end"
    )
    print(
        "| resolution | naive img/s | stages img/s | stages/naive | core img/s | core/naive "
        "| CPU ms/img naive, stages, core |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    def rate(entry: dict) -> str:
        return (
            f"{entry['images_per_s_median']:.0f} "
            f"({entry['images_per_s_min']:.0f}–{entry['images_per_s_max']:.0f})"
        )

    def ratio(entry: dict) -> str:
        return (
            f"{entry['ratio_to_naive_median']:.2f}× "
            f"({entry['ratio_to_naive_min']:.2f}–{entry['ratio_to_naive_max']:.2f})"
        )

    for row in results:
        cpu_ms = ", ".join(f"{row[name]['cpu_ms_per_image_median']:.3f}" for name in CONTENDERS)
        print(
            f"| {row['resolution']} | {rate(row['naive'])} | {rate(row['stages'])} "
            f"| {ratio(row['stages'])} | {rate(row['core'])} | {ratio(row['core'])} | {cpu_ms} |"
        )
    print(f"median (min–max) over repeats; wrote {args.output}")


if __name__ == "__main__":
    main()
