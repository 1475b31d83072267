"""`kb serve`: web pages and a JSON API, an interface as thin as the `kb` command itself.

Every route parses its request, calls the engine function the matching `kb` command calls,
and renders the result (JSON, or the report templates of `reports/`); nothing here decides a
verdict. The package, one job per module:

- `app.py`: the app factory (`create_app`), its error handlers, and `serve`;
- `state.py`: `WebState`, what lives as long as the app, and `state_of`, how a route gets it;
- `guard.py`: the middleware in front of every route (token, sign-in cookie, Host, origin,
  body size, security headers);
- `api.py` and `pages.py`: the routes, as routers that stand alone;
- `params.py`: request parsing into the engine's option objects;
- `qualify.py`: one qualify request, shared by the API and the page;
- `uploads.py`: receiving micrographs, streamed to disk and sniffed;
- `responses.py`: errors as one readable line, JSON or a page.
"""

from __future__ import annotations

from cli.web.app import create_app, serve
from cli.web.guard import check_session_hours, check_token, is_loopback
from cli.web.responses import status_of
from cli.web.state import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_FILES,
    DEFAULT_SESSION_HOURS,
    State,
    WebState,
    state_of,
)

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_FILES",
    "DEFAULT_SESSION_HOURS",
    "State",
    "WebState",
    "check_session_hours",
    "check_token",
    "create_app",
    "is_loopback",
    "serve",
    "state_of",
    "status_of",
]
