"""Photos that requests upload: checked before anything is decoded, then decoded as faces.

The checks run in this order, each refusing with an HTTP status and a one-line reason:
  * the request body's size (`BodyLimit`, before the body is read) and each photo's size;
  * the type, from the photo's first bytes (never its name): JPEG, PNG or WebP;
  * the pixel count, from the header, which PIL reads without decoding, so a decompression
    bomb (a small file that claims a huge image) is refused before it costs memory.
Only then is a photo decoded, turned upright by its EXIF orientation and cut to a face.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig
from PIL import Image, ImageOps
from starlette.responses import JSONResponse

MB, KB = 1_000_000, 1_000  # decimal, as the limits in the config read
# What PIL raises on a file it cannot parse (UnidentifiedImageError is an OSError).
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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

    @classmethod
    def from_config(cls, limits: DictConfig) -> UploadLimits:
        return cls(
            max_files=int(limits.max_files),
            max_bytes=round(float(limits.max_upload_mb) * MB),
            max_pixels=round(float(limits.max_megapixels) * 1e6),
            max_form_bytes=round(float(limits.max_form_kb) * KB),
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


def decode_face(photo: Photo, resolution: int) -> np.ndarray:
    """A checked photo as a resolution² uint8 RGB face: upright by its EXIF orientation, its
    centre square, resized with antialiasing (faces should be roughly aligned crops)."""
    try:
        with Image.open(io.BytesIO(photo.data), formats=[photo.format]) as image:
            # JPEG only: decode at 1/2, 1/4 or 1/8 scale when that still covers the face
            image.draft("RGB", (resolution, resolution))
            upright = ImageOps.exif_transpose(image).convert("RGB")
    except UNREADABLE as error:
        raise Refusal(400, f"{photo.name} cannot be decoded ({error})") from None
    size = (resolution, resolution)
    return np.asarray(ImageOps.fit(upright, size, Image.Resampling.LANCZOS))


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413, by its Content-Length
    before it is read, or, without one (chunked), as soon as it grows past the limit, so no
    upload is spooled to disk beyond it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self.refuse(scope, receive, send)
            return
        received, over, started = 0, False, False

        async def counting_receive() -> Message:
            nonlocal received, over
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                over = True
                raise BodyTooLarge
            return message

        async def send_unless_over(message: Message) -> None:
            nonlocal started
            if over:  # the app's answer to the aborted read (FastAPI: 400) is replaced
                return
            started = True
            await send(message)

        with contextlib.suppress(BodyTooLarge):  # raised into the app when the body ran over
            await self.app(scope, counting_receive, send_unless_over)
        if over and not started:
            await self.refuse(scope, receive, send)

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = f"the request is larger than the limit of {self.max_bytes / MB:.3g} MB"
        await JSONResponse({"detail": reason}, status_code=413)(scope, receive, send)
