"""What lives as long as the app: one `WebState` on `app.state`, handed to each route.

Routes never close over the state; they ask for it with `Depends(state_of)` (the `State`
annotation), which reads it from the app that received the request. So a router works on
any FastAPI app that carries a WebState, and nothing lives at module level.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from cli.web.uploads import MAX_FIELD_BYTES, MB
from engine.encoders.catalog import ModelStatus, model_statuses
from engine.encoders.roles import ModelSet
from engine.session import VLKB
from kb.config import ROLES, Workspace

DEFAULT_MAX_FILE_BYTES = 50 * MB
DEFAULT_MAX_FILES = 64
DEFAULT_SESSION_HOURS = 12.0
ROLE_PURPOSE = {"text": "micrograph ↔ text prompts", "image": "micrograph ↔ reference images"}


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

    @property
    def upload_ceiling(self) -> int:
        """The largest upload request: every file at the limit, plus room for multipart headers."""
        return self.max_files * (self.max_file_bytes + MAX_FIELD_BYTES)

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


def attach(app: FastAPI, state: WebState) -> None:
    """Give app its state; routes find it there through state_of."""
    app.state.web = state


def state_of_app(app: FastAPI) -> WebState:
    """The WebState an app was given by attach; a clear error when it was given none."""
    state = getattr(app.state, "web", None)
    if not isinstance(state, WebState):
        raise RuntimeError("this app carries no WebState: call cli.web.state.attach(app, state)")
    return state


def state_of(request: Request) -> WebState:
    """The dependency every route takes: the state of the app that received this request."""
    return state_of_app(request.app)


State = Annotated[WebState, Depends(state_of)]
