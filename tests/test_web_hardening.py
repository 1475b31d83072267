"""`kb serve` hardening: weak tokens are refused, the sign-in cookie expires and is signed, and
the pages run no inline script (the Content-Security-Policy needs no 'unsafe-inline' for them).

Real app (TestClient), real SQLite workspace, real CLI.
"""

from __future__ import annotations

import base64
import json
import re
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli.app import app as kb_app
from cli.web import create_app, serve
from kb.config import Workspace
from kb.errors import VLKBError
from tests.workspaces import example_copy

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
TOKEN = "correct-horse-battery-staple"
runner = CliRunner()

WEAK_TOKENS = [
    (" " * 24, "whitespace"),
    ("\t \n " * 6, "whitespace"),
    ("a" * 32, "one repeated character"),
    ("abababababababababab", "distinct characters"),
    ("1234512345123451234512345", "distinct characters"),
    ("short-token", "too short"),
    (f" {TOKEN} ", "whitespace"),
]


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return example_copy(tmp_path / "example")


def sign_in(client: TestClient, name: str = "Dr. Ada Lovelace", token: str = TOKEN):
    return client.post("/login", data={"token": token, "name": name}, follow_redirects=False)


# --- tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("token", "why"), WEAK_TOKENS)
def test_a_weak_token_is_refused_by_the_app_and_by_serve(
    workspace: Workspace, token: str, why: str
):
    with pytest.raises(VLKBError, match=why) as refused:
        create_app(workspace, token=token)
    assert "\n" not in str(refused.value) and "KB_TOKEN" in str(refused.value)
    with pytest.raises(VLKBError, match=why):
        serve(workspace, "0.0.0.0", 8000, token)
    with pytest.raises(VLKBError, match=why):  # on loopback too: a token given is checked
        serve(workspace, "127.0.0.1", 8000, token)


def test_kb_serve_names_a_weak_token_in_one_line(workspace: Workspace):
    result = runner.invoke(kb_app, ["serve", "--host", "0.0.0.0", "-w", str(workspace.root)],
                           env={"KB_TOKEN": "x" * 40})
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "one repeated character" in result.stderr


def test_a_random_token_is_accepted(workspace: Workspace):
    with TestClient(create_app(workspace, token=TOKEN)) as client:
        assert client.get("/api/tree", headers={"Authorization": f"Bearer {TOKEN}"}).is_success


# --- the sign-in cookie -------------------------------------------------------------------


def test_sign_in_asks_for_a_name_and_the_token(workspace: Workspace):
    with TestClient(create_app(workspace, token=TOKEN)) as client:
        page = client.get("/login")
        assert 'name="name"' in page.text and 'name="token"' in page.text
        nameless = sign_in(client, name="   ")
        assert nameless.status_code == 400 and "your name" in nameless.text
        assert "set-cookie" not in nameless.headers
        assert client.get("/history").status_code == 401
        assert sign_in(client).status_code == 303
        assert client.get("/history").status_code == 200


def test_the_sign_in_cookie_expires_after_12_hours_by_default(workspace: Workspace):
    with TestClient(create_app(workspace, token=TOKEN)) as client:
        login = sign_in(client)
        cookie = login.headers["set-cookie"]
        assert re.search(r"(?i)max-age=43200\b", cookie), cookie
        expires = re.search(r"(?i)expires=([^;]+)", cookie)
        assert expires, cookie
        left = parsedate_to_datetime(expires.group(1)).timestamp() - time.time()
        assert 12 * 3600 - 120 < left <= 12 * 3600 + 1


def test_an_expired_cookie_is_refused_even_if_the_browser_still_sends_it(workspace: Workspace):
    app = create_app(workspace, token=TOKEN, session_hours=1.5 / 3600)  # 1.5 seconds
    with TestClient(app) as client:
        login = sign_in(client)
        value = client.cookies.get("vlkb_session")
        assert value and re.search(r"(?i)max-age=1\b", login.headers["set-cookie"])
        assert client.get("/history").status_code == 200
        time.sleep(2.0)
        client.cookies.clear()
        client.cookies.set("vlkb_session", value)  # a browser that ignores Max-Age
        page = client.get("/history")
        assert page.status_code == 401 and 'name="token"' in page.text
        api = client.get("/api/qualifications")
        assert api.status_code == 401


def test_a_cookie_with_a_changed_name_or_expiry_is_refused(workspace: Workspace):
    with TestClient(create_app(workspace, token=TOKEN)) as client:
        sign_in(client, name="alice")
        value = client.cookies.get("vlkb_session")
        assert value and "." in value  # base64url(JSON of name and expiry) "." signature
        payload, _, signature = value.rpartition(".")
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert data["name"] == "alice"
        for forged in ({**data, "name": "mallory"}, {**data, "exp": data["exp"] + 10**6}):
            body = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
            client.cookies.clear()
            client.cookies.set("vlkb_session", f"{body}.{signature}")
            assert client.get("/history").status_code == 401
        client.cookies.clear()
        client.cookies.set("vlkb_session", value)
        assert client.get("/history").status_code == 200


def test_kb_serve_refuses_a_session_length_that_is_not_positive(workspace: Workspace):
    result = runner.invoke(kb_app, ["serve", "--session-hours", "0", "-w", str(workspace.root)])
    assert result.exit_code != 0 and "session-hours" in result.stderr
    with pytest.raises(VLKBError, match="session"):
        create_app(workspace, token=TOKEN, session_hours=0)


# --- Content-Security-Policy --------------------------------------------------------------


def script_policy(policy: str) -> str:
    return next(p.strip() for p in policy.split(";") if p.strip().startswith("script-src"))


def test_the_pages_run_no_inline_script_and_the_policy_allows_none(workspace: Workspace):
    with TestClient(create_app(workspace)) as client:
        sample = EXAMPLES / "sound-bead-a.png"
        client.post("/api/qualify", files=[("files", (sample.name, sample.read_bytes(),
                                                     "image/png"))])
        pages = ("/", "/history", "/qualifications/1", "/qualifications/1/report", "/login")
        scripts: set[str] = set()
        for path in pages:
            response = client.get(path)
            assert response.status_code == 200, path
            policy = response.headers["content-security-policy"]
            assert "'unsafe-inline'" not in script_policy(policy), path
            assert "'unsafe-eval'" not in script_policy(policy), path
            for tag in re.findall(r"<script\b[^>]*>", response.text):
                source = re.search(r'\bsrc="([^"]+)"', tag)
                assert source, (path, tag)  # no inline script
                scripts.add(source.group(1))
            assert not re.search(r"\son[a-z]+=", response.text), path  # no inline handlers
        assert scripts, "the qualify page needs its script"
        for src in scripts:
            assert src.startswith("/static/"), src
            served = client.get(src)
            assert served.status_code == 200 and "javascript" in served.headers["content-type"]
            assert "drop-zone" in served.text or "addEventListener" in served.text
        assert client.get("/static/../kb.toml").status_code == 404
        assert client.get("/static/nothing.js").status_code == 404
