"""Reading sample micrographs safely: every way a file can be wrong becomes one clear error."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from kb.errors import ImageError

MAX_PIXELS = 100_000_000  # 100 megapixels: far beyond any micrograph, far below a bomb
MIN_SIDE = 16  # pixels; below this there is nothing to measure or embed
MAX_FILE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Sample:
    """A decoded micrograph, its content address and how it was converted to 8-bit RGB."""

    path: Path
    sha256: str
    image: Image.Image  # always mode RGB
    format: str
    conversion: str | None = None  # e.g. "palette to RGB"; None when it was RGB already


def load_sample(path: Path) -> Sample:
    """Read, hash and decode one image file into 8-bit RGB; raise ImageError naming the file."""
    return decode_sample(path, read_image_bytes(path))


def read_image_bytes(path: Path) -> bytes:
    """The bytes of a regular file, or ImageError naming it: a FIFO, socket or device is
    refused without being read (reading a FIFO would wait forever), and every OS error
    (a symlink loop, a name too long, an I/O error) becomes one line.
    """
    try:
        refuse_special(path, os.stat(path).st_mode)
        # O_NONBLOCK: should the path turn into a FIFO after the stat, opening it still
        # returns at once, and the fstat below refuses it before anything is read.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as file:
            status = os.fstat(file.fileno())
            refuse_special(path, status.st_mode)
            if status.st_size > MAX_FILE_BYTES:
                raise ImageError(
                    f"{path}: file is {status.st_size / 2**20:.0f} MiB, larger than VLKB accepts"
                )
            data = file.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ImageError(f"{path}: file grew past {MAX_FILE_BYTES // 2**20} MiB while read")
        return data
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied; make the file readable") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a NUL byte in the name
        raise ImageError(f"{path}: not a usable file name ({exc})") from None


def refuse_special(path: Path, mode: int) -> None:
    """ImageError unless mode is a regular file's: a folder, FIFO, socket or device is not."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise ImageError(f"{path}: is a folder, not an image file")
    kind = (
        "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a regular file"
    )
    raise ImageError(f"{path}: is {kind}, not an image file; it was not read")


def decode_sample(path: Path, data: bytes) -> Sample:
    """Decode bytes already read (the web upload path shares this with files on disk)."""
    if not data:
        raise ImageError(f"{path}: file is empty")
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            # Pillow warns from its own limit (about 89 megapixels) up; VLKB applies
            # MAX_PIXELS itself, so that the limit it states is the one applied.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            pixels = image.width * image.height
            if pixels > MAX_PIXELS:
                raise ImageError(_too_large(path, f"{image.width}x{image.height} pixels "))
            if min(image.width, image.height) < MIN_SIDE:
                raise ImageError(
                    f"{path}: {image.width}x{image.height} pixels is smaller than the "
                    f"{MIN_SIDE} x {MIN_SIDE} VLKB judges; use the full-size micrograph"
                )
            fmt = image.format or "unknown"
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(
            f"{path}: not an image VLKB can read; use PNG, JPEG, TIFF or BMP"
        ) from None
    except Image.DecompressionBombError:  # Pillow's hard stop, far above MAX_PIXELS
        raise ImageError(_too_large(path)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: image data is damaged or truncated ({exc})") from None
    if image.mode == "F":
        raise ImageError(f"{path}: floating-point image; export the micrograph as 8- or 16-bit")
    rgb, conversion = to_rgb(image)
    return Sample(path=path, sha256=sha256, image=rgb, format=fmt, conversion=conversion)


def _too_large(path: Path, size: str = "") -> str:
    return (
        f"{path}: {size}over the {MAX_PIXELS / 1e6:g} megapixel limit "
        "(possible decompression bomb); downscale the micrograph"
    )


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """8-bit RGB for every mode a lab is likely to save; transparent areas become black."""
    mode = image.mode
    if mode == "RGB":
        return image, None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
        scaled = (array / 257.0).round().astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB"), f"{mode} 16-bit grey scaled to 8-bit"
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        flat = Image.alpha_composite(background, rgba).convert("RGB")
        return flat, f"{mode} with transparency flattened onto black"
    if mode == "CMYK":
        return image.convert("RGB"), "CMYK converted to RGB (colours approximate)"
    return image.convert("RGB"), f"{mode} converted to RGB"
