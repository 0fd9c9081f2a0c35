"""Stage `crop`: find the square face box of every image (data/crops.csv).

`data.crop.method`:
  center  pre-aligned faces (CelebA's aligned set, UTKFace, LFW): a centred square; only the
          image header is read here, pixels are decoded once, by `pack`;
  mtcnn   photos in the wild: facenet-pytorch's MTCNN (its weights ship in the wheel) finds
          the most confident face; its box is enlarged by `margin` and made square.

Images are taken as shown: turned as their EXIF orientation says. Unreadable, non-image,
corrupt, too-small and too-large files (more pixels than `data.max_pixels`, read from the
header before any decoding), and images with no confident face, are skipped and counted by
reason in data/crops.json.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from face_generation.config import config_from_args, stage_parser
from face_generation.data import images
from face_generation.data.tables import (
    CROP_COLUMNS,
    Row,
    Skipped,
    crops_path,
    read_table,
    remove_leftovers,
    split_path,
    stage_summary,
    summary_path,
    write_json,
    write_table,
)
from face_generation.errors import UserError, reported_errors

Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels, right/bottom exclusive


def center_box(width: int, height: int, fraction: float, offset: float) -> Box:
    """A centred square of `fraction` of the short side, moved down by `offset` x height."""
    side = max(1, round(min(width, height) * fraction))
    center_x, center_y = width / 2, height / 2 + offset * height
    return fit_square(center_x, center_y, side, width, height)


def fit_square(center_x: float, center_y: float, side: int, width: int, height: int) -> Box:
    """A square of `side` around a centre, shifted (and if need be shrunk) to lie in the image."""
    side = min(side, width, height)
    left = round(center_x - side / 2)
    top = round(center_y - side / 2)
    left = min(max(left, 0), width - side)
    top = min(max(top, 0), height - side)
    return left, top, left + side, top + side


def face_box(detection: np.ndarray, margin: float, width: int, height: int) -> Box:
    """Square box around a detector box [x1, y1, x2, y2], enlarged by `margin` on each side."""
    x1, y1, x2, y2 = (float(v) for v in detection)
    side = round(max(x2 - x1, y2 - y1) * (1 + 2 * margin))
    return fit_square((x1 + x2) / 2, (y1 + y2) / 2, side, width, height)


def with_box(row: Row, box: Box) -> Row:
    left, top, right, bottom = box
    return {
        **row,
        "box_left": str(left),
        "box_top": str(top),
        "box_right": str(right),
        "box_bottom": str(bottom),
    }


def header_or_reason(path: str, header_bytes: int, max_pixels: int) -> images.ImageHeader | str:
    """The header of one image, or the reason to skip it."""
    try:
        return images.read_file_header(path, header_bytes, max_pixels)
    except images.ImageError as error:
        return error.reason


def crop_centered(
    rows: list[Row], crop_cfg: DictConfig, max_pixels: int, skipped: Skipped
) -> list[Row]:
    """Rows with their centred boxes, from the images' headers.

    In this thread: a header costs under 10 us, two threads measured no faster (the GIL),
    and forking processes from one with torch loaded costs about 40 ms.
    """
    header_bytes, min_size = int(crop_cfg.header_bytes), int(crop_cfg.min_size)
    fraction, offset = float(crop_cfg.center_fraction), float(crop_cfg.center_offset)
    boxes: dict[tuple[int, int], Box] = {}  # a dataset's images come in a few sizes
    kept = []
    for row in tqdm(rows, desc="crop: headers", unit="img", mininterval=1.0):
        header = header_or_reason(row["path"], header_bytes, max_pixels)
        if isinstance(header, str):
            skipped.add(row["path"], header)
        elif min(header.width, header.height) < min_size:
            skipped.add(row["path"], images.TOO_SMALL)
        else:
            size = (header.width, header.height)
            if size not in boxes:
                boxes[size] = center_box(*size, fraction, offset)
            kept.append(with_box(row, boxes[size]))
    return kept


def decoded(
    rows: Iterable[Row], min_size: int, max_pixels: int, skipped: Skipped
) -> Iterable[tuple[Row, np.ndarray]]:
    for row in rows:
        try:
            pixels = images.decode_rgb(images.read_bytes(row["path"]), max_pixels)
        except images.ImageError as error:
            skipped.add(row["path"], error.reason)
            continue
        if min(pixels.shape[:2]) < min_size:
            skipped.add(row["path"], images.TOO_SMALL)
            continue
        yield row, pixels


def face_detector() -> Any:
    """facenet-pytorch's MTCNN (its weights ship in the wheel), keeping the most confident
    face, on the CPU."""
    import torch
    from facenet_pytorch import MTCNN

    return MTCNN(select_largest=False, keep_all=False, device=torch.device("cpu"))


def confident_box(
    detections: np.ndarray | None,
    probabilities: np.ndarray | None,
    crop_cfg: DictConfig,
    shape: tuple[int, ...],
) -> Box | None:
    """The square face box of MTCNN's most confident detection in an image of `shape`, or None
    when it found no face at `crop_cfg.min_confidence` or above."""
    if detections is None or probabilities is None or probabilities[0] is None:
        return None
    if probabilities[0] < crop_cfg.min_confidence:
        return None
    height, width = shape[:2]
    return face_box(detections[0], crop_cfg.margin, width, height)


def detected_face(pixels: np.ndarray, crop_cfg: DictConfig, detector: Any) -> np.ndarray | None:
    """One photo's face as the mtcnn crop stage cuts it (H×W×3 uint8), or None: no face."""
    detections, probabilities = detector.detect(pixels)
    box = confident_box(detections, probabilities, crop_cfg, pixels.shape)
    if box is None:
        return None
    left, top, right, bottom = box
    return pixels[top:bottom, left:right]


def crop_detected(
    rows: list[Row], crop_cfg: DictConfig, max_pixels: int, skipped: Skipped
) -> list[Row]:
    detector = face_detector()
    boxes: dict[str, Box] = {}
    batches: dict[tuple[int, ...], list[tuple[Row, np.ndarray]]] = defaultdict(list)

    def detect(batch: list[tuple[Row, np.ndarray]]) -> None:
        # MTCNN takes a batch only of equally sized images, hence the grouping by shape.
        found, probabilities = detector.detect(np.stack([pixels for _, pixels in batch]))
        for (row, pixels), detections, probability in zip(batch, found, probabilities, strict=True):
            box = confident_box(detections, probability, crop_cfg, pixels.shape)
            if box is None:
                skipped.add(row["path"], images.NO_FACE)
            else:
                boxes[row["path"]] = box

    progress = tqdm(rows, desc="crop: detecting faces", unit="img", mininterval=1.0)
    for row, pixels in decoded(progress, crop_cfg.min_size, max_pixels, skipped):
        batch = batches[pixels.shape]
        batch.append((row, pixels))
        if len(batch) == crop_cfg.batch_size:
            detect(batch)
            batch.clear()
    for batch in batches.values():
        if batch:
            detect(batch)
    return [with_box(row, boxes[row["path"]]) for row in rows if row["path"] in boxes]


def run(cfg: DictConfig) -> list[Row]:
    started = time.perf_counter()
    remove_leftovers(cfg, "crop")
    rows = read_table(split_path(cfg), "split")
    crop_cfg = cfg.data.crop
    skipped = Skipped()
    max_pixels = int(cfg.data.max_pixels)
    if crop_cfg.method == "center":
        kept = crop_centered(rows, crop_cfg, max_pixels, skipped)
    elif crop_cfg.method == "mtcnn":
        kept = crop_detected(rows, crop_cfg, max_pixels, skipped)
    else:
        raise UserError(f"unknown data.crop.method {crop_cfg.method!r}: use center or mtcnn")
    if not kept:
        raise UserError(
            f"no usable image among {len(rows)}: skipped {skipped.counts()}; "
            "check data.path and data.crop (min_size, method)"
        )
    output = crops_path(cfg)
    write_table(output, kept, CROP_COLUMNS)
    skipped.write(output)
    seconds = time.perf_counter() - started
    write_json(
        summary_path(output),
        {
            "method": crop_cfg.method,
            "images_in": len(rows),
            "images_out": len(kept),
            "skipped": skipped.counts(),
        },
    )
    print(
        stage_summary(
            "crop", len(rows), len(kept), skipped.counts(), seconds, skipped.examples(output)
        )
    )
    return kept


def main(argv: list[str] | None = None) -> None:
    args = stage_parser(__doc__ or "").parse_args(argv)
    with reported_errors("crop"):
        run(config_from_args(args))


if __name__ == "__main__":
    main()
