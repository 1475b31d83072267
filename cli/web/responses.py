"""How `kb serve` answers when something is wrong: one readable line, as JSON or as a page.

The API and the docs answer `{"error": ...}`; every other path answers a short HTML page, so
a browser never shows raw JSON and a script never has to parse HTML. The guard, the app's
error handlers and the routes all answer through `error_response`.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from kb.errors import (
    DatabaseError,
    ImageError,
    ModelLoadError,
    NotFoundError,
    RulesError,
    VLKBError,
    WorkspaceError,
)
from reports.render import environment

# Swagger UI's page starts itself with an inline script, so it gets no page policy; its script
# and style come from this app (pages.py), never from elsewhere.
DOCS_PATHS = ("/docs", "/openapi.json")
ERROR_STATUS: tuple[tuple[type[VLKBError], int], ...] = (
    (NotFoundError, 404),
    (ImageError, 422),
    (RulesError, 409),
    (WorkspaceError, 409),
    (ModelLoadError, 503),
    (DatabaseError, 503),
)


def status_of(exc: VLKBError) -> int:
    """The HTTP status of an error the CLI would print as one line."""
    return next((status for kind, status in ERROR_STATUS if isinstance(exc, kind)), 400)


def is_api(path: str) -> bool:
    """API paths answer JSON errors; every other path answers an HTML page."""
    return path.startswith("/api/") or path in DOCS_PATHS


def render(template: str, **context: Any) -> str:
    """A web page from reports/templates through the reports' own Jinja2 environment."""
    return environment().get_template(template).render(**context)


def error_response(path: str, status: int, message: str) -> Response:
    """{"error": ...} for the API, a short page for a browser; one readable line either way."""
    if is_api(path):
        return JSONResponse({"error": message}, status_code=status)
    return HTMLResponse(render("web_error.html.j2", status=status, message=message), status)


def readable(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: where, and what was wrong."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body", "path"))
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
