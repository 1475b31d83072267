"""The app factory of `kb serve` and its error handlers; the routes live in `api.py` and
`pages.py`, the gate in `guard.py`.

`create_app` opens one workspace (one `VLKB`, so models load once), puts it with the
sign-in and upload settings and the write lock in one `WebState` on `app.state`, puts the
`Guard` in front and includes the two routers. Every error a route lets through becomes one
readable line: JSON for the API, a short page for a browser.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from cli.web import api, pages
from cli.web.guard import (
    LOOPBACK_NAMES,
    MIN_TOKEN_LENGTH,
    Guard,
    check_session_hours,
    check_token,
    is_loopback,
)
from cli.web.responses import error_response, readable, status_of
from cli.web.state import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_FILES,
    DEFAULT_SESSION_HOURS,
    WebState,
    attach,
    state_of_app,
)
from engine.session import VLKB
from kb.config import Workspace
from kb.errors import VLKBError


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The workspace stays open while the app runs and is closed when it stops."""
    yield
    state_of_app(app).vlkb.close()


def create_app(
    workspace: Workspace,
    token: str | None = None,
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    allowed_hosts: frozenset[str] | None = None,
    session_hours: float = DEFAULT_SESSION_HOURS,
) -> FastAPI:
    """The web app of one workspace; token (when given) is required on every request.

    A browser signs in with its person's name and the token; the cookie lasts session_hours.
    """
    token = token or None
    if token is not None:
        check_token(token)
    state = WebState(
        token=token,
        session_seconds=check_session_hours(session_hours),
        max_file_bytes=max_file_bytes,
        max_files=max_files,
        vlkb=VLKB(workspace),
    )
    app = FastAPI(
        title="VLKB",
        summary="Qualify micrographs against expert criteria; the JSON API mirrors `kb`.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served by pages.py from the installed Swagger UI: no CDN, works offline
        redoc_url=None,
    )
    attach(app, state)
    app.add_middleware(
        Guard, token=state.token, allowed_hosts=allowed_hosts, upload_bytes=state.upload_ceiling
    )
    add_error_handlers(app)
    app.include_router(api.router)
    app.include_router(pages.router)
    document_limits(app, state)
    return app


def document_limits(app: FastAPI, state: WebState) -> None:
    """The app's OpenAPI document states this app's per-file upload limit."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # FastAPI builds it once and keeps it there
            app.openapi_schema = api.describe_upload_limit(generate(), state.max_file_bytes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def add_error_handlers(app: FastAPI) -> None:
    """Every error as one readable line with its status: VLKBError by kind, validation 400,
    Starlette's own (404, 405, 413) as they are, anything unexpected 500."""

    @app.exception_handler(VLKBError)
    async def vlkb_error(request: Request, exc: VLKBError) -> Response:
        return error_response(request.url.path, status_of(exc), str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return error_response(  # uvicorn logs the traceback; the client gets one line
            request.url.path, 500, f"internal error ({type(exc).__name__}); see the server log"
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return error_response(request.url.path, 400, readable(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404:
            message = f"not found: {request.method} {request.url.path}"
        return error_response(request.url.path, exc.status_code, message)


def serve(
    workspace: Workspace,
    host: str,
    port: int,
    token: str | None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    session_hours: float = DEFAULT_SESSION_HOURS,
) -> None:
    """`kb serve`: refuse to listen beyond this machine without a (strong) token, then run."""
    import uvicorn

    token = token or None
    loopback = is_loopback(host)
    if not loopback and token is None:
        raise VLKBError(
            f"refusing to serve on {host} without a token: set KB_TOKEN (at least "
            f"{MIN_TOKEN_LENGTH} random characters); clients then send Authorization: Bearer <it>"
        )
    if token is not None:
        check_token(token)
    allowed = LOOPBACK_NAMES | {host.strip("[]")} if loopback else None
    app = create_app(workspace, token, max_file_bytes=max_file_bytes, allowed_hosts=allowed,
                     session_hours=session_hours)
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level="info")
