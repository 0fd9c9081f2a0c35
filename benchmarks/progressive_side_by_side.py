"""Benchmark: the feature-guided progressive generator beside the DCGAN and the
backbone-conditioned diffusion model, on CelebA faces, at the same resolution and budget.

    .venv/bin/python benchmarks/progressive_side_by_side.py [--images N] [--steps S] [--samples M]

The first N images of ../shared/data/celeba-sample-10k (skipped with a message when absent),
centre-cropped (89×89) and resized to 32×32, split 80/10/10 in file order, are packed as the
pack stage writes them; the `features` stage computes their EfficientNet-Lite0 embeddings and
pyramids (the default backbone settings). Each model trains S steps at batch 64 (the same
images seen) with its default config through the real loop (the progressive generator's
levels spread evenly over the S steps: grow_every S/4, fade_steps S/8), and is scored by the real
evaluation (M samples against the first M test faces; the zero-shot identity check on a few
references, no guidance sweep). Feature fidelity is computed here for every model the same
way: the pyramid distance per level (cosine, the progressive default) between each test face
and the sample conditioned on its embedding (the DCGAN ignores it), beside the same samples
against another test face's pyramid (random reference). CPU seconds are this process's.
Prints a table and writes benchmarks/results/progressive_side_by_side.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from face_generation.config import compose  # noqa: E402
from face_generation.data.packed import features_dir, load_feature_split  # noqa: E402
from face_generation.evaluation.evaluate_model import evaluate  # noqa: E402
from face_generation.evaluation.inputs import generate  # noqa: E402
from face_generation.families.progressive import (  # noqa: E402
    level_distance,
    load_backbone_pyramid,
    pyramids_of,
    stored_pyramids,
)
from face_generation.features.stage import run as run_features  # noqa: E402
from face_generation.runtime.generator import load_generator  # noqa: E402
from face_generation.training.loop import train  # noqa: E402
from face_generation.training.tracker import NullTracker  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "celeba-sample-10k" / "img_align_celeba"
RESULTS = REPO / "benchmarks" / "results" / "progressive_side_by_side.json"
RESOLUTION = 32
MODELS = ("dcgan", "diffusion", "progressive")
SCORES = ("fd_effnet", "kid_effnet", "precision_effnet", "recall_effnet")
SCHEDULE: dict[str, list[str]] = {}  # per-model overrides, set from the arguments


def pack(images: list[Path], root: Path) -> None:
    """data/packed/32/{train,val,test}.npy of the images, split 80/10/10 in order."""
    faces = []
    for path in images:
        with Image.open(path) as image:
            top = (image.height - image.width) // 2
            square = image.convert("RGB").crop((0, top, image.width, top + image.width))
            faces.append(np.asarray(square.resize((RESOLUTION, RESOLUTION), Image.LANCZOS)))
    stacked = np.stack(faces)
    cuts = [int(len(stacked) * 0.8), int(len(stacked) * 0.9)]
    packed = root / "data" / "packed" / str(RESOLUTION)
    packed.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, part in zip(("train", "val", "test"), np.split(stacked, cuts), strict=True):
        np.save(packed / f"{split}.npy", part)
        counts[split] = len(part)
    meta = {"resolution": RESOLUTION, "counts": counts, "data_hash": f"celeba-first-{len(images)}"}
    (packed / "meta.json").write_text(json.dumps(meta))


def feature_fidelity(cfg: DictConfig, checkpoint: Path, count: int) -> dict[str, float]:
    """Per level: the samples' pyramid distance to their own reference and to another one."""
    progressive = compose("config", [f"paths.data={cfg.paths.data}", "model=progressive"]).model
    trained = load_generator(checkpoint)
    features = features_dir(Path(cfg.paths.data), RESOLUTION)
    rows = load_feature_split(features, "effnet_lite0/embedding", "test", count)
    cond = torch.from_numpy(np.asarray(rows[:count], np.float32))
    options = trained.options()
    samples = generate(trained, count, 0, 64, options, cond=cond if trained.condition else None)
    probe = load_backbone_pyramid(progressive)
    generated = pyramids_of(probe, samples, 64)
    targets = stored_pyramids(progressive, "test", count)
    other = np.roll(np.arange(count), 1)
    scores = {}
    for grid, level, target in zip(progressive.pyramid.grids, generated, targets, strict=True):
        scores[f"pyramid_{grid}"] = float(level_distance(level, target, "cosine").mean())
        scores[f"pyramid_{grid}_random"] = float(
            level_distance(level, target[other], "cosine").mean()
        )
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2500)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--samples", type=int, default=250)
    parser.add_argument("--root", type=Path, default=Path("/tmp/progressive_side_by_side"))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument(
        "--progressive",
        nargs="*",
        default=[],
        help="overrides of the progressive model, e.g. model.pyramid.every=1 model.pyramid.rows=16",
    )
    args = parser.parse_args()
    # the progressive generator grows through every level within the budget
    SCHEDULE["progressive"] = [
        f"model.grow_every={args.steps // 4}",
        f"model.fade_steps={args.steps // 8}",
        *args.progressive,
    ]
    if not SAMPLE.is_dir():
        print(f"skipped: the CelebA sample is not at {SAMPLE}")
        return
    root = args.root
    overrides = [
        *(f"paths.{key}={root / key}" for key in ("data", "models", "metrics", "plots")),
        "tracking.enabled=false",
        f"train.steps={args.steps}",
        "train.batch_size=64",
        "train.sample_every=100000",
        f"eval.num_samples={args.samples}",
        "eval.zero_shot.num_references=20",
        "eval.zero_shot.samples_per_reference=2",
        "eval.guidance_sweep=[]",
        f"eval.cache_dir={root / 'real_stats'}",
    ]
    started = time.process_time()
    if not (root / "data" / "features").is_dir():
        pack(sorted(SAMPLE.glob("*.jpg"))[: args.images], root)
        run_features(compose("config", overrides), ["backbone"])
    prepare_seconds = time.process_time() - started
    rows = []
    for model in args.models:
        cfg = compose("config", [f"model={model}", *overrides, *SCHEDULE.get(model, [])])
        started = time.process_time()
        result = train(cfg, NullTracker())
        train_seconds = time.process_time() - started
        started = time.process_time()
        record = evaluate(cfg).record
        eval_seconds = time.process_time() - started
        metrics = {name: record["metrics"].get(name, {}).get("value") for name in SCORES}
        rows.append(
            {
                "model": model,
                **metrics,
                **feature_fidelity(cfg, result.checkpoint, args.samples),
                "train_cpu_s": train_seconds,
                "eval_cpu_s": eval_seconds,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    columns = list(rows[0])
    print(f"\n{args.images} CelebA faces at {RESOLUTION}px, {args.steps} steps × 64 images each, "
          f"{args.samples} samples; data + features {prepare_seconds:.0f} CPU s")  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "progressive_side_by_side",
        "images": args.images,
        "steps": args.steps,
        "samples": args.samples,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "prepare_cpu_s": prepare_seconds,
        "results": rows,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
