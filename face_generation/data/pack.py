"""Stage `pack`: decode, crop and resize every face once, into one uint8 array per split.

Writes data/packed/<resolution>/{train,val,test}.npy (N x H x W x 3, RGB), index.csv (the
crops table plus split and row, row-aligned with the arrays), meta.json (resolution, counts,
a hash of the arrays that training and evaluation record), and metrics/data.json, the data
report of the whole data pipeline (images in, out, skipped by reason in every stage).

`data.resolution` must be a power of two of at least 8, as the networks need. Images that fail
to decode or declare more than `data.max_pixels` pixels are skipped and counted; a split that
ends up empty stops the stage, and no temporary array is left behind by any failure.

Speed (benchmarks/pack.py): JPEGs are decoded by libjpeg-turbo through torchvision; faces of
one size are resized together by torch's vectorised uint8 kernel with an antialiasing
(triangle) filter; chunks of rows go to worker threads, which write the faces straight into
the memory-mapped .npy files and hash them. Training never decodes a JPEG again.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

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
    Skipped,
    crops_path,
    packed_dir,
    read_json,
    read_table,
    remove_leftovers,
    split_path,
    stage_summary,
    summary_path,
    wanted_splits,
    write_json,
    write_table,
)
from face_generation.errors import UserError, reported_errors
from face_generation.models.stages import is_supported_resolution

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
    rows: Sequence[Row], resolution: int, antialias: bool, max_pixels: int
) -> tuple[np.ndarray, list[int], Skipped]:
    """Decode, crop and resize rows; returns the faces, the indices kept and the skipped."""
    skipped = Skipped()
    read: list[tuple[int, bytes]] = []
    for index, row in enumerate(rows):
        try:
            read.append((index, images.read_bytes(row["path"])))
        except images.ImageError as error:
            skipped.add(row["path"], error.reason)
    crops_by_side: dict[int, list[tuple[int, np.ndarray]]] = {}
    decoded = images.decode_rgb_many([data for _, data in read], max_pixels)
    for (index, _), pixels in zip(read, decoded, strict=True):
        row = rows[index]
        if isinstance(pixels, images.ImageError):
            skipped.add(row["path"], pixels.reason)
            continue
        top, bottom = int(row["box_top"]), int(row["box_bottom"])
        left, right = int(row["box_left"]), int(row["box_right"])
        if right > pixels.shape[1] or bottom > pixels.shape[0]:
            skipped.add(row["path"], images.CORRUPT)  # the pixels disagree with crop's header
            continue
        crops_by_side.setdefault(right - left, []).append((index, pixels[top:bottom, left:right]))
    kept = sorted(index for group in crops_by_side.values() for index, _ in group)
    if len(crops_by_side) == 1:  # the usual case: one size, the faces already in row order
        ((_, group),) = crops_by_side.items()
        return _resized(group, resolution, antialias), kept, skipped
    faces = np.empty((len(kept), resolution, resolution, 3), np.uint8)
    for group in crops_by_side.values():
        faces[np.searchsorted(kept, [index for index, _ in group])] = _resized(
            group, resolution, antialias
        )
    return faces, kept, skipped


def _resized(group: list[tuple[int, np.ndarray]], resolution: int, antialias: bool) -> np.ndarray:
    # N x S x S x 3 viewed as N x 3 x S x S: channels-last, no copy.
    crops = torch.from_numpy(np.stack([face for _, face in group])).permute(0, 3, 1, 2)
    return resize_batch(crops, resolution, antialias)


class Packed(NamedTuple):
    """Per group: the indices of the rows kept, and (if asked for) the sha256 of each of their
    faces; over all groups: the rows skipped, with their reasons."""

    kept: list[list[int]]
    digests: list[list[bytes]]
    skipped: Skipped


def pack_groups(
    groups: Sequence[Sequence[Row]],
    outputs: Sequence[np.ndarray],
    resolution: int,
    pack_cfg: DictConfig,
    max_pixels: int,
    desc: str,
    hash_faces: bool = False,
) -> Packed:
    """Faces of each group of rows into its output array (len(group) x R x R x 3 uint8, such
    as a memory-mapped .npy file), in chunks of rows spread over `pack_cfg.workers` threads.

    Threads, not processes: decoding, resizing and hashing, four fifths of the work, release
    the GIL, so two threads use about 1.7 of two cores; processes would cost a fork of this
    process (torch loaded) each, and shared memory to write into, about 10% more CPU time.
    The slots of skipped rows are left unwritten.
    """
    antialias = bool(pack_cfg.antialias)

    def pack_chunk(task: tuple[int, int, int]) -> tuple[list[int], list[bytes], Skipped]:
        group, start, stop = task
        faces, kept, skipped = load_faces(
            groups[group][start:stop], resolution, antialias, max_pixels
        )
        kept = [start + index for index in kept]
        outputs[group][kept] = faces
        # Hashed here, in parallel and while the faces are in the cache, not re-read later.
        digests = [hashlib.sha256(face).digest() for face in faces] if hash_faces else []
        return kept, digests, skipped

    size = int(pack_cfg.chunk_size)
    tasks = [
        (group, start, min(start + size, len(rows)))
        for group, rows in enumerate(groups)
        for start in range(0, len(rows), size)
    ]
    packed = Packed([[] for _ in groups], [[] for _ in groups], Skipped())
    progress = tqdm(total=sum(map(len, groups)), desc=desc, unit="img", mininterval=1.0)
    with contextlib.ExitStack() as stack:
        if pack_cfg.workers and len(tasks) > 1:
            pool = stack.enter_context(ThreadPoolExecutor(int(pack_cfg.workers)))
            results = pool.map(pack_chunk, tasks)
        else:
            results = map(pack_chunk, tasks)
        for (group, start, stop), (kept, digests, skipped) in zip(tasks, results, strict=True):
            packed.kept[group].extend(kept)
            packed.digests[group].extend(digests)
            packed.skipped.update(skipped)
            progress.update(stop - start)
    progress.close()
    return packed


def pack_rows(
    rows: list[Row], resolution: int, pack_cfg: DictConfig, max_pixels: int, desc: str
) -> tuple[np.ndarray, list[Row], Skipped]:
    """Faces of all rows, in row order, in memory, using `pack_cfg.workers` threads."""
    faces = np.empty((len(rows), resolution, resolution, 3), np.uint8)
    (kept,), _, skipped = pack_groups([rows], [faces], resolution, pack_cfg, max_pixels, desc)
    if len(kept) < len(rows):
        faces = faces[kept]
    return faces, [rows[index] for index in kept], skipped


def save_array(path: Path, array: np.ndarray) -> None:
    temporary = path.with_name(path.name + ".tmp.npy")
    np.save(temporary, array)
    temporary.replace(path)


def checked_resolution(cfg: DictConfig) -> int:
    """data.resolution, refused before any work unless the networks can train on it."""
    resolution = cfg.data.resolution
    if not isinstance(resolution, int) or not is_supported_resolution(resolution):
        raise UserError(
            f"data.resolution={resolution!r} cannot be trained on: use a power of two of at "
            "least 8 (the networks halve it down to 4x4), e.g. data.resolution=64"
        )
    return resolution


def write_splits(
    cfg: DictConfig, by_split: dict[str, list[Row]], output: Path, resolution: int
) -> Packed:
    """{train,val,test}.npy in `output`, or a UserError, before any is written, if a split
    with a share in data.split.fractions would be empty."""
    # Worker threads write the faces straight into the pages of the .npy files: no copy to
    # save them afterwards.
    temporaries = {split: output / f"{split}.tmp.npy" for split in SPLITS}
    arrays = {
        split: np.lib.format.open_memmap(
            temporaries[split], "w+", np.uint8, (len(by_split[split]), resolution, resolution, 3)
        )
        for split in SPLITS
    }
    packed = pack_groups(
        list(by_split.values()),
        list(arrays.values()),
        resolution,
        cfg.data.pack,
        int(cfg.data.max_pixels),
        "pack",
        hash_faces=True,
    )
    counts = {split: len(kept) for split, kept in zip(SPLITS, packed.kept, strict=True)}
    empty = [split for split in wanted_splits(cfg) if counts[split] == 0]
    if empty:
        crop_skipped = read_json(summary_path(crops_path(cfg))).get("skipped", {})
        raise UserError(
            f"no face left in the {' and '.join(empty)} split (faces per split: {counts}; "
            f"skipped by crop: {crop_skipped}, by pack: {packed.skipped.counts()}); every split "
            "needs faces for training and evaluation: add images, or loosen data.crop "
            "(method, min_confidence, min_size)"
        )
    for split, kept in zip(SPLITS, packed.kept, strict=True):
        if len(kept) == len(arrays[split]):
            temporaries[split].replace(output / f"{split}.npy")
        else:  # rows skipped: their slots hold nothing, so write the kept faces anew
            save_array(output / f"{split}.npy", arrays[split][kept])
    return packed


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
    remove_leftovers(cfg, "pack")
    resolution = checked_resolution(cfg)
    rows = read_table(crops_path(cfg), "crop")
    output = packed_dir(cfg)
    output.mkdir(parents=True, exist_ok=True)
    by_split = {split: [row for row in rows if row["split"] == split] for split in SPLITS}
    try:
        kept, face_digests, skipped = write_splits(cfg, by_split, output, resolution)
    finally:
        # Whatever stopped it, no temporary array stays behind: at full scale they take GBs.
        for temporary in output.glob("*.tmp.npy"):
            temporary.unlink()
    # The data hash: over each split's name and the sha256 of each of its faces, in order.
    digest = hashlib.sha256()
    counts: dict[str, int] = {}
    index_rows: list[Row] = []
    for split, split_kept, digests in zip(SPLITS, kept, face_digests, strict=True):
        digest.update(split.encode())
        digest.update(b"".join(digests))
        counts[split] = len(split_kept)
        split_rows = by_split[split]
        index_rows.extend(
            {**split_rows[index], "split": split, "row": str(row)}
            for row, index in enumerate(split_kept)
        )
    write_table(output / "index.csv", index_rows, INDEX_COLUMNS)
    skipped.write(output / "index.csv")
    meta = {"resolution": resolution, "counts": counts, "data_hash": digest.hexdigest()[:16]}
    write_json(output / "meta.json", meta)
    seconds = time.perf_counter() - started
    pack_summary = {
        "images_in": len(rows),
        "images_out": sum(counts.values()),
        "counts": counts,
        "skipped": skipped.counts(),
    }
    write_json(Path(cfg.paths.metrics) / "data.json", data_report(cfg, pack_summary))
    examples = skipped.examples(output / "index.csv")
    print(
        stage_summary("pack", len(rows), sum(counts.values()), skipped.counts(), seconds, examples)
    )
    print(
        f"[pack] {output}: "
        + ", ".join(f"{split} {counts[split]}" for split in SPLITS)
        + f" at {resolution}x{resolution}"
    )
    return meta


def main(argv: list[str] | None = None) -> None:
    args = stage_parser(__doc__ or "").parse_args(argv)
    with reported_errors("pack"):
        run(config_from_args(args))


if __name__ == "__main__":
    main()
