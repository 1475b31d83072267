"""The pages of `kb serve` for people: server-rendered from reports/templates, calling the
same engine functions as the API (and as the `kb` commands).

`router` can be included in any FastAPI app that carries a WebState (see `cli.web.state`);
each route gets it through the `State` dependency. None of these routes is in the OpenAPI
document: that describes the API only.
"""

from __future__ import annotations

import hmac
import importlib.resources
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from cli.web.guard import MAX_NAME_LENGTH, SESSION_COOKIE, session_value, signed_in
from cli.web.params import QualifyQuery, check_id
from cli.web.qualify import qualify_request
from cli.web.responses import render, status_of
from cli.web.state import State, WebState
from cli.web.uploads import human_bytes
from engine.history import add_feedback, list_qualifications, load_qualification
from engine.report_files import render_stored_micrograph, render_stored_report, stored_thumbnail
from engine.sync import compile_workspace
from kb.audit import is_blank
from kb.config import Workspace
from kb.errors import NotFoundError, VLKBError
from kb.vocabulary import PURPOSES, VERDICTS

STATIC = Path(__file__).resolve().parent / "static"
# Files the pages load from the app itself (so the policy needs no inline script). A request
# names one of these keys; no path is ever built from it.
STATIC_FILES = {"qualify.js": ("qualify.js", "text/javascript; charset=utf-8")}
# Swagger UI 5 (it reads OpenAPI 3.1, which FastAPI writes), as fastapi-offline ships it.
SWAGGER_DIR = importlib.resources.files("fastapi_offline") / "static"
SWAGGER_FILES = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8",
                 "swagger-ui.css": "text/css; charset=utf-8"}
ICON = (  # browsers ask for /favicon.ico on every page; a small inline drawing answers
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect width="16" height="16" rx="3" fill="#24466e"/>'
    '<path d="M3 4l5 9 5-9" stroke="#fff" stroke-width="2" fill="none"/></svg>'
)


def page(state: WebState, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page of this app: the template with the workspace's name and whether sign-in is on."""
    context.setdefault("workspace_name", state.workspace.root.name)
    context.setdefault("login", state.token is not None)
    return HTMLResponse(render(template, **context), status_code=status)


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


def qualification_page(
    state: WebState, qualification_id: int, status: int = 200, **context: Any
) -> HTMLResponse:
    """One stored qualification with its feedback form (filled in again after a refusal)."""
    doc = load_qualification(state.vlkb, check_id(qualification_id))
    # rendered by reports/ with autoescape on, from the stored record: markup, not text
    context.setdefault("micrograph", Markup(render_stored_micrograph(state.vlkb, doc["id"])))
    context.setdefault("form", {})
    context.setdefault("error", None)
    context.setdefault("recorded", None)
    return page(state, "web_qualification.html.j2", status, doc=doc, **context)


router = APIRouter(include_in_schema=False)


@router.get("/")
def qualify_page(state: State) -> HTMLResponse:
    try:
        decisions, rules_error = rules_decisions(state.workspace), None
    except VLKBError as exc:
        decisions, rules_error = [], str(exc)
    return page(
        state,
        "web_qualify.html.j2",
        roles=state.roles(),
        decisions=decisions,
        rules_error=rules_error,
        max_file=human_bytes(state.max_file_bytes),
        max_files=state.max_files,
    )


@router.post("/qualify")
async def qualify_fragment(request: Request, params: QualifyQuery, state: State) -> HTMLResponse:
    status, document = await qualify_request(request, params, state)
    html = render("web_results.html.j2", status=status, document=document,
                  view=results_view(document))
    return HTMLResponse(html, status_code=status)


@router.get("/history")
def history_page(
    state: State,
    since: str | None = None,
    verdict: str | None = None,
    q: str | None = None,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> HTMLResponse:
    filters = {"since": since or "", "verdict": verdict or "", "q": q or "",
               "purpose": purpose or "", "limit": limit}
    choices = {"verdicts": VERDICTS, "purposes": PURPOSES}
    try:
        rows = list_qualifications(
            state.vlkb, limit=limit, since=since or None, verdict=verdict or None,
            sample=q or None, purpose=purpose or None,
        )
    except VLKBError as exc:
        return page(state, "web_history.html.j2", status_of(exc), rows=[], filters=filters,
                    error=str(exc), **choices)
    return page(state, "web_history.html.j2", rows=rows, filters=filters, error=None,
                **choices)


@router.get("/qualifications/{qualification_id:int}")
def show_page(
    request: Request, qualification_id: int, state: State, recorded: int | None = None
) -> HTMLResponse:
    form = {"expert": signed_in(request) or ""}  # offered, still the expert's to change
    return qualification_page(state, qualification_id, recorded=recorded, form=form)


@router.get("/qualifications/{qualification_id:int}/report")
def report_page(qualification_id: int, state: State) -> HTMLResponse:
    return HTMLResponse(render_stored_report(state.vlkb, check_id(qualification_id)))


@router.get("/qualifications/{qualification_id:int}/thumbnail.png")
def thumbnail_image(qualification_id: int, state: State) -> Response:
    """The sample's stored thumbnail, shown beside its verdicts."""
    png = stored_thumbnail(state.vlkb, check_id(qualification_id))
    return Response(png, media_type="image/png")


@router.post("/qualifications/{qualification_id:int}/feedback")
def feedback_form(
    qualification_id: int,
    state: State,
    node: Annotated[str, Form()] = "",
    verdict: Annotated[str, Form()] = "",
    comment: Annotated[str, Form()] = "",
    expert: Annotated[str, Form()] = "",
) -> Response:
    form = {"node": node, "verdict": verdict, "comment": comment, "expert": expert}
    try:
        with state.write_lock:
            entry = add_feedback(
                state.vlkb, check_id(qualification_id), node, verdict, comment, expert
            )
    except VLKBError as exc:  # a missing qualification raises again below: 404
        status = 400 if isinstance(exc, NotFoundError) else status_of(exc)
        return qualification_page(state, qualification_id, status, form=form, error=str(exc))
    return RedirectResponse(
        f"/qualifications/{qualification_id}?recorded={entry['id']}#feedback", 303
    )


@router.get("/favicon.ico")
def favicon() -> Response:
    return Response(ICON, media_type="image/svg+xml")


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    known = STATIC_FILES.get(name)
    if known is None:
        raise NotFoundError(f"no static file {name!r}")
    file_name, media_type = known
    return Response((STATIC / file_name).read_bytes(), media_type=media_type)


@router.get("/docs")
def api_docs() -> HTMLResponse:
    """Swagger UI for the JSON API, with its assets from this app (it works offline)."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="VLKB API",
        swagger_js_url="/static/swagger/swagger-ui-bundle.js",
        swagger_css_url="/static/swagger/swagger-ui.css",
        swagger_favicon_url="/favicon.ico",
    )


@router.get("/static/swagger/{name}")
def swagger_asset(name: str) -> Response:
    """The two Swagger UI files /docs loads, from the pinned fastapi-offline package."""
    media_type = SWAGGER_FILES.get(name)
    if media_type is None:
        raise NotFoundError(f"no static file {name!r}")
    return Response((SWAGGER_DIR / name).read_bytes(), media_type=media_type)


@router.get("/login")
def login_page(state: State) -> HTMLResponse:
    return page(state, "web_login.html.j2", failed=False)


@router.post("/login")
def login(
    request: Request,
    state: State,
    token: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
) -> Response:
    if state.token is None:
        return RedirectResponse("/", 303)
    person = " ".join(name.split())
    if is_blank(person) or len(person) > MAX_NAME_LENGTH:
        problem = (f"Sign in with your name (at most {MAX_NAME_LENGTH} characters): it is "
                   "recorded as the operator of what you qualify.")
        return page(state, "web_login.html.j2", 400, failed=False, problem=problem, name=person)
    if not hmac.compare_digest(token.encode(), state.token.encode()):
        return page(state, "web_login.html.j2", 401, failed=True, name=person)
    expires = time.time() + state.session_seconds
    response = RedirectResponse("/", 303)
    response.set_cookie(
        SESSION_COOKIE, session_value(state.token, person, expires), httponly=True,
        samesite="strict", secure=request.url.scheme == "https", path="/",
        max_age=int(state.session_seconds),
        expires=datetime.fromtimestamp(expires, UTC),
    )
    return response
