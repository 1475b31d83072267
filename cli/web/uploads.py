"""Receiving micrograph uploads for `kb serve`: streamed to disk under a size limit, sniffed.

A request body is never held in memory: each file part is written to a temporary file as it
arrives and refused (413) the moment it passes the per-file limit. Files are named by the
SHA-256 of their content and the image type sniffed from it; the client's file name is only
ever text (shown and recorded), never part of a path on this machine.
"""

from __future__ import annotations

import hashlib
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from PIL import Image, UnidentifiedImageError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

MB = 1_000_000  # limits are written in decimal units, as human_bytes prints them
FIELD = "files"
SNIFFED_TYPES = {"PNG": "png", "JPEG": "jpg", "TIFF": "tif", "BMP": "bmp"}  # Pillow format -> ext
MAX_FIELD_BYTES = 64 * 1024  # a non-file form field; the API takes its options in the query
RECORD_PREFIX = "upload:"  # how an uploaded sample's path is recorded: upload:<client's name>


class UploadError(Exception):
    """The request as a whole cannot be taken: an HTTP status and one readable line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """One received file: where it lies, what it is, or why it was refused before judging."""

    index: int
    name: str  # the client's file name, cleaned; text only
    path: Path | None = None  # <folder>/<index>/<sha256>.<ext> once sniffed as an image
    sha256: str = ""
    size: int = 0
    error: str | None = None  # refused before qualification, in one line
    unsupported: bool = False  # refused because the content is not an accepted image type

    @property
    def record_name(self) -> str:
        """The sample path stored in the audit log for this upload."""
        return f"{RECORD_PREFIX}{self.name}"


def clean_name(raw: str) -> str:
    """The last part of a client's file name, without control characters, for display only."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    return name[:120] or "unnamed"


def human_bytes(count: int) -> str:
    """A byte count as people write limits: 50 MB, 1.5 kB."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count} bytes"


@dataclass
class _Receiver:
    """python-multipart callbacks that stream each file part to its own temporary file."""

    folder: Path
    max_file_bytes: int
    max_files: int
    uploads: list[Upload] = field(default_factory=list)
    finished: bool = False
    _headers: dict[bytes, bytes] = field(default_factory=dict)
    _header_name: bytes = b""
    _header_value: bytes = b""
    _current: Upload | None = None
    _handle: IO[bytes] | None = None
    _hash: Any = None
    _field_bytes: int = 0

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._headers = {}
        self._current = None
        self._field_bytes = 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            return  # a plain form field: counted and ignored (options travel in the query)
        if name != FIELD:
            raise UploadError(400, f"unexpected file field {name!r}; send micrographs as {FIELD!r}")
        filename = options[b"filename"].decode("utf-8", "replace")
        if not filename:
            return  # a browser's empty file input: no file was chosen
        if len(self.uploads) >= self.max_files:
            raise UploadError(413, f"too many files in one request; send at most {self.max_files}")
        upload = Upload(index=len(self.uploads), name=clean_name(filename))
        part = self.folder / str(upload.index)
        part.mkdir()
        upload.path = part / "received"
        self._handle = upload.path.open("wb")
        self._hash = hashlib.sha256()
        self._current = upload
        self.uploads.append(upload)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._current is None or self._handle is None:
            self._field_bytes += len(chunk)
            if self._field_bytes > MAX_FIELD_BYTES:
                raise UploadError(413, "a form field is too large; options go in the query")
            return
        self._current.size += len(chunk)
        if self._current.size > self.max_file_bytes:
            raise UploadError(
                413,
                f"{self._current.name}: larger than the upload limit of "
                f"{human_bytes(self.max_file_bytes)} per file",
            )
        self._handle.write(chunk)
        self._hash.update(chunk)

    def on_part_end(self) -> None:
        if self._current is not None and self._handle is not None:
            self._handle.close()
            self._current.sha256 = self._hash.hexdigest()
        self._handle = None
        self._current = None

    def on_end(self) -> None:
        self.finished = True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


async def receive_uploads(
    request: Request, folder: Path, max_file_bytes: int, max_files: int
) -> list[Upload]:
    """Stream the multipart body into folder; every file is then sniffed and renamed."""
    content_type = request.headers.get("content-type", "")
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError(415, f"send multipart/form-data with the micrographs in field {FIELD!r}")
    declared = request.headers.get("content-length")
    ceiling = max_files * (max_file_bytes + MAX_FIELD_BYTES)
    if declared is not None and declared.isdigit() and int(declared) > ceiling:
        raise UploadError(
            413,
            f"request of {human_bytes(int(declared))} is over the limit of {max_files} files "
            f"of {human_bytes(max_file_bytes)} each",
        )
    receiver = _Receiver(folder, max_file_bytes, max_files)
    try:
        parser = MultipartParser(params[b"boundary"], receiver.callbacks())  # type: ignore[arg-type]
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    finally:
        receiver.close()
    if not receiver.finished:
        raise UploadError(400, "the multipart body ended early; send the request again")
    if not receiver.uploads:
        raise UploadError(400, f"no files: send one or more micrographs in field {FIELD!r}")
    for upload in receiver.uploads:
        sniff(upload)
    return receiver.uploads


def sniff(upload: Upload) -> None:
    """Name the file by content and sniffed type; refuse what is no accepted image."""
    assert upload.path is not None
    received = upload.path
    if upload.size == 0:
        upload.error, upload.path = f"{upload.record_name}: file is empty", None
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # only the type matters here; decoding warns later
            with Image.open(received, formats=list(SNIFFED_TYPES)) as image:
                kind = image.format or ""
    except UnidentifiedImageError:
        upload.error = (
            f"{upload.record_name}: not a PNG, JPEG, TIFF or BMP image (judged by its content, "
            "not its name)"
        )
        upload.unsupported = True
    except Image.DecompressionBombError:
        upload.error = f"{upload.record_name}: too many pixels (possible decompression bomb)"
    except (OSError, SyntaxError, ValueError) as exc:
        upload.error = f"{upload.record_name}: image header is damaged ({exc})"
    if upload.error is not None:
        upload.path = None
        return
    upload.path = received.rename(received.with_name(f"{upload.sha256}.{SNIFFED_TYPES[kind]}"))
