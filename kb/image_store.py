"""Content-addressed image records: a thumbnail for every image, full bytes for references."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image
from sqlmodel import Session

from kb.errors import DatabaseError
from kb.tables import ImageRecord

# The stored picture of a sample, which reports show large (zoomable) under their overlays:
# phase maps of 640 x 480 keep every pixel; larger images are scaled to this side.
THUMBNAIL_PX = 1024


def thumbnail_png(image: Image.Image) -> bytes:
    """A small PNG that lets a report show the image even after the file has moved."""
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def store_image(
    session: Session, sha256: str, image: Image.Image, fmt: str, data: bytes | None = None
) -> ImageRecord:
    """Insert the image once; later calls with the same SHA-256 return the existing row."""
    return _existing(session, sha256, data) or _insert(
        session, sha256, image.width, image.height, fmt, thumbnail_png(image), data
    )


def add_image(
    session: Session, sha256: str, width: int, height: int, fmt: str, thumbnail: bytes
) -> ImageRecord:
    """store_image for an image whose thumbnail was made elsewhere (by whoever decoded it, a
    Ray worker say), so the writer holding the lock only inserts."""
    return _existing(session, sha256, None) or _insert(
        session, sha256, width, height, fmt, thumbnail, None
    )


def _existing(session: Session, sha256: str, data: bytes | None) -> ImageRecord | None:
    """The stored row, given its original bytes if it lacked them (a sample that became a
    reference); None when the image is new."""
    existing = session.get(ImageRecord, sha256)
    if existing is not None and data is not None and existing.data is None:
        existing.data = data
        session.add(existing)
    return existing


def _insert(
    session: Session, sha256: str, width: int, height: int, fmt: str, thumbnail: bytes,
    data: bytes | None,
) -> ImageRecord:
    record = ImageRecord(
        sha256=sha256, width=width, height=height, format=fmt, thumbnail_png=thumbnail, data=data
    )
    session.add(record)
    return record


def store_image_file(session: Session, path: Path, sha256: str, keep_bytes: bool) -> ImageRecord:
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return store_image(
            session, sha256, image, image.format or "unknown", data if keep_bytes else None
        )


def stored_image(session: Session, sha256: str) -> ImageRecord | None:
    """The stored image with this SHA-256, if any, refusing bytes that no longer match it."""
    record = session.get(ImageRecord, sha256)
    if record is not None and record.data is not None and (
        hashlib.sha256(record.data).hexdigest() != sha256
    ):
        raise DatabaseError(
            f"image {sha256[:12]}: its stored bytes do not match its SHA-256 (replaced behind "
            "the tool's back); run `kb audit verify`"
        )
    return record
