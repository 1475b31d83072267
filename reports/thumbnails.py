"""Micrograph and reference thumbnails inlined as data URIs, so a report needs no file beside it.

Stored images are decoded with Pillow and re-encoded as small PNGs: the report stays light
whatever the source format (TIFF, 16-bit, huge scans), carries no embedded metadata, and
bytes that are no image become a placeholder instead of a broken <img>.
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

SAMPLE_SIDE = 1024  # pixels; shown at about 620 px and zoomable, as VLKB stores it
REFERENCE_SIDE = 320  # pixels; shown at about 160 px


@dataclass(frozen=True)
class Thumbnail:
    """An inline image, or the reason there is none (never a broken <img>)."""

    src: str | None
    missing_reason: str = ""
    size: tuple[int, int] | None = None  # width and height of the inline picture


def png_thumbnail(data: bytes, max_side: int) -> bytes:
    """The image scaled down to fit max_side, as PNG bytes; raises on bytes that are no image."""
    return _scaled_png(data, max_side)[0]


def _scaled_png(data: bytes, max_side: int) -> tuple[bytes, tuple[int, int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            picture = _displayable(image)
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue(), picture.size


def _displayable(image: Image.Image) -> Image.Image:
    """An 8-bit RGB(A) copy; 16-bit and float greyscale are stretched to their own range."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        low, high = image.getextrema()
        span = (high - low) or 1
        grey = image.convert("F").point(lambda v: (v - low) * 255.0 / span)
        return grey.convert("L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        return image.convert("RGBA")
    return image.convert("RGB")


def data_uri(png: bytes) -> str:
    """PNG bytes as a data URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class Thumbnails:
    """Decode each stored image once, and only when the report actually shows it."""

    def __init__(self, images: Mapping[str, bytes]) -> None:
        self._images = images
        self._cache: dict[tuple[str, int], Thumbnail] = {}

    def get(self, sha256: Any, max_side: int = REFERENCE_SIDE) -> Thumbnail:
        """The thumbnail of the image with this SHA-256, or a placeholder saying why not."""
        key = (str(sha256), max_side)
        if key not in self._cache:
            self._cache[key] = self._make(key[0], max_side)
        return self._cache[key]

    def _make(self, sha256: str, max_side: int) -> Thumbnail:
        """Decode and encode one image; failures become a placeholder, never a failed report."""
        data = self._images.get(sha256) if sha256 else None
        if not data:
            return Thumbnail(None, "image not available")
        try:
            png, size = _scaled_png(data, max_side)
            return Thumbnail(data_uri(png), size=size)
        except Exception:  # any undecodable or oversized input is shown as missing, not fatal
            return Thumbnail(None, "stored image could not be decoded")
