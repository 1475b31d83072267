"""The web package's routers stand alone: each serves on a bare FastAPI app that carries a
WebState, with no factory, closure or module-level state behind it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cli.web import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_FILES, WebState, api, create_app, pages
from cli.web.state import attach, state_of_app
from engine.session import VLKB
from kb.config import Workspace
from tests.cli_runner import kb
from tests.workspaces import example_copy

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "sound-bead-a.png"


@pytest.fixture
def example(tmp_path: Path) -> Workspace:
    return example_copy(tmp_path / "example")


@pytest.fixture
def state(example: Workspace) -> Iterator[WebState]:
    with VLKB(example) as vlkb:
        yield WebState(vlkb=vlkb, token=None, session_seconds=3600.0,
                       max_file_bytes=DEFAULT_MAX_FILE_BYTES, max_files=DEFAULT_MAX_FILES)


def bare_app(state: WebState, *routers: object) -> FastAPI:
    app = FastAPI()
    attach(app, state)
    for router in routers:
        app.include_router(router)  # type: ignore[arg-type]
    return app


def test_the_api_router_alone_on_a_bare_app_answers_what_kb_prints(
    state: WebState, example: Workspace
):
    with TestClient(bare_app(state, api.router)) as client:
        code, out, err = kb("tree", "--json", "-w", example.root)
        assert code == 0, err
        assert client.get("/api/tree").json() == json.loads(out)
        files = [("files", (SAMPLE.name, SAMPLE.read_bytes(), "image/png"))]
        response = client.post("/api/qualify", files=files)
        assert response.status_code == 200, response.text
        (judged,) = response.json()["qualifications"]
        shown = client.get(f"/api/qualifications/{judged['id']}").json()
        assert shown["verdict"] == judged["verdict"]
        assert shown["sample"]["path"] == f"upload:{SAMPLE.name}"
        assert client.get("/").status_code == 404  # the pages are another router


def test_the_pages_router_alone_on_a_bare_app_renders_the_pages(
    state: WebState, example: Workspace
):
    with TestClient(bare_app(state, pages.router)) as client:
        for path in ("/", "/history", "/login"):
            response = client.get(path)
            assert response.status_code == 200, path
            assert "text/html" in response.headers["content-type"], path
            assert example.root.name in response.text, path
        assert client.get("/api/tree").status_code == 404  # the API is another router


def test_a_router_on_an_app_without_a_web_state_says_what_is_missing():
    app = FastAPI()
    app.include_router(api.router)
    with TestClient(app) as client, pytest.raises(RuntimeError, match="carries no WebState"):
        client.get("/api/tree")


def test_each_app_holds_its_own_state_and_write_lock(example: Workspace):
    first, second = create_app(example), create_app(example)
    assert state_of_app(first) is not state_of_app(second)
    assert state_of_app(first).write_lock is not state_of_app(second).write_lock
    assert state_of_app(first).workspace.root == state_of_app(second).workspace.root
