"""HTML reports rendered from stored records only, so a report written at qualification time
and one re-rendered months later (after the sample file moved) show the same numbers.

Shared by `kb qualify --report`, `kb report ID` and any other caller (a Python script, a web
API): the document, the thumbnails and the feedback all come from the knowledge base.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session

import reports
from engine.history import feedback_by_qualification, stored_document
from engine.session import VLKB
from kb.audit import QUALIFICATION, entry_of
from kb.config import Workspace
from kb.errors import DatabaseError, VLKBError
from kb.image_store import stored_image
from reports.render import (
    render_batch_index,
    render_micrograph,
    render_qualification,
    write_report,
)

REPORTS_PACKAGE = Path(reports.__file__).resolve().parent


@dataclass
class WrittenReports:
    """Where each qualification's report went, the run index, and what could not be written."""

    paths: dict[int, Path] = field(default_factory=dict)
    index: Path | None = None
    errors: list[str] = field(default_factory=list)


def output_dir(workspace: Workspace) -> Path:
    """The workspace's report folder, refused when it lies inside the reports package."""
    folder = workspace.config.output_dir.resolve()
    if folder == REPORTS_PACKAGE or folder.is_relative_to(REPORTS_PACKAGE):
        raise VLKBError(
            f"output folder {folder} is inside {REPORTS_PACKAGE}, which holds the report "
            "templates and code only; set [output] dir in kb.toml to another folder"
        )
    return folder


def report_name(qualification_id: int, sample_path: str) -> str:
    """A stable, unique file name: the ID makes it unique, the sample's stem makes it readable."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(sample_path).stem).strip(".-")[:60]
    return f"q{qualification_id:06d}-{stem or 'sample'}.html"


def report_images(session: Session, document: dict[str, Any]) -> dict[str, bytes]:
    """The sample's stored thumbnail and the closest reference images, by SHA-256."""
    wanted = {str((document.get("sample") or {}).get("sha256"))}
    for node in document.get("nodes") or []:
        for evidence in node.get("evidence") or []:
            if evidence.get("role") != "image":
                continue
            for side in ("closest_positive", "closest_negative"):
                item = evidence.get(side)
                if item and item.get("sha256"):
                    wanted.add(str(item["sha256"]))
    sample = document.get("sample") or {}
    images = {}
    for sha in sorted(wanted):
        record = stored_image(session, sha)
        if record is None:
            continue
        if sha == sample.get("sha256"):
            _check_thumbnail(document, record.thumbnail_png)
        images[sha] = record.data or record.thumbnail_png
    return images


def _check_thumbnail(document: dict[str, Any], thumbnail: bytes) -> None:
    """Refuse a sample thumbnail that is not the one its qualification recorded."""
    recorded = (document.get("sample") or {}).get("thumbnail_sha256")
    if recorded and hashlib.sha256(thumbnail).hexdigest() != recorded:
        raise DatabaseError(
            f"qualification {document.get('id')}: the stored thumbnail of its sample differs "
            "from the one it recorded (edited behind the tool's back); run `kb audit verify`"
        )


def render_stored(session: Session, qualification_id: int) -> tuple[dict[str, Any], str]:
    """The stored document of one qualification and its report HTML."""
    document = stored_document(session, qualification_id)
    feedback = feedback_by_qualification(session, [qualification_id])[qualification_id]
    entry = entry_of(session, QUALIFICATION, qualification_id)
    chain = {"hash": entry.record_hash, "seq": entry.seq} if entry is not None else None
    html = render_qualification(document, report_images(session, document), feedback, chain)
    return document, html


def render_stored_report(vlkb: VLKB, qualification_id: int) -> str:
    """One qualification's report HTML, from the knowledge base alone."""
    with vlkb.kb.reading() as session:
        return render_stored(session, qualification_id)[1]


def stored_thumbnail(vlkb: VLKB, qualification_id: int) -> bytes:
    """The PNG thumbnail stored with a qualification's sample, checked against the hash the
    qualification recorded (what the web shows beside the verdicts)."""
    with vlkb.kb.reading() as session:
        document = stored_document(session, qualification_id)
        record = stored_image(session, str((document.get("sample") or {}).get("sha256")))
    if record is None:
        raise DatabaseError(f"qualification {qualification_id}: its sample's thumbnail is missing")
    _check_thumbnail(document, record.thumbnail_png)
    return record.thumbnail_png


def render_stored_micrograph(vlkb: VLKB, qualification_id: int) -> str:
    """One qualification's micrograph with its overlays (an HTML fragment), from the knowledge
    base alone, as its report shows it."""
    with vlkb.kb.reading() as session:
        document = stored_document(session, qualification_id)
        return render_micrograph(document, report_images(session, document))


@dataclass(frozen=True)
class RewrittenReport:
    """Where `kb report ID` wrote, and where the earlier, different report went (if any)."""

    path: Path
    earlier: Path | None = None


def write_stored_report(vlkb: VLKB, qualification_id: int) -> RewrittenReport:
    """`kb report ID`: re-render the stored record into its report file. The file name stays
    the same, so links keep working; an earlier report there with other content (feedback
    added since, a newer template) is never lost: it is kept beside it as NAME.earlier-N.html."""
    folder = output_dir(vlkb.workspace)
    with vlkb.kb.reading() as session:
        document, html = render_stored(session, qualification_id)
    path = folder / report_name(qualification_id, document["sample"]["path"])
    earlier = None
    try:
        if path.is_file() and path.read_text(encoding="utf-8", errors="replace") != html:
            number = 1
            while (earlier := path.with_name(f"{path.stem}.earlier-{number}{path.suffix}")
                   ).exists():
                number += 1
            path.rename(earlier)
        return RewrittenReport(write_report(path, html), earlier)
    except OSError as exc:
        raise VLKBError(f"could not write the report to {path}: {_why(exc)}") from exc


def write_run_reports(vlkb: VLKB, qualification_ids: Sequence[int]) -> WrittenReports:
    """Reports of a run's stored qualifications, and an index.html when there are several.

    The index sits in run-<first ID>-<last ID>/ under the output folder and links to the
    reports beside that folder with relative paths, so the folder can be moved or zipped.
    A report that cannot be written becomes an error line; the qualifications stay stored.
    """
    written = WrittenReports()
    if not qualification_ids:
        return written
    folder = output_dir(vlkb.workspace)
    with vlkb.kb.reading() as session:
        rendered = [render_stored(session, i) for i in qualification_ids]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        written.errors.append(_not_written(folder, qualification_ids, exc))
        return written
    for ident, (document, html) in zip(qualification_ids, rendered, strict=True):
        path = folder / report_name(ident, document["sample"]["path"])
        try:
            written.paths[ident] = write_report(path, html)
        except OSError as exc:
            written.errors.append(_not_written(path, [ident], exc))
    if len(qualification_ids) > 1:
        run = folder / f"run-{qualification_ids[0]:06d}-{qualification_ids[-1]:06d}"
        links = {ident: f"../{path.name}" for ident, path in written.paths.items()}
        index = render_batch_index([d for d, _ in rendered], links)
        try:
            written.index = write_report(run / "index.html", index)
        except OSError as exc:
            written.errors.append(f"could not write the run index to {run}: {_why(exc)}")
    return written


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _not_written(where: Path, ids: Sequence[int], exc: OSError) -> str:
    which = ", ".join(str(i) for i in ids)
    noun = "qualification" if len(ids) == 1 else "qualifications"
    return (
        f"could not write the report of {noun} {which} to {where}: {_why(exc)}; "
        f"the {noun} {'is' if len(ids) == 1 else 'are'} stored: run `kb report ID` "
        "once the folder is writable"
    )
