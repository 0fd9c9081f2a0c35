"""Benchmark: images/s of the features stage (backbone pyramids + identity embeddings + pooling +
writes) against the naive loop, in the same run.

    .venv/bin/python benchmarks/features.py [--images N] [--repeats R] [--encoder dlib|effnet_contrastive]

On the first N faces of ../shared/data/celeba-sample-10k (skipped with a message when absent),
packed at 64x64 by the real data stages (untimed), with the default backbone (EfficientNet-
Lite0 at 128 px, grids 4, 8, 16) and the chosen encoder (dlib by default; effnet_contrastive
needs --checkpoint models/encoder/model.pt):

  stage   face_generation.features.stage.run(cfg, ["backbone"]) and (cfg, ["encoder"]): batches
          under inference mode in channels_last, pooled and cast to float16 on the device,
          written into memory-mapped .npy files; dlib in `encoder.workers` processes.
  naive   per image: preprocess (to float, resize), forward (batch of one, torch.no_grad,
          contiguous memory), pool, .numpy(), append; dlib face by face in this process; at
          the end np.stack and np.save. The same networks, weights and outputs.

Loading the networks counts in both. The two run interleaved, in alternating order, --repeats
times; the table gives the median (min-max) of each part and the whole, and the ratio of
medians. Prints a table and writes benchmarks/results/features.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import machine  # noqa: E402
from face_generation.config import compose  # noqa: E402
from face_generation.data import crop, download, pack, split  # noqa: E402
from face_generation.data.packed import features_dir, load_split  # noqa: E402
from face_generation.data.tables import SPLITS, packed_dir  # noqa: E402
from face_generation.features.pyramid import level_sources, pool_levels  # noqa: E402
from face_generation.features.stage import run  # noqa: E402
from face_generation.networks.backbone import load_pyramid_backbone  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "celeba-sample-10k"
RESULTS = REPO / "benchmarks" / "results" / "features.json"


def pack_sample(root: Path, count: int, overrides: list[str]) -> Any:
    """The first `count` sample faces, packed at 64x64 into root/data by the real stages."""
    images = root / "faces" / "img_align_celeba"
    images.mkdir(parents=True)
    for path in sorted((SAMPLE / "img_align_celeba").glob("*.jpg"))[:count]:
        (images / path.name).symlink_to(path)
    for name in ("identity_CelebA.txt", "list_eval_partition.txt"):
        (root / "faces" / name).symlink_to(SAMPLE / name)
    cfg = compose(
        "config",
        [
            "experiment=celeba_sample",
            f"data.path={root / 'faces'}",
            f"paths.data={root / 'data'}",
            f"paths.metrics={root / 'metrics'}",
            *overrides,
        ],
    )
    for stage in (download, split, crop, pack):
        stage.run(cfg)
    return cfg


def naive_loop(
    cfg: Any, part: str, embed_one: Callable[[np.ndarray], dict[str, np.ndarray]]
) -> None:
    """Per image of every split: `embed_one` (preprocess, forward, numpy), append; then stack
    and save each array."""
    out = Path(cfg.paths.data) / "naive" / part
    out.mkdir(parents=True, exist_ok=True)
    for split_name in SPLITS:
        rows: dict[str, list[np.ndarray]] = {}
        for face in load_split(packed_dir(cfg), split_name, int(cfg.data.resolution)):
            for name, value in embed_one(face).items():
                rows.setdefault(name, []).append(value)
        for name, values in rows.items():
            np.save(out / f"{name}_{split_name}.npy", np.stack(values))


def naive_backbone(cfg: Any) -> None:
    network = load_pyramid_backbone(cfg.backbone)
    network.network.to(memory_format=torch.contiguous_format)
    grids = [int(grid) for grid in cfg.features.grids]

    def embed_one(face: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            output = network.forward(network.preprocess(face[None]).contiguous())
        sources = level_sources([level.shape[-1] for level in output.pyramid], grids)
        levels = pool_levels(output.pyramid, grids, sources)
        named = [("embedding", output.embedding), *zip(map(str, grids), levels, strict=True)]
        return {name: value[0].numpy().astype(np.float16) for name, value in named}

    naive_loop(cfg, "backbone", embed_one)


def naive_dlib(cfg: Any) -> None:
    """Face by face: box, landmarks, descriptor, normalise."""
    import dlib

    from face_generation.networks.dlib_face import dlib_model_dir
    from face_generation.networks.face_boxes import FaceBoxes

    folder = dlib_model_dir()
    landmarks = dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat"))
    recogniser = dlib.face_recognition_model_v1(
        str(folder / "dlib_face_recognition_resnet_model_v1.dat")
    )
    boxes = FaceBoxes.from_config(cfg.encoder)

    def embed_one(face: np.ndarray) -> dict[str, np.ndarray]:
        image = np.ascontiguousarray(face)
        shape = landmarks(image, dlib.rectangle(*boxes.box(image)))
        vector = np.asarray(recogniser.compute_face_descriptor(image, shape))
        return {"identity": (vector / np.linalg.norm(vector)).astype(np.float16)}

    naive_loop(cfg, "encoder", embed_one)


def naive_torch_encoder(cfg: Any) -> None:
    """The fine-tuned encoder, one face at a time."""
    from face_generation.networks.contrastive import load_contrastive_encoder

    network = load_contrastive_encoder(cfg.encoder)

    def embed_one(face: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            vector = network.forward(network.preprocess(face[None]).contiguous()).embedding
        return {"identity": vector[0].numpy().astype(np.float16)}

    naive_loop(cfg, "encoder", embed_one)


def timed(job: Callable[[], Any]) -> float:
    started = time.perf_counter()
    job()
    return time.perf_counter() - started


def check_same_outputs(cfg: Any) -> None:
    """The naive loop computed what the stage stored (float16 rounding, batch effects aside)."""
    features = features_dir(Path(cfg.paths.data), int(cfg.data.resolution))
    naive = Path(cfg.paths.data) / "naive"
    stage = np.load(features / str(cfg.backbone.name) / "embedding" / "test.npy")
    np.testing.assert_allclose(
        np.load(naive / "backbone" / "embedding_test.npy"), stage, rtol=2e-2, atol=2e-2
    )
    identity = np.load(features / str(cfg.encoder.name) / "identity" / "test.npy")
    np.testing.assert_allclose(
        np.load(naive / "encoder" / "identity_test.npy"), identity, rtol=2e-2, atol=2e-2
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10000, help="faces (default: all 10000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--encoder", default="dlib", choices=["dlib", "effnet_contrastive"])
    parser.add_argument("--checkpoint", help="effnet_contrastive: the encoder's model.pt")
    args = parser.parse_args()
    if not (SAMPLE / "img_align_celeba").is_dir():
        print(f"skipped: the CelebA sample is not at {SAMPLE} (../shared/data beside the repo)")
        return
    overrides = [f"encoder={args.encoder}", "features.device=cpu"]
    if args.checkpoint:
        overrides.append(f"encoder.checkpoint={Path(args.checkpoint).resolve()}")
    naive_encoder = naive_dlib if args.encoder == "dlib" else naive_torch_encoder
    root = Path(tempfile.mkdtemp(prefix="features-benchmark-"))
    try:
        cfg = pack_sample(root, args.images, overrides)
        times: dict[str, list[float]] = {}
        for repeat in range(args.repeats):
            contenders = ["stage", "naive"] if repeat % 2 == 0 else ["naive", "stage"]
            for contender in contenders:
                if contender == "stage":
                    parts = {
                        "backbone": lambda: run(cfg, ["backbone"]),
                        "encoder": lambda: run(cfg, ["encoder"]),
                    }
                else:
                    parts = {
                        "backbone": lambda: naive_backbone(cfg),
                        "encoder": lambda: naive_encoder(cfg),
                    }
                for part, job in parts.items():
                    times.setdefault(f"{contender} {part}", []).append(timed(job))
                print(f"repeat {repeat + 1}: {contender} done", flush=True)
        check_same_outputs(cfg)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows = []
    for part in ("backbone", "encoder", "total"):
        result: dict[str, Any] = {"part": part}
        for contender in ("naive", "stage"):
            seconds = (
                [
                    b + e
                    for b, e in zip(
                        times[f"{contender} backbone"], times[f"{contender} encoder"], strict=True
                    )
                ]
                if part == "total"
                else times[f"{contender} {part}"]
            )
            rates = [args.images / s for s in seconds]
            result[contender] = {
                "median": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "seconds": seconds,
            }
        result["ratio"] = result["stage"]["median"] / result["naive"]["median"]
        rows.append(result)
    print(f"\n{args.images} faces, 64x64, backbone effnet_lite0 at 128 px, encoder {args.encoder}")
    print("| part | naive img/s | stage img/s | stage/naive |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        cells = [
            f"{row[c]['median']:.1f} ({row[c]['min']:.1f}-{row[c]['max']:.1f})"
            for c in ("naive", "stage")
        ]
        print(f"| {row['part']} | {cells[0]} | {cells[1]} | {row['ratio']:.2f}x |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "images": args.images,
                "encoder": args.encoder,
                "repeats": args.repeats,
                "rows": rows,
                "machine": machine(),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
