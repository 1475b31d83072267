"""One qualify request of `kb serve`, shared by POST /api/qualify and the page's POST /qualify:
receive the uploads, judge them with the engine's `qualify_paths` (the call `kb qualify`
makes) under the app's write lock, and answer the JSON document `kb qualify --json` prints.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from cli.web.guard import signed_in
from cli.web.params import QualifyParams
from cli.web.responses import status_of
from cli.web.state import WebState
from cli.web.uploads import Upload, UploadError, receive_uploads
from engine.qualify import QualifyOptions, qualify_paths
from kb.errors import VLKBError


async def qualify_request(
    request: Request, params: QualifyParams, state: WebState
) -> tuple[int, dict[str, Any]]:
    """Receive the uploads, qualify them as `kb qualify --json` does; (status, JSON document).

    Files that are no image are refused before the engine sees them; the engine reports the
    rest that fail. As with the CLI, the good files of a request are judged and stored and the
    bad ones listed under "failures"; only when every file failed is the answer an error
    (503 when the knowledge base failed, 415 when none was an accepted image type, else 422),
    and then nothing was stored.
    """
    folder = Path(tempfile.mkdtemp(prefix="vlkb-upload-"))
    try:
        options = params.options(signed_in(request))
        uploads = await receive_uploads(request, folder, state.max_file_bytes, state.max_files)
        judged = [u for u in uploads if u.path is not None]
        outcome = None
        if judged:
            outcome = await run_in_threadpool(qualify_locked, state, judged, options)
    except UploadError as exc:
        return exc.status, {"error": str(exc)}
    except VLKBError as exc:
        return status_of(exc), {"error": str(exc)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    failures = upload_failures(uploads, outcome.failures if outcome else [])
    document: dict[str, Any] = {
        "qualifications": [{**r.to_dict(), "links": links(r.id)} for r in outcome.results]
        if outcome else [],
        "failures": failures,
        "skipped": outcome.skipped if outcome else [],
    }
    if options.report:
        document["index"] = outcome.index if outcome else None
        document["report_errors"] = outcome.report_errors if outcome else []
    if document["qualifications"]:
        return 200, document
    unsupported = all(u.unsupported for u in uploads)
    first = failures[0]["error"] if failures else "no file could be judged"
    database = outcome is not None and any(f.cause == "database" for f in outcome.failures)
    status = 503 if database else 415 if unsupported else 422
    return status, {"error": f"nothing stored: {first}", **document}


def links(qualification_id: int | None) -> dict[str, str] | None:
    """Where a stored qualification can be read back: its page, its report, its JSON."""
    if qualification_id is None:
        return None
    page = f"/qualifications/{qualification_id}"
    return {"page": page, "report": f"{page}/report", "json": f"/api{page}"}


def qualify_locked(state: WebState, uploads: list[Upload], options: QualifyOptions) -> Any:
    """The engine's qualify_paths, one run at a time (models load once, the chain stays whole)."""
    paths = [u.path for u in uploads if u.path is not None]
    names = {u.path: u.record_name for u in uploads if u.path is not None}
    with state.write_lock:
        return qualify_paths(state.vlkb, paths, options, sample_names=names)


def upload_failures(uploads: list[Upload], engine_failures: list[Any]) -> list[dict[str, str]]:
    """Refused uploads and engine failures in upload order, named as uploaded, not as stored."""
    by_path = {str(u.path): u for u in uploads if u.path is not None}
    found: dict[int, dict[str, str]] = {
        u.index: {"path": u.record_name, "error": u.error} for u in uploads if u.error
    }
    extra = []
    for failure in engine_failures:
        upload = by_path.get(failure.path)
        if upload is None:
            extra.append(failure.to_dict())
            continue
        message = failure.error.replace(str(upload.path), upload.record_name)
        found[upload.index] = {"path": upload.record_name, "error": message}
    return [found[i] for i in sorted(found)] + extra
