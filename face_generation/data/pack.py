"""Stage `pack`: decode, crop and resize every face once, into one uint8 array per split.

Writes data/packed/<resolution>/{train,val,test}.npy (N x H x W x 3, RGB), index.csv (the
crops table plus split and row, row-aligned with the arrays), meta.json (resolution, counts,
a hash of the arrays that training and evaluation record), and metrics/data.json, the data
report of the whole data pipeline (images in, out, skipped by reason in every stage).

Speed (benchmarks/pack.py): JPEGs are decoded by libjpeg-turbo through torchvision; faces of
one size are resized together by torch's vectorised uint8 kernel with an antialiasing
(triangle) filter; chunks of rows go to fork-started worker processes, which write the faces
straight into an array shared with the stage. Training never decodes a JPEG again.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
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


def resize_batch(faces: torch.Tensor, resolution: int, antialias: bool) -> np.ndarray:
    """Resize N x 3 x S x S uint8 faces to N x R x R x 3 uint8 (bilinear, a triangle filter).

    With `antialias`, the filter widens by the shrink factor when shrinking, so every source
    pixel contributes, as in PIL's resize; without it, plain bilinear interpolation aliases.
    Faces in channels-last memory (an N x S x S x 3 array, permuted) take torch's vectorised
    uint8 kernel: it computes in PIL's fixed point, so results equal PIL's to within one
    level, and it is about 15x faster than resizing in float.
    """
    resized = torch.nn.functional.interpolate(
        faces, size=(resolution, resolution), mode="bilinear", antialias=antialias
    )
    return resized.permute(0, 2, 3, 1).contiguous().numpy()


def load_faces(
    rows: Sequence[Row], resolution: int, antialias: bool
) -> tuple[np.ndarray, list[int], Counter[str]]:
    """Decode, crop and resize rows; returns the faces, the indices kept and skip reasons."""
    crops_by_side: dict[int, list[tuple[int, np.ndarray]]] = {}
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
        face = pixels[top:bottom, left:right]
        crops_by_side.setdefault(face.shape[1], []).append((index, face))
    kept = sorted(index for group in crops_by_side.values() for index, _ in group)
    faces = np.empty((len(kept), resolution, resolution, 3), np.uint8)
    for group in crops_by_side.values():
        # N x S x S x 3 viewed as N x 3 x S x S: channels-last, no copy.
        crops = torch.from_numpy(np.stack([face for _, face in group])).permute(0, 3, 1, 2)
        faces[np.searchsorted(kept, [index for index, _ in group])] = resize_batch(
            crops, resolution, antialias
        )
    return faces, kept, skipped


@dataclass(frozen=True)
class SharedJob:
    """What fork-started workers inherit instead of receiving through pipes: the rows, and
    the output array in shared memory that they write faces into at their rows' positions."""

    rows: Sequence[Row]
    faces: np.ndarray  # len(rows) x R x R x 3 uint8, backed by a shared anonymous mapping
    resolution: int
    antialias: bool


def _pack_chunk(job: SharedJob, start: int, stop: int) -> tuple[list[int], Counter[str]]:
    """Load rows[start:stop] of the job into its array; return the indices of rows kept."""
    faces, kept, skipped = load_faces(job.rows[start:stop], job.resolution, job.antialias)
    kept = [start + index for index in kept]
    job.faces[kept] = faces
    return kept, skipped


_worker_job: SharedJob | None = None  # each worker's copy, set when the worker starts


def _start_worker(job: SharedJob) -> None:
    global _worker_job
    _worker_job = job
    torch.set_num_threads(1)  # one process per core already; more threads only contend


def _pack_chunk_in_worker(start: int, stop: int) -> tuple[list[int], Counter[str]]:
    assert _worker_job is not None, "the pool's initializer sets the job"
    return _pack_chunk(_worker_job, start, stop)


def pack_rows(
    rows: list[Row], resolution: int, pack_cfg: DictConfig, desc: str
) -> tuple[np.ndarray, list[Row], Counter[str]]:
    """Faces of all rows, in row order, using `pack_cfg.workers` processes.

    Workers write straight into one array in memory shared with this process and return only
    the indices they kept, so no image crosses a pipe.
    """
    shape = (len(rows), resolution, resolution, 3)
    nbytes = len(rows) * resolution * resolution * 3
    shared = mmap.mmap(-1, max(nbytes, 1))  # anonymous: fork-started workers share it
    faces = np.frombuffer(shared, np.uint8, nbytes).reshape(shape)
    job = SharedJob(rows, faces, resolution, bool(pack_cfg.antialias))
    size = int(pack_cfg.chunk_size)
    starts = range(0, len(rows), size)
    stops = [min(start + size, len(rows)) for start in starts]
    kept: list[int] = []
    skipped: Counter[str] = Counter()
    progress = tqdm(total=len(rows), desc=desc, unit="img", mininterval=1.0)
    if pack_cfg.workers and len(starts) > 1:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(
            pack_cfg.workers, mp_context=context, initializer=_start_worker, initargs=(job,)
        ) as pool:
            results = pool.map(_pack_chunk_in_worker, starts, stops)
            for start, stop, (chunk_kept, chunk_skipped) in zip(
                starts, stops, results, strict=True
            ):
                kept.extend(chunk_kept)
                skipped.update(chunk_skipped)
                progress.update(stop - start)
    else:
        for start, stop in zip(starts, stops, strict=True):
            chunk_kept, chunk_skipped = _pack_chunk(job, start, stop)
            kept.extend(chunk_kept)
            skipped.update(chunk_skipped)
            progress.update(stop - start)
    progress.close()
    if len(kept) < len(rows):
        faces = faces[kept]
    return faces, [rows[index] for index in kept], skipped


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
    # One pass over the splits in turn: one pool of workers, one shared array.
    by_split = {split: [row for row in rows if row["split"] == split] for split in SPLITS}
    faces, kept_rows, skipped = pack_rows(
        [row for split in SPLITS for row in by_split[split]], resolution, cfg.data.pack, "pack"
    )
    digest = hashlib.sha256()
    counts: dict[str, int] = {}
    index_rows: list[Row] = []
    start = 0
    for split in SPLITS:
        split_rows = [row for row in kept_rows if row["split"] == split]
        split_faces = faces[start : start + len(split_rows)]
        start += len(split_rows)
        save_array(output / f"{split}.npy", split_faces)
        digest.update(split.encode())
        digest.update(split_faces.data)  # the array's own buffer: hashed without a copy
        counts[split] = len(split_rows)
        index_rows.extend(
            {**row, "split": split, "row": str(i)} for i, row in enumerate(split_rows)
        )
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
