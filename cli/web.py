"""`kb serve`: web pages and a JSON API, an interface as thin as the `kb` command itself.

Every route parses its request, calls the engine function the matching `kb` command calls,
and renders the result (JSON, or the report templates of `reports/`); nothing here decides a
verdict. One ModelSet and one knowledge-base handle live as long as the app, so models load
once; writes to the audit log go through the app's one write lock (WebState.write_lock).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import math
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from cli.web_uploads import (
    FIELD,
    MAX_FIELD_BYTES,
    Upload,
    UploadError,
    human_bytes,
    receive_uploads,
)
from engine.encoders.catalog import ModelStatus, model_statuses
from engine.encoders.roles import ModelSet
from engine.history import add_feedback, list_qualifications, load_qualification
from engine.qualify import DecisionOverride, QualifyOptions, qualify_paths
from engine.report_files import render_stored_report
from engine.session import VLKB
from engine.sync import compile_workspace
from engine.tree import tree_document
from kb.audit import is_blank
from kb.config import ROLES, Workspace
from kb.errors import (
    DatabaseError,
    ImageError,
    ModelLoadError,
    NotFoundError,
    RulesError,
    VLKBError,
    WorkspaceError,
)
from kb.vocabulary import VERDICTS, ExpertVerdict
from reports.render import environment

MB = 1_000_000
DEFAULT_MAX_FILE_BYTES = 50 * MB
DEFAULT_MAX_FILES = 64
MAX_ID = 2**63 - 1  # SQLite's largest integer; a bigger ID cannot exist
MAX_BODY_BYTES = 1 * MB  # any request but an upload: a feedback form, a login
MIN_TOKEN_LENGTH = 16
MIN_TOKEN_DISTINCT = 8  # a long token of few symbols (abab..., 1234512345...) is guessable
DEFAULT_SESSION_HOURS = 12.0
MAX_NAME_LENGTH = 120  # a person's name as signed in, recorded as operator
SESSION_COOKIE = "vlkb_session"
PERSON = "vlkb.person"  # the ASGI scope key under which Guard leaves the signed-in name
STATIC = Path(__file__).resolve().parent / "static"
# Files the pages load from the app itself (so the policy needs no inline script). A request
# names one of these keys; no path is ever built from it.
STATIC_FILES = {"qualify.js": ("qualify.js", "text/javascript; charset=utf-8")}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
DOCS_PATHS = ("/docs", "/openapi.json")  # Swagger UI loads its script from a CDN: no CSP there
PUBLIC_PATHS = ("/login", "/favicon.ico")
UPLOAD_PATHS = ("/api/qualify", "/qualify")
# The pages fetch nothing from elsewhere; the browser is told so and enforces it.
PAGE_POLICY = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; form-action 'self'; frame-src 'self'; "
    "frame-ancestors 'self'; base-uri 'none'"
)
ERROR_STATUS: tuple[tuple[type[VLKBError], int], ...] = (
    (NotFoundError, 404),
    (ImageError, 422),
    (RulesError, 409),
    (WorkspaceError, 409),
    (ModelLoadError, 503),
    (DatabaseError, 503),
)
ICON = (  # browsers ask for /favicon.ico on every page; a small inline drawing answers
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect width="16" height="16" rx="3" fill="#24466e"/>'
    '<path d="M3 4l5 9 5-9" stroke="#fff" stroke-width="2" fill="none"/></svg>'
)
ROLE_PURPOSE = {"text": "micrograph ↔ text prompts", "image": "micrograph ↔ reference images"}


def status_of(exc: VLKBError) -> int:
    """The HTTP status of an error the CLI would print as one line."""
    return next((status for kind, status in ERROR_STATUS if isinstance(exc, kind)), 400)


def is_loopback(host: str) -> bool:
    """Whether binding to host keeps the server on this machine."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: str) -> None:
    """Refuse a token that is easy to guess; VLKBError with one line saying why."""
    advice = "e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))'"
    if not token.strip():
        raise VLKBError(f"KB_TOKEN is only whitespace; use random characters, {advice}")
    if token != token.strip():
        raise VLKBError(
            "KB_TOKEN begins or ends with whitespace, which clients drop when they send it; "
            f"remove it (a token is random characters, {advice})"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise VLKBError(
            f"KB_TOKEN is too short; use at least {MIN_TOKEN_LENGTH} random characters, {advice}"
        )
    distinct = len(set(token))
    if distinct == 1:
        raise VLKBError(f"KB_TOKEN is one repeated character; use random characters, {advice}")
    if distinct < MIN_TOKEN_DISTINCT:
        raise VLKBError(
            f"KB_TOKEN has only {distinct} distinct characters (at least "
            f"{MIN_TOKEN_DISTINCT} needed); use random characters, {advice}"
        )


def session_key(token: str) -> bytes:
    """The key that signs login cookies: derived from the token, which no cookie carries."""
    return hmac.new(token.encode(), b"vlkb web session", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def session_value(token: str, name: str, expires: float) -> str:
    """The login cookie: base64url(JSON of the person's name and expiry) "." its HMAC."""
    payload = _b64(json.dumps({"name": name, "exp": expires}, sort_keys=True).encode())
    signature = hmac.new(session_key(token), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(signature)}"


def session_person(token: str, value: str, now: float) -> str | None:
    """The signed-in name of a login cookie; None if forged, altered, malformed or expired."""
    payload, _, signature = value.rpartition(".")
    expected = hmac.new(session_key(token), payload.encode(), hashlib.sha256).digest()
    if not payload or not hmac.compare_digest(signature.encode(), _b64(expected).encode()):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        name, expires = data["name"], float(data["exp"])
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(name, str) or is_blank(name) or not now < expires:
        return None
    return name


def check_session_hours(hours: float) -> float:
    """Seconds a sign-in lasts; refuses a length that is not a positive, finite number."""
    if not (math.isfinite(hours) and hours > 0):
        raise VLKBError(f"--session-hours {hours:g} must be a positive number of hours")
    return hours * 3600.0


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


# --- the app's state ---------------------------------------------------------------------------


@dataclass
class WebState:
    """What lives as long as the app: the open workspace, the sign-in and upload settings, and
    the lock that lets one request at a time write to the audit log."""

    vlkb: VLKB
    token: str | None
    session_seconds: float
    max_file_bytes: int
    max_files: int
    # One writer at a time in this app: every qualification and feedback appends to the head
    # of one hash chain, and two SQLite transactions that both read the head before writing
    # would collide ("database is locked"). Reads never take it.
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    _statuses: list[ModelStatus] | None = None
    _statuses_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def workspace(self) -> Workspace:
        return self.vlkb.workspace

    @property
    def models(self) -> ModelSet:
        return self.vlkb.models

    def statuses(self) -> list[ModelStatus]:
        """`kb models` once per app: fingerprinting large weights is too slow for every page."""
        with self._statuses_lock:
            if self._statuses is None:
                self._statuses = model_statuses(self.workspace)
            return self._statuses

    def roles(self) -> list[dict[str, Any]]:
        """Each role, the model bound to it, whether its files are here and whether it is loaded."""
        by_name = {s.name: s for s in self.statuses()}
        rows = []
        for role in ROLES:
            spec = self.models.spec(role)
            status = by_name.get(spec.name) if spec is not None else None
            rows.append(
                {
                    "role": role,
                    "purpose": ROLE_PURPOSE.get(role, role),
                    "model": spec.name if spec is not None else None,
                    "backend": spec.backend if spec is not None else None,
                    "source": spec.source if spec is not None else None,
                    "offline": bool(status and status.available),
                    "detail": status.detail if status is not None else None,
                    "loaded": self.models.is_loaded(role),
                }
            )
        return rows


# --- authentication, origin and headers ------------------------------------------------------


class Guard:
    """ASGI middleware: token check, same-origin writes, allowed Host names, security headers."""

    def __init__(
        self,
        app: Any,
        token: str | None,
        allowed_hosts: frozenset[str] | None,
        upload_bytes: int,
    ) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = allowed_hosts
        self.upload_bytes = upload_bytes

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        refusal = self.refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        limit = self.body_limit(path)
        received = 0

        async def receive_with_limit() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # a body sent without Content-Length, or longer than it said
                raise StarletteHTTPException(413, f"request body over {human_bytes(limit)}")
            return message

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                # not no-referrer: with it, browsers send "Origin: null" on same-site forms
                headers.setdefault("Referrer-Policy", "same-origin")
                headers.setdefault("Cache-Control", "no-store")
                if path not in DOCS_PATHS:
                    headers.setdefault("Content-Security-Policy", PAGE_POLICY)
            await send(message)

        await self.app(scope, receive_with_limit, send_with_headers)

    def body_limit(self, path: str) -> int:
        return self.upload_bytes if path in UPLOAD_PATHS else MAX_BODY_BYTES

    def refusal(self, scope: MutableMapping[str, Any]) -> Response | None:
        headers = Headers(scope=scope)
        path = scope["path"]
        host = headers.get("host", "")
        if self.allowed_hosts is not None:
            name = urlsplit(f"//{host}").hostname or ""
            if name not in self.allowed_hosts:
                return error_response(path, 400, f"host {host!r} is not served here")
        origin = headers.get("origin")
        writes = scope["method"] not in ("GET", "HEAD", "OPTIONS")
        if writes and origin is not None and urlsplit(origin).netloc != host:
            return error_response(path, 403, "cross-site request refused")
        if self.token is not None and path not in PUBLIC_PATHS:
            allowed, person = self.authorised(headers)
            if not allowed:
                return self.unauthorised(path)
            if person is not None:
                scope[PERSON] = person
        declared = headers.get("content-length", "")
        limit = self.body_limit(path)
        if declared.isdigit() and int(declared) > limit:
            return error_response(
                path, 413, f"request of {human_bytes(int(declared))} is over the limit of "
                f"{human_bytes(limit)}",
            )
        return None

    def unauthorised(self, path: str) -> Response:
        if is_api(path):
            return JSONResponse(
                {"error": "missing or wrong token: send Authorization: Bearer <KB_TOKEN>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return HTMLResponse(render("web_login.html.j2", failed=False), 401)

    def authorised(self, headers: Headers) -> tuple[bool, str | None]:
        """(allowed, the signed-in person): the bearer token names nobody; a cookie does."""
        assert self.token is not None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            return True, None
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is simply no login
            return False, None
        morsel = cookies.get(SESSION_COOKIE)
        if morsel is None:
            return False, None
        person = session_person(self.token, morsel.value, time.time())
        return person is not None, person


# --- request parsing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QualifyParams:
    """The query options of a qualify request, as `kb qualify` takes them on its command line."""

    normalize: str
    um_per_px: float | None
    fusion: str | None
    weight: list[str]
    weights: str | None
    threshold: float | None
    review_margin: float | None
    operator: str | None
    report: bool

    def options(self, person: str | None = None) -> QualifyOptions:
        """The request as QualifyOptions (which check every value) and a DecisionOverride.

        The operator is the request's `operator` when given, else the signed-in person
        (person), else the OS user, and the stored record says which.
        """
        weights = parse_weights(self.weight, self.weights)
        decision = None
        if self.fusion or weights or self.threshold is not None or self.review_margin is not None:
            decision = DecisionOverride(
                self.fusion or None, weights or None, self.threshold, self.review_margin
            )
        operator, source = (self.operator, "request")
        if is_blank(operator):
            operator, source = (person, "signed-in") if person else (None, "request")
        return QualifyOptions(
            normalize=self.normalize,
            um_per_px=self.um_per_px,
            operator=operator,
            operator_source=source,
            report=self.report,
            decision=decision,
        )


def parse_weights(pairs: list[str], as_json: str | None) -> dict[str, float]:
    """Role weights from repeated `weight=ROLE=NUMBER` and/or `weights={"ROLE": NUMBER}`."""
    parsed: dict[str, float] = {}
    if as_json:
        try:
            document = json.loads(as_json)
            if not isinstance(document, dict):
                raise ValueError
            parsed.update({str(k): float(v) for k, v in document.items()})
        except (ValueError, TypeError):
            raise VLKBError('weights: write a JSON object such as {"image": 2}') from None
    for item in pairs:
        role, _, value = item.partition("=")
        try:
            parsed[role.strip()] = float(value)
        except ValueError:
            raise VLKBError(f"weight {item!r}: write ROLE=NUMBER, e.g. image=2") from None
    return parsed


def qualify_params(
    normalize: Annotated[
        str, Query(description="z-score statistics: calibrated (default) or batch.")
    ] = "calibrated",
    um_per_px: Annotated[
        float | None, Query(description="Pixel size for this request (µm per pixel).")
    ] = None,
    fusion: Annotated[
        str | None, Query(description="This request only: zsum or weighted (rules unchanged).")
    ] = None,
    weight: Annotated[
        list[str] | None, Query(description="This request only: ROLE=NUMBER, repeatable.")
    ] = None,
    weights: Annotated[
        str | None, Query(description='This request only: JSON map, e.g. {"image": 2}.')
    ] = None,
    threshold: Annotated[
        float | None, Query(description="This request only: fused-score threshold.")
    ] = None,
    review_margin: Annotated[
        float | None, Query(description="This request only: review band around the threshold.")
    ] = None,
    operator: Annotated[
        str | None,
        Query(description="Who runs this, as recorded (default: the signed-in person, else "
              "the OS user, recorded as such)."),
    ] = None,
    report: Annotated[
        bool, Query(description="Also write each report to the workspace's output folder.")
    ] = False,
) -> QualifyParams:
    """The query of POST /api/qualify (and of the page's own POST /qualify)."""
    return QualifyParams(
        normalize, um_per_px, fusion, weight or [], weights, threshold, review_margin, operator,
        report,
    )


QualifyQuery = Annotated[QualifyParams, Depends(qualify_params)]


class FeedbackIn(BaseModel):
    """An expert's verdict on one node of a stored qualification (as `kb feedback`)."""

    node: str = Field(description="Node key, e.g. EA-5 or the root gate.")
    verdict: ExpertVerdict
    comment: str = Field(description="Why, in the expert's words.")
    expert: str | None = Field(default=None, description="Who says so (required: a name).")


def check_id(qualification_id: int) -> int:
    """An ID the router already parsed as digits; one beyond SQLite's range cannot exist."""
    if qualification_id > MAX_ID:
        raise NotFoundError(f"no qualification with ID {qualification_id}")
    return qualification_id


def readable(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: where, and what was wrong."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body", "path"))
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


# --- qualification -------------------------------------------------------------------------------


def tree_of(workspace: Workspace) -> dict[str, Any]:
    """The detection tree as `kb tree --json` prints it."""
    return tree_document(compile_workspace(workspace))


def rules_decisions(workspace: Workspace) -> list[dict[str, Any]]:
    """Each assessment's own fusion, weights, threshold and review margin, as the rules say."""
    ruleset = compile_workspace(workspace)
    return [
        {
            "key": key,
            "name": a.name,
            "fusion": a.decision.fusion,
            "weights": dict(a.decision.weights),
            "threshold": a.decision.threshold,
            "review_margin": a.decision.review_margin,
        }
        for key, a in ruleset.assessments.items()
    ]


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
        "qualifications": [r.to_dict() for r in outcome.results] if outcome else [],
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


def signed_in(request: Request) -> str | None:
    """The person signed in with the cookie of this request (None with a bearer token)."""
    person = request.scope.get(PERSON)
    return person if isinstance(person, str) else None


def upload_ceiling(state: WebState) -> int:
    """The largest upload request: every file at the limit, plus room for multipart headers."""
    return state.max_files * (state.max_file_bytes + MAX_FIELD_BYTES)


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


def results_view(document: dict[str, Any]) -> dict[str, Any]:
    """What the results fragment shows: assessment columns and each row's nodes by key."""
    keys: list[str] = []
    rows = []
    for q in document.get("qualifications", []):
        nodes = {n["key"]: n for n in q["nodes"]}
        for n in q["nodes"]:
            if n["kind"] == "assessment" and n["key"] not in keys:
                keys.append(n["key"])
        rows.append({"doc": q, "nodes": nodes})
    return {"columns": keys, "rows": rows}


# --- the app -----------------------------------------------------------------------------------


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

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.vlkb.close()

    app = FastAPI(
        title="VLKB",
        summary="Qualify micrographs against expert criteria; the JSON API mirrors `kb`.",
        version="1",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.vlkb = state
    app.add_middleware(
        Guard, token=state.token, allowed_hosts=allowed_hosts, upload_bytes=upload_ceiling(state)
    )

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

    _api_routes(app, state)
    _page_routes(app, state)
    return app


def _api_routes(app: FastAPI, state: WebState) -> None:
    """The JSON API: each endpoint answers what the matching `kb ... --json` prints."""
    ws, vlkb = state.workspace, state.vlkb
    upload_body = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [FIELD],
                        "properties": {
                            FIELD: {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "description": "One or many micrographs (PNG, JPEG, TIFF, BMP), "
                                f"at most {human_bytes(state.max_file_bytes)} each.",
                            }
                        },
                    }
                }
            },
        }
    }

    @app.post("/api/qualify", tags=["qualify"], openapi_extra=upload_body)
    async def api_qualify(request: Request, params: QualifyQuery) -> JSONResponse:
        """Judge and store micrographs: the JSON of `kb qualify --json`."""
        status, document = await qualify_request(request, params, state)
        return JSONResponse(document, status_code=status)

    @app.get("/api/qualifications", tags=["history"])
    def api_history(
        since: Annotated[str | None, Query(description="YYYY-MM-DD (UTC) or ISO time.")] = None,
        verdict: Annotated[str | None, Query(description=", ".join(VERDICTS))] = None,
        q: Annotated[str | None, Query(description="Sample name contains (any case).")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> dict[str, Any]:
        """The audit log, newest first, with expert feedback: `kb history --json`."""
        rows = list_qualifications(
            vlkb, limit=limit, since=since or None, verdict=verdict or None, sample=q or None
        )
        return {"qualifications": rows}

    @app.get("/api/qualifications/{qualification_id:int}", tags=["history"])
    def api_show(qualification_id: int) -> dict[str, Any]:
        """One stored qualification with its feedback: `kb show ID --json`."""
        return load_qualification(vlkb, check_id(qualification_id))

    @app.post(
        "/api/qualifications/{qualification_id:int}/feedback", tags=["history"], status_code=201
    )
    def api_feedback(qualification_id: int, body: FeedbackIn) -> dict[str, Any]:
        """Record an expert's verdict beside the machine's: `kb feedback --json`."""
        with state.write_lock:
            entry = add_feedback(
                vlkb, check_id(qualification_id), body.node, body.verdict, body.comment,
                body.expert or "",  # a name is required here: never the server's account
            )
        return {"feedback": entry}

    @app.get("/api/tree", tags=["rules"])
    def api_tree() -> dict[str, Any]:
        """The detection tree of the rules as they are now: `kb tree --json`."""
        return tree_of(ws)

    @app.get("/api/models", tags=["rules"])
    def api_models() -> dict[str, Any]:
        """`kb models --json`, plus whether each model is loaded in this server, and the roles."""
        loaded = {r["model"] for r in state.roles() if r["loaded"]}
        models = [{**s.to_dict(), "loaded": s.name in loaded} for s in state.statuses()]
        return {"models": models, "roles": state.roles()}


def _page_routes(app: FastAPI, state: WebState) -> None:
    """Server-rendered pages for people; they call the same engine functions as the API."""
    ws, vlkb = state.workspace, state.vlkb

    def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("workspace_name", ws.root.name)
        context.setdefault("login", state.token is not None)
        return HTMLResponse(render(template, **context), status_code=status)

    @app.get("/", include_in_schema=False)
    def qualify_page() -> HTMLResponse:
        try:
            decisions, rules_error = rules_decisions(ws), None
        except VLKBError as exc:
            decisions, rules_error = [], str(exc)
        return page(
            "web_qualify.html.j2",
            roles=state.roles(),
            decisions=decisions,
            rules_error=rules_error,
            max_file=human_bytes(state.max_file_bytes),
            max_files=state.max_files,
        )

    @app.post("/qualify", include_in_schema=False)
    async def qualify_fragment(request: Request, params: QualifyQuery) -> HTMLResponse:
        status, document = await qualify_request(request, params, state)
        html = render("web_results.html.j2", status=status, document=document,
                      view=results_view(document))
        return HTMLResponse(html, status_code=status)

    @app.get("/history", include_in_schema=False)
    def history_page(
        since: str | None = None,
        verdict: str | None = None,
        q: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> HTMLResponse:
        filters = {"since": since or "", "verdict": verdict or "", "q": q or "", "limit": limit}
        try:
            rows = list_qualifications(
                vlkb, limit=limit, since=since or None, verdict=verdict or None, sample=q or None
            )
        except VLKBError as exc:
            return page("web_history.html.j2", status_of(exc), rows=[], filters=filters,
                        error=str(exc), verdicts=VERDICTS)
        return page("web_history.html.j2", rows=rows, filters=filters, error=None,
                    verdicts=VERDICTS)

    def qualification_page(
        qualification_id: int, status: int = 200, **context: Any
    ) -> HTMLResponse:
        doc = load_qualification(vlkb, check_id(qualification_id))
        context.setdefault("form", {})
        context.setdefault("error", None)
        context.setdefault("recorded", None)
        return page("web_qualification.html.j2", status, doc=doc, **context)

    @app.get("/qualifications/{qualification_id:int}", include_in_schema=False)
    def show_page(
        request: Request, qualification_id: int, recorded: int | None = None
    ) -> HTMLResponse:
        form = {"expert": signed_in(request) or ""}  # offered, still the expert's to change
        return qualification_page(qualification_id, recorded=recorded, form=form)

    @app.get("/qualifications/{qualification_id:int}/report", include_in_schema=False)
    def report_page(qualification_id: int) -> HTMLResponse:
        return HTMLResponse(render_stored_report(vlkb, check_id(qualification_id)))

    @app.post("/qualifications/{qualification_id:int}/feedback", include_in_schema=False)
    def feedback_form(
        qualification_id: int,
        node: Annotated[str, Form()] = "",
        verdict: Annotated[str, Form()] = "",
        comment: Annotated[str, Form()] = "",
        expert: Annotated[str, Form()] = "",
    ) -> Response:
        form = {"node": node, "verdict": verdict, "comment": comment, "expert": expert}
        try:
            with state.write_lock:
                entry = add_feedback(
                    vlkb, check_id(qualification_id), node, verdict, comment, expert
                )
        except VLKBError as exc:  # a missing qualification raises again below: 404
            status = 400 if isinstance(exc, NotFoundError) else status_of(exc)
            return qualification_page(qualification_id, status, form=form, error=str(exc))
        return RedirectResponse(
            f"/qualifications/{qualification_id}?recorded={entry['id']}#feedback", 303
        )

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(ICON, media_type="image/svg+xml")

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        known = STATIC_FILES.get(name)
        if known is None:
            raise NotFoundError(f"no static file {name!r}")
        file_name, media_type = known
        return Response((STATIC / file_name).read_bytes(), media_type=media_type)

    @app.get("/login", include_in_schema=False)
    def login_page() -> HTMLResponse:
        return page("web_login.html.j2", failed=False)

    @app.post("/login", include_in_schema=False)
    def login(
        request: Request,
        token: Annotated[str, Form()] = "",
        name: Annotated[str, Form()] = "",
    ) -> Response:
        if state.token is None:
            return RedirectResponse("/", 303)
        person = " ".join(name.split())
        if is_blank(person) or len(person) > MAX_NAME_LENGTH:
            problem = (f"Sign in with your name (at most {MAX_NAME_LENGTH} characters): it is "
                       "recorded as the operator of what you qualify.")
            return page("web_login.html.j2", 400, failed=False, problem=problem, name=person)
        if not hmac.compare_digest(token.encode(), state.token.encode()):
            return page("web_login.html.j2", 401, failed=True, name=person)
        expires = time.time() + state.session_seconds
        response = RedirectResponse("/", 303)
        response.set_cookie(
            SESSION_COOKIE, session_value(state.token, person, expires), httponly=True,
            samesite="strict", secure=request.url.scheme == "https", path="/",
            max_age=int(state.session_seconds),
            expires=datetime.fromtimestamp(expires, UTC),
        )
        return response


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
