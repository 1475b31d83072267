"""Render qualification documents as self-contained HTML reports, and write them safely.

Reports are read by auditors months later, possibly offline and on paper: one file with
inline CSS, inline SVG and images as data URIs, nothing fetched from anywhere. The input is
the plain qualification document (the `kb qualify --json` shape), never engine objects.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from reports.batch import VERDICT_ORDER, batch_view, check_relative
from reports.filters import FILTERS
from reports.micrograph import sample_micrograph
from reports.thumbnails import REFERENCE_SIDE, Thumbnails
from reports.view import feedback_time, qualification_view


@cache
def environment() -> jinja2.Environment:
    """One shared environment; autoescape always on, since prompts and paths are user text."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("reports", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(FILTERS)
    env.globals["VERDICTS"] = VERDICT_ORDER
    env.globals["feedback_time"] = feedback_time
    return env


def render_qualification(
    document: dict[str, Any],
    images: Mapping[str, bytes],
    feedback: Sequence[dict[str, Any]] = (),
    chain: Mapping[str, Any] | None = None,
) -> str:
    """One qualification as an HTML report.

    images: SHA-256 -> bytes, looked up by sample.sha256 for the micrograph and by each
    closest reference's sha256; any format Pillow reads; an image not given (or not
    decodable) shows as a placeholder. feedback: expert entries (node, verdict, comment,
    expert, time), shown beside the machine verdict of their node, never in its place.
    chain: the record's audit-chain entry (hash, seq), so a printed report can be tied to
    `kb audit verify`; None for a document that is not stored.
    """
    view = qualification_view(document, images, feedback)
    return (
        environment()
        .get_template("qualification.html.j2")
        .render(
            view=view,
            doc=document,
            chain=chain,
            thumbnail=lambda sha: view.thumbnails.get(sha, REFERENCE_SIDE),
        )
    )


def render_micrograph(document: dict[str, Any], images: Mapping[str, bytes]) -> str:
    """The sample of one qualification shown large with its switchable overlays, as an HTML
    fragment for a page of its own (the web's qualification page); the report has the same."""
    view = sample_micrograph(document, Thumbnails(images))
    return environment().get_template("micrograph.html.j2").render(view=view, doc=document)


def render_batch_index(documents: Sequence[dict[str, Any]], links: Mapping[int, str]) -> str:
    """A summary of a multi-image run: samples x assessments, counts, how many need review.

    links: qualification id -> relative href of its report. An absolute URL or path is
    refused (ValueError), since the index must open offline next to the reports it lists.
    """
    check_relative(links)
    view = batch_view(documents, links)
    return environment().get_template("batch_index.html.j2").render(view=view)


def write_report(path: str | os.PathLike[str], html: str) -> Path:
    """Write the report atomically: readers see the old file or the new one, never half.

    The temporary file sits beside the target so os.replace stays on one file system; it
    is created with the usual permissions (0666 less the umask), unlike mkstemp's 0600,
    so others can read the report. OSError reaches the caller unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(html.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
