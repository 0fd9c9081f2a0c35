"""Reading image files safely: bytes from folders or zips, headers, decoding to RGB uint8.

Every failure is one of a few named reasons, so that stages can skip an image and count why
instead of crashing on the one bad file among 200,000.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
ZIP_SEPARATOR = "::"  # "archive.zip::member/name.jpg" names an image inside a zip

# Why an image was skipped; these names are the keys of metrics/data.json.
UNREADABLE = "unreadable"  # the file cannot be read (permissions, symlink loop, vanished)
NOT_AN_IMAGE = "not_an_image"  # no image format recognises the bytes
CORRUPT = "corrupt"  # recognised, but decoding fails (truncated JPEG, broken PNG)
TOO_SMALL = "too_small"  # smaller than data.crop.min_size on a side
NO_FACE = "no_face"  # the face detector found no face confident enough
DUPLICATE = "duplicate"  # byte-identical to an image seen earlier

JPEG_MAGIC = b"\xff\xd8\xff"


class ImageError(Exception):
    """An image that must be skipped; `reason` is one of the module's reason names."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class ImageHeader:
    width: int
    height: int
    format: str


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


@lru_cache(maxsize=8)
def _open_zip(path: str) -> zipfile.ZipFile:
    # One handle per archive per process: reopening a 1.4 GB zip for every member is slow.
    return zipfile.ZipFile(path)


def read_bytes(path: str) -> bytes:
    """The bytes of an image file, or of a member of a zip ("archive.zip::member")."""
    try:
        if ZIP_SEPARATOR in path:
            archive, member = path.split(ZIP_SEPARATOR, 1)
            return _open_zip(archive).read(member)
        return Path(path).read_bytes()
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise ImageError(UNREADABLE, f"{path}: {error}") from error


def read_header(data: bytes) -> ImageHeader:
    """Size and format from the header alone (no pixel decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        return ImageHeader(image.width, image.height, image.format or "unknown")
    except UnidentifiedImageError as error:
        raise ImageError(NOT_AN_IMAGE, str(error)) from error
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(CORRUPT, str(error)) from error


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode to an HxWx3 uint8 RGB array, whatever the mode (grey, CMYK, alpha, 16-bit)."""
    if data.startswith(JPEG_MAGIC):
        try:
            # libjpeg-turbo through torchvision: about 3x faster than PIL here, CMYK and grey included.
            pixels = decode_jpeg(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB
            )
            return pixels.permute(1, 2, 0).numpy()
        except RuntimeError as error:
            raise ImageError(CORRUPT, str(error).splitlines()[-1]) from error
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError as error:
        raise ImageError(NOT_AN_IMAGE, str(error)) from error
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(CORRUPT, str(error)) from error
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit or float grey: PIL's convert("RGB") would clip, so rescale to the full 0..255.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        grey = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as an image viewer shows them on a page.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"))
