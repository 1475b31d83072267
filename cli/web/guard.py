"""The gate of `kb serve`: who may call it, from where, with how large a body, and the
headers every answer carries.

`Guard` is ASGI middleware in front of every route: it refuses unknown Host names (DNS
rebinding), cross-site writes, requests without the token or a valid sign-in cookie, and
bodies over their limit, and adds the security headers (a Content-Security-Policy that lets
the pages load nothing from elsewhere). A browser's sign-in is a cookie signed with a key
derived from the token, which no cookie carries; it names the person recorded as operator.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from cli.web.responses import DOCS_PATHS, error_response, is_api, render
from cli.web.uploads import MB, human_bytes
from kb.audit import is_blank
from kb.errors import VLKBError

MAX_BODY_BYTES = 1 * MB  # any request but an upload: a feedback form, a login
MIN_TOKEN_LENGTH = 16
MIN_TOKEN_DISTINCT = 8  # a long token of few symbols (abab..., 1234512345...) is guessable
MAX_NAME_LENGTH = 120  # a person's name as signed in, recorded as operator
SESSION_COOKIE = "vlkb_session"
PERSON = "vlkb.person"  # the ASGI scope key under which Guard leaves the signed-in name
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
PUBLIC_PATHS = ("/login", "/favicon.ico")
UPLOAD_PATHS = ("/api/qualify", "/qualify")
# The pages fetch nothing from elsewhere; the browser is told so and enforces it.
PAGE_POLICY = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; form-action 'self'; frame-src 'self'; "
    "frame-ancestors 'self'; base-uri 'none'"
)


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


def signed_in(request: Request) -> str | None:
    """The person signed in with the cookie of this request (None with a bearer token)."""
    person = request.scope.get(PERSON)
    return person if isinstance(person, str) else None


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
