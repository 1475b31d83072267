"""The JSON API of `kb serve`: each endpoint answers what the matching `kb ... --json` prints.

`router` can be included in any FastAPI app that carries a WebState (see `cli.web.state`);
each route gets it through the `State` dependency. The request body of POST /api/qualify is
described here; the app states its own per-file limit in it (`describe_upload_limit`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from cli.web.params import FeedbackIn, QualifyQuery, check_id
from cli.web.qualify import qualify_request
from cli.web.state import State
from cli.web.uploads import FIELD, human_bytes
from engine.history import add_feedback, list_qualifications, load_qualification
from engine.sync import compile_workspace
from engine.tree import tree_document
from kb.config import Workspace
from kb.vocabulary import PURPOSES, VERDICTS

QUALIFY_PATH = "/api/qualify"
FILES_DESCRIPTION = "One or many micrographs (PNG, JPEG, TIFF, BMP)"


def upload_body(max_file_bytes: int | None = None) -> dict[str, Any]:
    """The OpenAPI request body of POST /api/qualify; with the per-file limit when known."""
    limit = f", at most {human_bytes(max_file_bytes)} each" if max_file_bytes else ""
    return {
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
                            "description": f"{FILES_DESCRIPTION}{limit}.",
                        }
                    },
                }
            }
        },
    }


def describe_upload_limit(spec: dict[str, Any], max_file_bytes: int) -> dict[str, Any]:
    """An app's OpenAPI document with its own per-file upload limit written into it."""
    operation = spec.get("paths", {}).get(QUALIFY_PATH, {}).get("post")
    if operation is not None:
        operation["requestBody"] = upload_body(max_file_bytes)
    return spec


def tree_of(workspace: Workspace) -> dict[str, Any]:
    """The detection tree as `kb tree --json` prints it."""
    return tree_document(compile_workspace(workspace))


router = APIRouter()


@router.post(QUALIFY_PATH, tags=["qualify"], openapi_extra={"requestBody": upload_body()})
async def api_qualify(request: Request, params: QualifyQuery, state: State) -> JSONResponse:
    """Judge and store micrographs: the JSON of `kb qualify --json`."""
    status, document = await qualify_request(request, params, state)
    return JSONResponse(document, status_code=status)


@router.get("/api/qualifications", tags=["history"])
def api_history(
    state: State,
    since: Annotated[str | None, Query(description="YYYY-MM-DD (UTC) or ISO time.")] = None,
    verdict: Annotated[str | None, Query(description=", ".join(VERDICTS))] = None,
    q: Annotated[str | None, Query(description="Sample name contains (any case).")] = None,
    purpose: Annotated[str | None, Query(description=", ".join(PURPOSES))] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    """The audit log, newest first, with expert feedback: `kb history --json`."""
    rows = list_qualifications(
        state.vlkb, limit=limit, since=since or None, verdict=verdict or None, sample=q or None,
        purpose=purpose or None,
    )
    return {"qualifications": rows}


@router.get("/api/qualifications/{qualification_id:int}", tags=["history"])
def api_show(qualification_id: int, state: State) -> dict[str, Any]:
    """One stored qualification with its feedback: `kb show ID --json`."""
    return load_qualification(state.vlkb, check_id(qualification_id))


@router.post(
    "/api/qualifications/{qualification_id:int}/feedback", tags=["history"], status_code=201
)
def api_feedback(qualification_id: int, body: FeedbackIn, state: State) -> dict[str, Any]:
    """Record an expert's verdict beside the machine's: `kb feedback --json`."""
    with state.write_lock:
        entry = add_feedback(
            state.vlkb, check_id(qualification_id), body.node, body.verdict, body.comment,
            body.expert or "",  # a name is required here: never the server's account
        )
    return {"feedback": entry}


@router.get("/api/tree", tags=["rules"])
def api_tree(state: State) -> dict[str, Any]:
    """The detection tree of the rules as they are now: `kb tree --json`."""
    return tree_of(state.workspace)


@router.get("/api/models", tags=["rules"])
def api_models(state: State) -> dict[str, Any]:
    """`kb models --json`, plus whether each model is loaded in this server, and the roles."""
    roles = state.roles()
    loaded = {r["model"] for r in roles if r["loaded"]}
    models = [{**s.to_dict(), "loaded": s.name in loaded} for s in state.statuses()]
    return {"models": models, "roles": roles}
