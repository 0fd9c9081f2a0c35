"""Reading image files safely: bytes from folders or zips, headers, decoding to upright RGB uint8.

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
from functools import lru_cache
from typing import NamedTuple, cast

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
ZIP_SEPARATOR = "::"  # "archive.zip::member/name.jpg" names an image inside a zip

# Why an image was skipped; these names are the keys of metrics/data.json.
UNREADABLE = "unreadable"  # the file cannot be read (permissions, symlink loop, vanished)
EMPTY = "empty"  # a file of 0 bytes (an interrupted copy or download)
NOT_AN_IMAGE = "not_an_image"  # no image format recognises the bytes
CORRUPT = "corrupt"  # recognised, but decoding fails (truncated JPEG, broken PNG)
TOO_LARGE = "too_large"  # declares more pixels than data.max_pixels (or PIL's bomb limit)
TOO_SMALL = "too_small"  # smaller than data.crop.min_size on a side
NO_FACE = "no_face"  # the face detector found no face confident enough
DUPLICATE = "duplicate"  # byte-identical to an image seen earlier

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXIF_MAGIC = b"Exif\x00\x00"  # starts a JPEG's APP1 EXIF segment, and some PNG eXIf chunks
# JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman or
# arithmetic coded): the segment that holds the image's size.
JPEG_FRAME_MARKERS = frozenset(
    (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
)
JPEG_MARKERS_WITHOUT_LENGTH = frozenset((0x01, *range(0xD0, 0xD8)))  # TEM and restarts
JPEG_APP1 = 0xE1
EXIF_SHORT = 3  # the TIFF type of the orientation tag's value

# torchvision 0.29 deprecates its decoders with a warning on every call (TorchCodec replaces
# them); it is the same for every image, and warning 200,000 times costs time.
warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)


class ImageError(Exception):
    """An image that must be skipped; `reason` is one of the module's reason names."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class ImageHeader(NamedTuple):  # a NamedTuple: built in half the time of a frozen dataclass
    """An image's size as it is shown: after its EXIF orientation (1 upright, 2-8 flipped or
    turned; 5-8 turn it by a quarter, so the stored width is the shown height)."""

    width: int
    height: int
    format: str
    orientation: int = 1


def oriented_header(width: int, height: int, format: str, orientation: int) -> ImageHeader:
    """The header of an image stored `width` x `height` with this EXIF orientation."""
    if orientation >= 5:
        width, height = height, width
    return ImageHeader(width, height, format, orientation)


def is_too_large(header: ImageHeader, max_pixels: int | None) -> bool:
    """More pixels than `max_pixels` (None: no limit). Checked before decoding: a 30000 x 30000
    image needs 2.7 GB decoded, however small its file."""
    return max_pixels is not None and header.width * header.height > max_pixels


def within_limit(header: ImageHeader, max_pixels: int | None) -> ImageHeader:
    """The header, or TOO_LARGE when it declares more than `max_pixels` pixels."""
    if is_too_large(header, max_pixels):
        raise ImageError(
            TOO_LARGE,
            f"{header.width}x{header.height} = {header.width * header.height:,} pixels, "
            f"over data.max_pixels={max_pixels:,}",
        )
    return header


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


def read_file_header(path: str, prefix_size: int, max_pixels: int | None = None) -> ImageHeader:
    """Size, format and orientation of an image file, reading only its first `prefix_size`
    bytes when they hold a JPEG's or PNG's; other formats and longer headers go to PIL, whole
    file. TOO_LARGE when it declares more than `max_pixels` pixels.

    Errors and reasons are those of `read_header(read_bytes(path), max_pixels)`, at a seventh
    of the cost for a small JPEG: PIL parses every JPEG segment in Python.
    """
    # A zip member is decompressed whole in any case.
    data = read_bytes(path) if ZIP_SEPARATOR in path else read_prefix(path, prefix_size)
    header = parse_header(data)
    if header is not None:
        return within_limit(header, max_pixels)
    if len(data) == prefix_size:  # a prefix that ends before the header does: PIL reads it all
        data = read_bytes(path)
    return read_header(data, max_pixels)


def parse_header(data: bytes) -> ImageHeader | None:
    """Size and orientation from a JPEG's segments up to its frame header, or a PNG's chunks up
    to its pixels, in the bytes given; None when they do not show it (another format, too few
    bytes, anything odd): then ask PIL."""
    if data.startswith(JPEG_MAGIC):
        return _jpeg_header(data)
    if data.startswith(PNG_MAGIC):
        return _png_header(data)
    return None


def _jpeg_header(data: bytes) -> ImageHeader | None:
    position = 2  # after the start-of-image marker; segments follow, each "FF marker length"
    orientation = 1
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
            return oriented_header(width, height, "JPEG", orientation) if usable else None
        elif marker in (0xD8, 0xD9):  # another start, or the end, before any frame
            return None
        else:
            end = position + 2 + struct.unpack_from(">H", data, position + 2)[0]
            # The first EXIF segment counts, as in PIL.
            if (
                marker == JPEG_APP1
                and orientation == 1
                and data.startswith(EXIF_MAGIC, position + 4)
            ):
                orientation = exif_orientation(data[position + 4 : end])
            position = end
    return None


def _png_header(data: bytes) -> ImageHeader | None:
    """IHDR's size, and the orientation of an eXIf chunk before the pixels (PIL reads those)."""
    if data[12:16] != b"IHDR" or len(data) < 24:
        return None
    width, height = struct.unpack_from(">II", data, 16)
    orientation, position = 1, 8
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        if kind == b"IDAT":
            return oriented_header(width, height, "PNG", orientation) if width and height else None
        if kind == b"eXIf":
            orientation = exif_orientation(data[position + 8 : position + 8 + length])
        position += 12 + length  # length, type, data, CRC
    return None


def exif_orientation(exif: bytes) -> int:
    """The orientation tag (1-8) in EXIF bytes (a TIFF header and its first directory, after an
    optional "Exif" prefix); 1 when absent, out of range or unreadable, as PIL takes it."""
    tiff = exif.removeprefix(EXIF_MAGIC)
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    directory = struct.unpack_from(order + "I", tiff, 4)[0]
    if directory + 2 > len(tiff):
        return 1
    entries = struct.unpack_from(order + "H", tiff, directory)[0]
    for entry in range(directory + 2, min(directory + 2 + 12 * entries, len(tiff) - 11), 12):
        tag, kind, _, value = struct.unpack_from(order + "HHIH", tiff, entry)
        if tag == ExifTags.Base.Orientation:
            return value if kind == EXIF_SHORT and 1 <= value <= 8 else 1
    return 1


def read_header(data: bytes, max_pixels: int | None = None) -> ImageHeader:
    """Size, format and orientation from the header alone, by PIL (no pixel decoding)."""
    return _open(data, max_pixels)[1]


def _open(data: bytes, max_pixels: int | None) -> tuple[Image.Image, ImageHeader]:
    """PIL's lazily opened image and its header, checked against `max_pixels`."""
    if not data:
        raise ImageError(EMPTY, "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Sizes are checked against our limit below; PIL's own (2 x 89 MP) raises.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        orientation = _pil_orientation(image)
    except Image.DecompressionBombError as error:  # not an OSError
        raise ImageError(TOO_LARGE, str(error)) from error
    except UnidentifiedImageError as error:
        raise ImageError(NOT_AN_IMAGE, str(error)) from error
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(CORRUPT, str(error)) from error
    header = oriented_header(image.width, image.height, image.format or "unknown", orientation)
    return image, within_limit(header, max_pixels)


def _pil_orientation(image: Image.Image) -> int:
    # PIL's getexif() on a PNG without EXIF before its pixels decodes them all to look further.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return orientation if orientation in range(1, 9) else 1


def decode_rgb(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Decode to an upright HxWx3 uint8 RGB array, whatever the mode (grey, CMYK, alpha,
    16-bit); TOO_LARGE, before any decoding, when it declares over `max_pixels` pixels."""
    header = parse_header(data)
    if header is None:  # formats other than JPEG and PNG, odd headers: PIL judges
        return _decode_pil(data, max_pixels)
    within_limit(header, max_pixels)
    if header.format == "JPEG":
        try:
            pixels = _decode_jpegs([data])[0]
        except RuntimeError as error:
            raise ImageError(CORRUPT, str(error).splitlines()[-1]) from error
    elif data[24] == 16:  # IHDR's bit depth
        pixels = _decode_png16(data)
    else:
        return _decode_pil(data, max_pixels)
    return _upright(pixels, header.orientation)


def decode_rgb_many(
    datas: Sequence[bytes], max_pixels: int | None = None
) -> list[np.ndarray | ImageError]:
    """`decode_rgb` of each image, or the error that makes it skipped.

    The JPEGs are decoded in one call, which saves torchvision's per-call overhead, 5% of a
    small face's decode time; as one bad JPEG fails that call, they are then decoded one by one.
    Their headers are read first (1.5 us against a 50 us decode), for the size and orientation.
    """
    jpegs: dict[int, int] = {}  # index: orientation, of the JPEGs of a known size within the limit
    for index, data in enumerate(datas):
        header = _jpeg_header(data) if data.startswith(JPEG_MAGIC) else None
        if header is not None and not is_too_large(header, max_pixels):
            jpegs[index] = header.orientation
    results: list[np.ndarray | ImageError | None] = [None] * len(datas)
    if jpegs:
        with contextlib.suppress(RuntimeError):
            decoded = _decode_jpegs([datas[index] for index in jpegs])
            for (index, orientation), pixels in zip(jpegs.items(), decoded, strict=True):
                results[index] = _upright(pixels, orientation)
    for index, result in enumerate(results):
        if result is None:
            try:
                results[index] = decode_rgb(datas[index], max_pixels)
            except ImageError as error:
                results[index] = error
    return cast(list[np.ndarray | ImageError], results)


def _decode_jpegs(datas: Sequence[bytes]) -> list[np.ndarray]:
    """JPEGs to H x W x 3 arrays by libjpeg-turbo through torchvision (about 3x faster than PIL
    here, CMYK and grey included), as stored (no orientation); RuntimeError if any fails."""
    # Imported here: the crop stage reads headers only, and starts 2 s sooner without torch.
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    # torch wants writable buffers: bytearray copies (3 KB for a CelebA face) are cheap.
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB)
    # torchvision returns 3 x H x W over H x W x 3 memory: the permuted view costs no copy.
    return [pixels.permute(1, 2, 0).numpy() for pixels in decoded]


def _decode_png16(data: bytes) -> np.ndarray:
    """A 16-bit PNG by libpng through torchvision, as stored: PIL keeps only the high byte of
    colour ones, which turns 8-bit values kept in 16 bits black."""
    import torch
    from torchvision.io import ImageReadMode, decode_png

    has_alpha = data[25] in (4, 6)  # IHDR colour types grey + alpha, RGB + alpha
    mode = ImageReadMode.RGB_ALPHA if has_alpha else ImageReadMode.RGB
    try:
        values = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
    except RuntimeError as error:
        raise ImageError(CORRUPT, str(error).splitlines()[-1]) from error
    pixels = _eight_bit(values.permute(1, 2, 0).numpy())
    return _to_rgb(Image.fromarray(pixels)) if has_alpha else pixels


def _decode_pil(data: bytes, max_pixels: int | None) -> np.ndarray:
    image, header = _open(data, max_pixels)
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(CORRUPT, str(error)) from error
    return _upright(_to_rgb(image), header.orientation)


# EXIF orientation: (swap rows and columns, then flip rows, flip columns) to show it upright.
UPRIGHT = {
    1: (False, False, False),
    2: (False, False, True),
    3: (False, True, True),
    4: (False, True, False),
    5: (True, False, False),
    6: (True, False, True),
    7: (True, True, True),
    8: (True, True, False),
}


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    if orientation == 1:  # nearly every image: no copy
        return pixels
    transpose, flip_rows, flip_columns = UPRIGHT[orientation]
    if transpose:
        pixels = pixels.transpose(1, 0, 2)
    return np.ascontiguousarray(pixels[:: -1 if flip_rows else 1, :: -1 if flip_columns else 1])


def _eight_bit(values: np.ndarray) -> np.ndarray:
    """16-bit (or float) values as 8-bit ones by their declared depth: value / 257 maps
    0..65535 onto 0..255, and a widened 8-bit value v * 257 back to v. When every value fits in
    8 bits, the file holds 8-bit data in 16-bit samples: kept as they are, not scaled to black."""
    scaled = values if values.max(initial=0) <= 255 else values / 257.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit, 32-bit or float grey: PIL's convert("RGB") would clip them.
        grey = _eight_bit(np.asarray(image))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as an image viewer shows them on a page.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"))
