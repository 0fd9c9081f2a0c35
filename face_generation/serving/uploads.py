"""Photos that requests upload: checked before anything is decoded, then decoded as faces.

The checks run in this order, each refusing with an HTTP status and a one-line reason:
  * the request body's size (`guard.RequestGuard`, before the body is read) and each photo's;
  * the type, from the photo's first bytes (never its name): JPEG, PNG or WebP;
  * the pixel count, from the header, which PIL reads without decoding, so a decompression
    bomb (a small file that claims a huge image) is refused before it costs memory.
Only then is a photo decoded, by `runtime.images.face_pixels`, as every other path decodes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from face_generation.data.images import ImageError
from face_generation.runtime.images import face_pixels

MB, KB = 1_000_000, 1_000  # decimal, as the limits in the config read
# What PIL raises on a file it cannot parse (UnidentifiedImageError is an OSError).
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError)


class Refusal(Exception):
    """A request the service will not serve: its HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class UploadLimits:
    max_files: int  # photos per request
    max_bytes: int  # bytes per photo
    max_pixels: int  # pixels per photo, from its header
    max_form_bytes: int  # the text fields of a multipart request
    max_json_bytes: int  # a JSON request (a few numbers)

    @classmethod
    def from_config(cls, limits: DictConfig) -> UploadLimits:
        return cls(
            max_files=int(limits.max_files),
            max_bytes=round(float(limits.max_upload_mb) * MB),
            max_pixels=round(float(limits.max_megapixels) * 1e6),
            max_form_bytes=round(float(limits.max_form_kb) * KB),
            max_json_bytes=round(float(limits.max_json_kb) * KB),
        )

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: every photo at its limit plus the text fields."""
        return self.max_files * self.max_bytes + self.max_form_bytes


@dataclass(frozen=True)
class Photo:
    name: str  # the uploaded file name, for messages only: never used as a path
    data: bytes
    format: str  # PIL's name of the format its first bytes show


def sniff_format(data: bytes) -> str | None:
    """JPEG, PNG or WEBP from the file's signature; None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def display_name(filename: str | None) -> str:
    """An uploaded file's name as messages show it: printable, one line, at most 60 characters."""
    name = "".join(c for c in (filename or "photo") if c.isprintable()) or "photo"
    return name if len(name) <= 60 else name[:57] + "..."


def check_photo(name: str, data: bytes, limits: UploadLimits) -> Photo:
    """The photo when its size, type and pixel count pass the limits; a Refusal otherwise."""
    if len(data) > limits.max_bytes:
        raise Refusal(413, f"{name} is larger than the limit of {limits.max_bytes / MB:g} MB")
    image_format = sniff_format(data)
    if image_format is None:
        raise Refusal(415, f"{name} is not a JPEG, PNG or WebP image")
    megapixels = limits.max_pixels / 1e6
    try:
        with Image.open(io.BytesIO(data), formats=[image_format]) as image:  # header only
            width, height = image.size
    except Image.DecompressionBombError:
        raise Refusal(
            413, f"{name} claims more pixels than the limit of {megapixels:g} megapixels"
        ) from None
    except UNREADABLE as error:
        raise Refusal(400, f"{name} is not a readable {image_format} image ({error})") from None
    if width * height > limits.max_pixels:
        raise Refusal(
            413,
            f"{name} is {width}×{height} pixels, more than the limit of {megapixels:g} megapixels",
        )
    return Photo(name, data, image_format)


def decode_face(photo: Photo, resolution: int, limits: UploadLimits) -> np.ndarray:
    """A checked photo as a resolution² uint8 RGB face, decoded by `face_pixels`, the one
    decoder of the CLI, the MLflow model and the pipeline (16-bit, palette, transparency on
    white, CMYK, EXIF orientation: the same pixels everywhere)."""
    try:
        return face_pixels(photo.data, resolution, limits.max_pixels)
    except ImageError as error:
        raise Refusal(400, f"{photo.name} cannot be decoded ({error})") from None
