"""Reading image files safely: bytes from folders or zips, headers, decoding to RGB uint8.

Every failure is one of a few named reasons, so that stages can skip an image and count why
instead of crashing on the one bad file among 200,000.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import numpy as np
from PIL import Image, UnidentifiedImageError

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
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman or
# arithmetic coded): the segment that holds the image's size.
JPEG_FRAME_MARKERS = frozenset(
    (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
)
JPEG_MARKERS_WITHOUT_LENGTH = frozenset((0x01, *range(0xD0, 0xD8)))  # TEM and restarts

# torchvision 0.29 deprecates its decoders with a warning on every call (TorchCodec replaces
# them); it is the same for every image, and warning 200,000 times costs time.
warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)


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
        with open(path, "rb", buffering=0) as file:  # unbuffered: half the time of Path.read_bytes
            return file.readall()
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise ImageError(UNREADABLE, f"{path}: {error}") from error


def read_prefix(path: str, size: int) -> bytes:
    """The first `size` bytes of an image file (fewer if it is shorter)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            return os.read(descriptor, size)
        finally:
            os.close(descriptor)
    except OSError as error:
        raise ImageError(UNREADABLE, f"{path}: {error}") from error


def read_file_header(path: str, prefix_size: int) -> ImageHeader:
    """Size and format of an image file, reading only its first `prefix_size` bytes when they
    hold a JPEG's or PNG's size; other formats and longer headers go to PIL, whole file.

    Errors and reasons are those of `read_header(read_bytes(path))`, at a seventh of the cost
    for a small JPEG: PIL parses every JPEG segment in Python.
    """
    if ZIP_SEPARATOR in path:
        data = read_bytes(path)  # a zip member is decompressed whole in any case
        return parse_header(data) or read_header(data)
    prefix = read_prefix(path, prefix_size)
    header = parse_header(prefix)
    if header is not None:
        return header
    return read_header(prefix if len(prefix) < prefix_size else read_bytes(path))


def parse_header(data: bytes) -> ImageHeader | None:
    """Size from a JPEG's frame header or a PNG's IHDR chunk in the bytes given, or None when
    they do not show it (another format, too few bytes, anything odd): then ask PIL."""
    if data.startswith(JPEG_MAGIC):
        return _jpeg_header(data)
    if data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack_from(">II", data, 16)
        return ImageHeader(width, height, "PNG") if width and height else None
    return None


def _jpeg_header(data: bytes) -> ImageHeader | None:
    position = 2  # after the start-of-image marker; segments follow, each "FF marker length"
    while position + 10 <= len(data):  # room for a frame header's size and component count
        if data[position] != 0xFF:
            return None  # no marker where one must be: PIL judges the file
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte before the marker
            position += 1
        elif marker in JPEG_MARKERS_WITHOUT_LENGTH:
            position += 2
        elif marker in JPEG_FRAME_MARKERS:
            height, width, components = struct.unpack_from(">HHB", data, position + 5)
            # Height 0 (set later by a DNL marker) or odd channel counts: PIL judges.
            usable = width > 0 and height > 0 and components in (1, 3, 4)
            return ImageHeader(width, height, "JPEG") if usable else None
        elif marker in (0xD8, 0xD9):  # another start, or the end, before any frame
            return None
        else:
            position += 2 + struct.unpack_from(">H", data, position + 2)[0]
    return None


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
            return _decode_jpegs([data])[0]
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


def decode_rgb_many(datas: Sequence[bytes]) -> list[np.ndarray | ImageError]:
    """`decode_rgb` of each image, or the error that makes it skipped.

    The JPEGs are decoded in one call, which saves torchvision's per-call overhead, 5% of a
    small face's decode time; as one bad JPEG fails that call, they are then decoded one by one.
    """
    jpegs = [index for index, data in enumerate(datas) if data.startswith(JPEG_MAGIC)]
    results: list[np.ndarray | ImageError | None] = [None] * len(datas)
    if jpegs:
        with contextlib.suppress(RuntimeError):
            for index, pixels in zip(jpegs, _decode_jpegs([datas[i] for i in jpegs]), strict=True):
                results[index] = pixels
    for index, result in enumerate(results):
        if result is None:
            try:
                results[index] = decode_rgb(datas[index])
            except ImageError as error:
                results[index] = error
    return cast(list[np.ndarray | ImageError], results)


def _decode_jpegs(datas: Sequence[bytes]) -> list[np.ndarray]:
    """JPEGs to H x W x 3 arrays by libjpeg-turbo through torchvision (about 3x faster than PIL
    here, CMYK and grey included); RuntimeError if any of them fails."""
    # Imported here: the crop stage reads headers only, and starts 2 s sooner without torch.
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    # torch wants writable buffers: bytearray copies (3 KB for a CelebA face) are cheap.
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB)
    # torchvision returns 3 x H x W over H x W x 3 memory: the permuted view costs no copy.
    return [pixels.permute(1, 2, 0).numpy() for pixels in decoded]


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
