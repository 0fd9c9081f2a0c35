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
from PIL import Image

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
    paths: Sequence[Path], resolution: int, max_pixels: int | None = None
) -> torch.Tensor:
    """Image files → N×3×R×R in [-1, 1]: decoded as the pack stage decodes them (upright by
    their EXIF orientation, 16-bit scaled, transparency on white), centre square crop,
    antialiased resize. An image that cannot be used (unreadable, corrupt, more pixels than
    `max_pixels`) is a UserError that names it.

    Faces should already be roughly aligned crops (as in the training data); this does no
    detection.
    """
    faces = []
    for path in paths:
        try:
            faces.append(face_pixels(read_bytes(str(path)), resolution, max_pixels))
        except ImageError as error:
            raise UserError(f"cannot use image {path}: {error}") from error
    batch = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1.0


def face_pixels(data: bytes, resolution: int, max_pixels: int | None = None) -> np.ndarray:
    """An encoded image as uint8 R×R×3, as `load_faces` reads files (raises ImageError)."""
    image = Image.fromarray(decode_rgb(data, max_pixels))
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((resolution, resolution), Image.Resampling.LANCZOS))
