"""Images in and out: model tensors in [-1, 1] to PNG files (grids and single images), and
image files to model inputs. Files are written atomically (temporary name, then rename)."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from face_generation.data.crop import detected_face, face_detector
from face_generation.data.images import ImageError, decode_rgb, read_bytes
from face_generation.errors import UserError
from face_generation.runtime.pixels import to_uint8_nhwc


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """N×3×H×W floats in [-1, 1] → N×H×W×3 uint8 (values outside are clipped)."""
    return to_uint8_nhwc(images.detach(), (-1.0, 1.0))


def png_bytes(pixels: np.ndarray) -> bytes:
    """An H×W×3 uint8 array as the bytes of a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(pixels: np.ndarray, path: Path) -> Path:
    """Write an H×W×3 uint8 array as a PNG atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(png_bytes(pixels))
    temporary.replace(path)
    return path


def save_grid(
    images: torch.Tensor, path: Path, columns: int | None = None, gutter: int = 2
) -> Path:
    """One PNG of all images in a near-square grid with black gutters."""
    return save_png(grid_pixels(to_uint8(images), columns, gutter), path)


def grid_pixels(pixels: np.ndarray, columns: int | None = None, gutter: int = 2) -> np.ndarray:
    """N×H×W×3 uint8 images as one H'×W'×3 grid (near-square unless `columns` is given)."""
    count, height, width, _ = pixels.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.zeros(
        (rows * (height + gutter) + gutter, columns * (width + gutter) + gutter, 3), np.uint8
    )
    for index, image in enumerate(pixels):
        top = gutter + (index // columns) * (height + gutter)
        left = gutter + (index % columns) * (width + gutter)
        grid[top : top + height, left : left + width] = image
    return grid


def save_each(images: torch.Tensor, folder: Path, prefix: str = "") -> list[Path]:
    """One PNG per image: folder/<prefix>0000.png, 0001.png, ...; the numbered PNGs an earlier
    call left there go first, so the folder holds this call's images only."""
    owned = re.compile(rf"{re.escape(prefix)}\d{{4,}}\.png")
    for stale in folder.glob("*.png") if folder.is_dir() else ():
        if owned.fullmatch(stale.name):
            stale.unlink()
    return [
        save_png(pixels, folder / f"{prefix}{index:04d}.png")
        for index, pixels in enumerate(to_uint8(images))
    ]


def load_faces(
    paths: Sequence[Path],
    resolution: int,
    max_pixels: int | None = None,
    detect: DictConfig | None = None,
) -> torch.Tensor:
    """Image files → N×3×R×R in [-1, 1]: decoded as the pack stage decodes them (upright by
    their EXIF orientation, 16-bit scaled, transparency on white), centre square crop,
    antialiased resize. An image that cannot be used (unreadable, corrupt, more pixels than
    `max_pixels`) is a UserError that names it.

    Without `detect` the files should be roughly aligned face crops, as the training data; with
    it (a `data.crop` config) the face is found first, as the mtcnn crop stage finds it, and a
    photo without a confident face is a UserError that names it.
    """
    detector = face_detector() if detect is not None else None
    faces = []
    for path in paths:
        try:
            pixels = decode_rgb(read_bytes(str(path)), max_pixels)
        except ImageError as error:
            raise UserError(f"cannot use image {path}: {error}") from error
        if detect is not None:
            face = detected_face(pixels, detect, detector)
            if face is None:
                raise UserError(
                    f"no face found in {path}: MTCNN saw none with confidence "
                    f"data.crop.min_confidence={detect.min_confidence} or more"
                )
            pixels = face
        faces.append(square_face(pixels, resolution))
    batch = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1.0


def face_pixels(data: bytes, resolution: int, max_pixels: int | None = None) -> np.ndarray:
    """An encoded image as uint8 R×R×3, as `load_faces` reads files (raises ImageError)."""
    return square_face(decode_rgb(data, max_pixels), resolution)


def square_face(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """H×W×3 uint8 → its centre square, antialiased to R×R×3."""
    image = Image.fromarray(pixels)
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((resolution, resolution), Image.Resampling.LANCZOS))
