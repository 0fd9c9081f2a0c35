"""Stage `pack`: decode, crop and resize every face once, into one uint8 array per split.

Writes data/packed/<resolution>/{train,val,test}.npy (N x H x W x 3, RGB), index.csv (the
crops table plus split and row, row-aligned with the arrays), meta.json (resolution, counts,
a hash of the arrays that training and evaluation record), and metrics/data.json, the data
report of the whole data pipeline (images in, out, skipped by reason in every stage).

Speed: JPEGs are decoded by libjpeg-turbo through torchvision, faces of one size are resized
together by two matrix products with an antialiasing (triangle) filter, and chunks of images
go to worker processes, so that training never decodes a JPEG again.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from face_generation.config import config_from_args, stage_parser
from face_generation.data import images
from face_generation.data.tables import (
    CROP_COLUMNS,
    SPLITS,
    Row,
    crops_path,
    packed_dir,
    read_json,
    read_table,
    split_path,
    stage_summary,
    summary_path,
    write_json,
    write_table,
)

INDEX_COLUMNS = ("split", "row", *CROP_COLUMNS)


@lru_cache(maxsize=64)
def resize_matrix(size_in: int, size_out: int, antialias: bool) -> torch.Tensor:
    """Rows of weights that resample `size_in` pixels to `size_out` (a triangle filter).

    When shrinking with `antialias`, the filter widens by the shrink factor, so every source
    pixel contributes (as PIL and torchvision's antialiased resize do); without it, it is
    plain bilinear interpolation, which aliases when shrinking.
    """
    scale = size_in / size_out
    support = max(scale, 1.0) if antialias else 1.0
    centres = (np.arange(size_out) + 0.5) * scale - 0.5
    distance = np.abs(np.arange(size_in)[None, :] - centres[:, None]) / support
    weights = np.clip(1.0 - distance, 0.0, None)
    return torch.from_numpy(weights / weights.sum(axis=1, keepdims=True)).float()


def resize_batch(faces: torch.Tensor, resolution: int, antialias: bool) -> np.ndarray:
    """Resize N x 3 x S x S uint8 faces to N x R x R x 3 uint8 with two matrix products."""
    weights = resize_matrix(faces.shape[-1], resolution, antialias)
    resized = weights @ (faces.float() @ weights.T)
    return resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def load_faces(
    rows: Sequence[Row], resolution: int, antialias: bool
) -> tuple[np.ndarray, list[int], Counter[str]]:
    """Decode, crop and resize rows; returns the faces, the indices kept and skip reasons."""
    crops_by_side: dict[int, list[tuple[int, torch.Tensor]]] = {}
    skipped: Counter[str] = Counter()
    for index, row in enumerate(rows):
        try:
            pixels = images.decode_rgb(images.read_bytes(row["path"]))
        except images.ImageError as error:
            skipped[error.reason] += 1
            continue
        left, top, right, bottom = (
            int(row[key]) for key in ("box_left", "box_top", "box_right", "box_bottom")
        )
        if right > pixels.shape[1] or bottom > pixels.shape[0]:
            skipped[images.CORRUPT] += 1  # the pixels disagree with the header crop read
            continue
        face = torch.from_numpy(np.ascontiguousarray(pixels[top:bottom, left:right])).permute(
            2, 0, 1
        )
        crops_by_side.setdefault(face.shape[-1], []).append((index, face))
    kept: list[int] = []
    parts: list[np.ndarray] = []
    for group in crops_by_side.values():
        kept.extend(index for index, _ in group)
        parts.append(resize_batch(torch.stack([face for _, face in group]), resolution, antialias))
    order = np.argsort(kept, kind="stable")
    faces = (
        np.concatenate(parts)[order]
        if parts
        else np.zeros((0, resolution, resolution, 3), np.uint8)
    )
    return faces, sorted(kept), skipped


def _worker_init() -> None:
    torch.set_num_threads(1)  # one process per core already; more threads only contend


def pack_rows(
    rows: list[Row], resolution: int, pack_cfg: DictConfig, desc: str
) -> tuple[np.ndarray, list[Row], Counter[str]]:
    """Faces of all rows, in row order, using `pack_cfg.workers` processes."""
    chunks = [rows[i : i + pack_cfg.chunk_size] for i in range(0, len(rows), pack_cfg.chunk_size)]
    work = partial(load_faces, resolution=resolution, antialias=bool(pack_cfg.antialias))
    skipped: Counter[str] = Counter()
    arrays, kept_rows = [], []
    progress = tqdm(total=len(rows), desc=desc, unit="img", mininterval=1.0)
    if pack_cfg.workers and len(chunks) > 1:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(
            pack_cfg.workers, mp_context=context, initializer=_worker_init
        ) as pool:
            results = pool.map(work, chunks)
            for chunk, (faces, kept, chunk_skipped) in zip(chunks, results, strict=True):
                arrays.append(faces)
                kept_rows.extend(chunk[i] for i in kept)
                skipped.update(chunk_skipped)
                progress.update(len(chunk))
    else:
        for chunk in chunks:
            faces, kept, chunk_skipped = work(chunk)
            arrays.append(faces)
            kept_rows.extend(chunk[i] for i in kept)
            skipped.update(chunk_skipped)
            progress.update(len(chunk))
    progress.close()
    empty = np.zeros((0, resolution, resolution, 3), np.uint8)
    return (np.concatenate(arrays) if arrays else empty), kept_rows, skipped


def save_array(path: Path, array: np.ndarray) -> None:
    temporary = path.with_name(path.name + ".tmp.npy")
    np.save(temporary, array)
    temporary.replace(path)


def data_report(cfg: DictConfig, pack_summary: dict) -> dict:
    """metrics/data.json: images in and out, and skips by reason, over all data stages."""
    stages = {
        "download": read_json(summary_path(Path(cfg.paths.data) / "raw" / "manifest.csv")),
        "split": read_json(summary_path(split_path(cfg))),
        "crop": read_json(summary_path(crops_path(cfg))),
        "pack": pack_summary,
    }
    skipped: Counter[str] = Counter()
    for summary in stages.values():
        skipped.update(summary.get("skipped", {}))
    return {
        "images_found": stages["download"].get("images_in", 0),
        "images_packed": pack_summary["images_out"],
        "resolution": int(cfg.data.resolution),
        "skipped": {reason: skipped[reason] for reason in sorted(skipped) if skipped[reason]},
        "skipped_total": sum(skipped.values()),
        "split": pack_summary["counts"],
    }


def run(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    rows = read_table(crops_path(cfg), "crop")
    resolution = int(cfg.data.resolution)
    output = packed_dir(cfg)
    output.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    counts, index_rows = {}, []
    skipped: Counter[str] = Counter()
    for split in SPLITS:
        split_rows = [row for row in rows if row["split"] == split]
        faces, kept_rows, split_skipped = pack_rows(
            split_rows, resolution, cfg.data.pack, f"pack: {split}"
        )
        save_array(output / f"{split}.npy", faces)
        digest.update(split.encode())
        digest.update(faces.tobytes())
        counts[split] = len(faces)
        skipped.update(split_skipped)
        index_rows.extend({**row, "split": split, "row": str(i)} for i, row in enumerate(kept_rows))
    write_table(output / "index.csv", index_rows, INDEX_COLUMNS)
    meta = {"resolution": resolution, "counts": counts, "data_hash": digest.hexdigest()[:16]}
    write_json(output / "meta.json", meta)
    seconds = time.perf_counter() - started
    pack_summary = {
        "images_in": len(rows),
        "images_out": sum(counts.values()),
        "counts": counts,
        "skipped": dict(skipped),
    }
    write_json(Path(cfg.paths.metrics) / "data.json", data_report(cfg, pack_summary))
    print(stage_summary("pack", len(rows), sum(counts.values()), dict(skipped), seconds))
    print(
        f"[pack] {output}: "
        + ", ".join(f"{split} {counts[split]}" for split in SPLITS)
        + f" at {resolution}x{resolution}"
    )
    return meta


def main(argv: list[str] | None = None) -> None:
    args = stage_parser(__doc__ or "").parse_args(argv)
    run(config_from_args(args))


if __name__ == "__main__":
    main()
