"""Image files that broke the data stages, written into a test's tmp folder from real faces (not a
test module: the data-stage and inference tests import from here). Never commit their output.

  bomb PNG       a header that declares 30000 x 30000 pixels over a few bytes of data
  huge PNG       a valid 13000 x 13000 grey PNG, about 190 kB, a face in its corner
  oriented file  the face stored turned, with the EXIF orientation that shows it upright
  16-bit PNG     grey or RGB, written by hand: PIL writes no 16-bit colour PNG
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREY, PNG_RGB = 0, 2  # IHDR colour types
# EXIF orientation -> the turn that stores an upright picture so that the tag shows it upright.
STORED_TURN = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr)


def write_bomb_png(path: Path) -> Path:
    """A PNG whose header declares 30000 x 30000 RGB pixels (2.7 GB decoded); 100 bytes."""
    pixels = zlib.compress(b"\x00" * 1000)
    path.write_bytes(
        png_header(30000, 30000, 8, PNG_RGB) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")
    )
    return path


def write_huge_png(path: Path, face: Image.Image, side: int = 13000) -> Path:
    """A valid side x side grey PNG, the face in its top-left corner and black elsewhere,
    compressed row by row (the whole image would take 169 MB here)."""
    grey = np.asarray(face.convert("L"))
    compressor = zlib.compressobj()
    chunks = []
    for row in range(side):
        line = np.zeros(side + 1, np.uint8)  # filter byte 0, then the row's pixels
        if row < grey.shape[0]:
            line[1 : 1 + grey.shape[1]] = grey[row]
        chunks.append(compressor.compress(line.tobytes()))
    chunks.append(compressor.flush())
    path.write_bytes(
        png_header(side, side, 8, PNG_GREY)
        + png_chunk(b"IDAT", b"".join(chunks))
        + png_chunk(b"IEND", b"")
    )
    return path


def save_oriented(face: Image.Image, path: Path, orientation: int) -> Path:
    """The face stored turned, tagged with the EXIF orientation (3, 6 or 8) that turns it back."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    face.transpose(STORED_TURN[orientation]).save(path, exif=exif.tobytes())
    return path


def save_png16(values: np.ndarray, path: Path) -> Path:
    """uint16 H x W (grey) or H x W x 3 (RGB) values as a 16-bit PNG."""
    height, width = values.shape[:2]
    colour_type = PNG_GREY if values.ndim == 2 else PNG_RGB
    rows = values.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    path.write_bytes(
        png_header(width, height, 16, colour_type)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )
    return path
