"""The app factory of `kb serve` and its error handlers; the routes live in `api.py` and
`pages.py`, the gate in `guard.py`.

`create_app` opens one workspace (one `VLKB`, so models load once), puts it with the
sign-in and upload settings and the write lock in one `WebState` on `app.state`, puts the
`Guard` in front and includes the two routers. Every error a route lets through becomes one
readable line: JSON for the API, a short page for a browser.
"""

from __future__ import annotations

import json
import os
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
from kb.db import shared_by_processes
from kb.errors import OptionError, VLKBError


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


# How `kb serve --workers N` hands the settings it checked to the worker processes uvicorn
# starts (each builds its own app through `worker_app`); nothing else reads or sets it.
WORKER_SETTINGS = "VLKB_SERVE_WORKER_SETTINGS"


def serve(
    workspace: Workspace,
    host: str,
    port: int,
    token: str | None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    session_hours: float = DEFAULT_SESSION_HOURS,
    workers: int = 1,
) -> None:
    """`kb serve`: refuse to listen beyond this machine without a (strong) token, then run.

    workers > 1 runs that many uvicorn worker processes, each with its own app, models and
    database connections; they serialise their writes on the knowledge base's own lock, so
    that is refused where the lock does not hold between processes.
    """
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
    if workers < 1:
        raise OptionError("workers", f"must be at least 1, got {workers}")
    if workers == 1:
        app = create_app(workspace, token, max_file_bytes=max_file_bytes, allowed_hosts=allowed,
                         session_hours=session_hours)
        uvicorn.run(app, host=host.strip("[]"), port=port, log_level="info")
        return
    problem = shared_by_processes(workspace.config.database_url)
    if problem is not None:
        raise OptionError("workers", f"{workers}: {problem}; serve with one worker, or put "
                          "the knowledge base on PostgreSQL ([database] url)")
    VLKB(workspace).close()  # opens (and on first use creates) the database once, here
    os.environ[WORKER_SETTINGS] = json.dumps({
        "workspace": str(workspace.root),
        "token": token,
        "max_file_bytes": max_file_bytes,
        "allowed_hosts": sorted(allowed) if allowed is not None else None,
        "session_hours": session_hours,
    })
    uvicorn.run("cli.web.app:worker_app", factory=True, workers=workers,
                host=host.strip("[]"), port=port, log_level="info")


def worker_app() -> FastAPI:
    """The app of one worker process of `kb serve --workers N`, from its parent's settings."""
    settings = json.loads(os.environ[WORKER_SETTINGS])
    hosts = settings["allowed_hosts"]
    return create_app(
        Workspace.open(settings["workspace"]),
        settings["token"],
        max_file_bytes=settings["max_file_bytes"],
        allowed_hosts=frozenset(hosts) if hosts is not None else None,
        session_hours=settings["session_hours"],
    )
