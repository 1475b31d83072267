"""`kb serve`: the JSON API and pages against the real app, real tiny models and real SQLite
and (the tests that store, @both_backends) this session's PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from cli.app import app as kb_app
from cli.web import create_app, is_loopback, serve
from cli.web.uploads import clean_name
from engine.history import verify_audit_log
from engine.session import VLKB
from engine.sync import sync_workspace
from kb.config import Workspace
from kb.errors import VLKBError
from tests.backends import both_backends
from tests.cli_runner import kb
from tests.workspaces import micrograph, new_workspace, use_database, write_carbide_assessment

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
TOKEN = "correct-horse-battery-staple"
runner = CliRunner()




def upload(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]


def stored(ws: Workspace) -> int:
    """Qualifications and feedback in the audit chain, checked end to end."""
    report = verify_audit_log(VLKB(ws))
    assert report.ok, report.problem
    counts = dict(report.counts)
    return counts["qualification"] + counts["feedback"]


@pytest.fixture
def uploads_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary files of this test land here, so a test can see that uploads are removed."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def example(request: pytest.FixtureRequest, tmp_path: Path, uploads_dir: Path) -> Workspace:
    """A synced copy of the repo-root example workspace, roles unbound (measurements only);
    its knowledge base on each backend when the test runs @both_backends."""
    root = tmp_path / "example"
    root.mkdir()
    config = (REPO / "kb.toml").read_text(encoding="utf-8")
    config = re.sub(r'(?m)^(text|image|local)\s*=\s*"[^"]*"', r'\1 = ""', config)
    (root / "kb.toml").write_text(config, encoding="utf-8")
    shutil.copytree(REPO / "rules", root / "rules")
    ws = Workspace.open(root)
    if "database_url" in request.fixturenames:
        ws = use_database(root, request.getfixturevalue("database_url"))
    sync_workspace(VLKB(ws))
    return ws


@pytest.fixture
def client(example: Workspace) -> Iterator[TestClient]:
    with TestClient(create_app(example)) as test_client:
        yield test_client


@pytest.fixture
def vlr(tmp_path: Path, tiny_clip_dir: Path, tiny_flava_dir: Path, uploads_dir: Path) -> Workspace:
    """Tiny real CLIP and FLAVA bound to the roles; EA-5 has prompts, references and a score."""
    ws = new_workspace(tmp_path / "vlr", tiny_clip_dir, tiny_flava_dir)
    write_carbide_assessment(ws)
    sync_workspace(VLKB(ws))
    return ws


def expected_verdicts() -> dict[str, dict[str, str]]:
    with (EXAMPLES / "labels.csv").open(newline="", encoding="utf-8") as handle:
        return {row["image"]: row for row in csv.DictReader(handle)}


def truncated_png() -> bytes:
    data = (EXAMPLES / "sound-bead-a.png").read_bytes()
    return data[: len(data) // 2]


# --- qualify -------------------------------------------------------------------------------------


@both_backends
def test_one_upload_answers_what_kb_qualify_json_prints(client: TestClient, example: Workspace):
    sample = EXAMPLES / "sound-bead-a.png"
    response = client.post("/api/qualify", files=upload(sample))
    assert response.status_code == 200, response.text
    document = response.json()
    code, out, err = kb("qualify", sample, "--json", "-w", example.root)
    assert code == 0, err
    cli = json.loads(out)
    assert document.keys() == cli.keys() == {"qualifications", "failures", "skipped"}
    (web,), (ref,) = document["qualifications"], cli["qualifications"]
    assert web.keys() == ref.keys() | {"links"}  # the web adds where to read it back
    assert web["sample"]["path"] == "upload:sound-bead-a.png"
    assert web["sample"]["sha256"] == ref["sample"]["sha256"]
    assert web["verdict"] == ref["verdict"] == "accept"
    assert [(n["key"], n["verdict"], n["rationale"]) for n in web["nodes"]] == [
        (n["key"], n["verdict"], n["rationale"]) for n in ref["nodes"]
    ]
    assert document["failures"] == [] and web["id"] == ref["id"] - 1
    assert stored(example) == 2
    for name, link in web["links"].items():
        answer = client.get(link)
        assert answer.status_code == 200, (name, link)
    assert client.get(web["links"]["json"]).json()["id"] == web["id"]


@both_backends
def test_many_uploads_get_the_expected_verdicts(client: TestClient, example: Workspace):
    labels = expected_verdicts()
    samples = sorted(EXAMPLES.glob("*.png"))
    response = client.post("/api/qualify", files=upload(*samples))
    assert response.status_code == 200, response.text
    results = response.json()["qualifications"]
    assert [q["sample"]["path"] for q in results] == [f"upload:{p.name}" for p in samples]
    for q in results:
        name = q["sample"]["path"].removeprefix("upload:")
        assert q["verdict"] == labels[name]["overall"], name
        for node in q["nodes"]:
            if node["kind"] == "assessment" and node["verdict"] != "not_assessed":
                assert node["verdict"] == labels[name][node["key"]], (name, node["key"])
    assert stored(example) == len(samples)


@both_backends
def test_a_corrupt_image_is_422_and_nothing_is_stored(
    client: TestClient, example: Workspace, uploads_dir: Path
):
    response = client.post("/api/qualify", files=[("files", ("bead.png", truncated_png(), "x"))])
    assert response.status_code == 422
    document = response.json()
    assert "damaged or truncated" in document["error"] and "nothing stored" in document["error"]
    assert document["qualifications"] == []
    assert document["failures"][0]["path"] == "upload:bead.png"
    assert str(uploads_dir) not in json.dumps(document)  # no server path leaks out
    assert stored(example) == 0 and client.get("/api/qualifications").json() == {
        "qualifications": []
    }
    assert list(uploads_dir.iterdir()) == []  # the temporary upload folder is gone


def test_content_is_sniffed_not_trusted_from_the_name(client: TestClient, example: Workspace):
    text = ("files", ("looks-fine.png", b"this is not an image at all", "image/png"))
    response = client.post("/api/qualify", files=[text])
    assert response.status_code == 415
    assert "not a PNG, JPEG, TIFF or BMP image" in response.json()["error"]
    # A real PNG under a misleading name and type is judged by its content.
    png = EXAMPLES / "porous-bead.png"
    disguised = ("files", ("notes.txt", png.read_bytes(), "text/plain"))
    response = client.post("/api/qualify", files=[disguised])
    assert response.status_code == 200
    (q,) = response.json()["qualifications"]
    assert q["verdict"] == "reject" and q["sample"]["path"] == "upload:notes.txt"
    # An empty file and an image type Pillow knows but VLKB does not take.
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    response = client.post("/api/qualify", files=[("files", ("a.gif", gif.getvalue(), "x"))])
    assert response.status_code == 415
    response = client.post("/api/qualify", files=[("files", ("empty.png", b"", "image/png"))])
    assert response.status_code == 422 and "file is empty" in response.json()["error"]
    assert stored(example) == 1


@both_backends
def test_good_files_are_stored_and_bad_ones_listed(client: TestClient, example: Workspace):
    files = [
        ("files", ("broken.png", truncated_png(), "image/png")),
        *upload(EXAMPLES / "sound-bead-b.png"),
        ("files", ("words.png", b"plain text", "image/png")),
    ]
    response = client.post("/api/qualify", files=files)
    assert response.status_code == 200
    document = response.json()
    assert [q["sample"]["path"] for q in document["qualifications"]] == [
        "upload:sound-bead-b.png"
    ]
    assert [f["path"] for f in document["failures"]] == ["upload:broken.png", "upload:words.png"]
    assert all(f["error"].startswith(f["path"] + ": ") for f in document["failures"])
    assert "error" not in document
    assert stored(example) == 1


def test_uploads_over_the_limit_are_413_and_nothing_is_stored(
    example: Workspace, uploads_dir: Path
):
    sample = EXAMPLES / "sound-bead-a.png"
    size = sample.stat().st_size
    with TestClient(create_app(example, max_file_bytes=size - 1, max_files=2)) as small:
        response = small.post("/api/qualify", files=upload(sample))
        assert response.status_code == 413
        assert "sound-bead-a.png: larger than the upload limit" in response.json()["error"]
        response = small.post("/api/qualify", files=upload(*[EXAMPLES / "deep-dilution.png"] * 3))
        assert response.status_code == 413 and "at most 2" in response.json()["error"]

        def chunked() -> Iterator[bytes]:  # no Content-Length: counted while it streams
            yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
            yield sample.read_bytes()
            yield b"\r\n--b--\r\n"

        response = small.post(
            "/api/qualify", content=chunked(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert response.status_code == 413
    with TestClient(create_app(example, max_file_bytes=size)) as exact:
        assert exact.post("/api/qualify", files=upload(sample)).status_code == 200
    assert stored(example) == 1
    assert list(uploads_dir.iterdir()) == []


def test_the_client_file_name_is_text_never_a_path(client: TestClient, example: Workspace):
    data = (EXAMPLES / "sound-bead-a.png").read_bytes()
    names = ["../../../../tmp/evil.png", "..\\..\\windows\\evil2.png", "<img src=x>.png"]
    response = client.post("/api/qualify", files=[("files", (n, data, "image/png")) for n in names])
    assert response.status_code == 200
    paths = [q["sample"]["path"] for q in response.json()["qualifications"]]
    assert paths == ["upload:evil.png", "upload:evil2.png", "upload:<img src=x>.png"]
    assert not (example.root / "evil.png").exists() and not Path("/tmp/evil.png").exists()
    history = client.get("/history").text
    assert "&lt;img src=x&gt;.png" in history and "<img src=x>" not in history
    assert clean_name("C:\\scans\\bead\x00\x1b[1m.png") == "bead[1m.png"
    assert clean_name("\x00/") == "unnamed" and len(clean_name("a" * 500)) == 120


def test_bad_options_and_requests_are_400_or_415_with_one_line(client: TestClient):
    png = upload(EXAMPLES / "sound-bead-a.png")
    cases = [
        ({"fusion": "max"}, 400, "unknown fusion 'max'"),
        ({"threshold": "high"}, 400, "threshold: "),
        ({"threshold": "nan"}, 400, "finite"),
        ({"weight": "image=lots"}, 400, "write ROLE=NUMBER"),
        ({"weights": "[1, 2]"}, 400, "JSON object"),
        ({"weight": "colour=2"}, 400, "unknown role(s) in weights: colour"),
        ({"normalize": "median"}, 400, "unknown normalisation 'median'"),
        ({"um_per_px": "-1"}, 400, "positive"),
        ({"review_margin": "-0.1"}, 400, "must not be negative"),
    ]
    for params, status, words in cases:
        response = client.post("/api/qualify", params=params, files=png)
        assert response.status_code == status, params
        assert words in response.json()["error"], (params, response.json())
    response = client.post("/api/qualify", files=[("scan", ("a.png", b"x", "image/png"))])
    assert response.status_code == 400 and "'files'" in response.json()["error"]
    response = client.post("/api/qualify", content=b"{}", headers={"content-type": "text/json"})
    assert response.status_code == 415
    response = client.post("/api/qualify", data={"note": "no files"}, files={"x": ("", b"")})
    assert response.status_code == 400 and "no files" in response.json()["error"]


def test_a_threshold_override_moves_a_verdict_for_this_request_only(vlr: Workspace):
    image = micrograph(vlr.root.parent / "one.png", seed=3, pink_share=0.3)
    rules = (vlr.rules_dir / "assessments" / "EA-5.toml").read_text()

    def ea5(client: TestClient, **params: Any) -> dict[str, Any]:
        response = client.post("/api/qualify", params=params, files=upload(image))
        assert response.status_code == 200, response.text
        (q,) = response.json()["qualifications"]
        return {**next(n for n in q["nodes"] if n["key"] == "EA-5"), "doc": q}

    with TestClient(create_app(vlr)) as client:
        assert client.get("/api/models").json()["roles"][0]["loaded"] is False
        plain = ea5(client)
        assert plain["doc"]["decision_override"] is None and plain["score"] is not None
        high = ea5(client, threshold=plain["score"] + 1)
        low = ea5(client, threshold=plain["score"] - 1)
        assert (high["verdict"], low["verdict"]) == ("reject", "accept")
        assert high["doc"]["decision_override"] == {"threshold": plain["score"] + 1}
        banded = ea5(client, threshold=plain["score"] + 0.1, review_margin=0.5)
        assert banded["verdict"] == "review"
        z = {e["role"]: e["z"] for e in plain["evidence"] if e["role"] in ("text", "image")}
        weighted = ea5(client, fusion="weighted", weight="image=3")
        assert weighted["score"] == pytest.approx((z["text"] + 3 * z["image"]) / 4)
        as_json = ea5(client, fusion="weighted", weights=json.dumps({"image": 3}))
        assert as_json["score"] == pytest.approx(weighted["score"])
        roles = {r["role"]: r for r in client.get("/api/models").json()["roles"]}
        assert roles["text"]["loaded"] and roles["image"]["loaded"] and roles["image"]["offline"]
        again = ea5(client)  # the rules were not changed by the overrides
        assert again["threshold"] == plain["threshold"] and again["verdict"] == plain["verdict"]
    assert (vlr.rules_dir / "assessments" / "EA-5.toml").read_text() == rules


def test_the_page_fragment_shows_badges_rationale_and_report_links(client: TestClient):
    response = client.post(
        "/qualify", params={"threshold": "0.5"},
        files=upload(EXAMPLES / "deep-dilution.png", EXAMPLES / "sound-bead-a.png"),
    )
    assert response.status_code == 200
    html = response.text
    assert re.search(r'data-node="overall" data-verdict="reject"', html)
    assert re.search(r'data-node="EA-1" data-verdict="reject"', html)
    assert 'class="badge reject"' in html and 'class="badge accept"' in html
    assert "Measured dilution" in html  # the rationale
    assert "threshold 0.5" in html  # the override is said
    ids = re.findall(r'<tr data-id="(\d+)">', html)
    assert len(ids) == 2
    for ident in ids:
        assert f'href="/qualifications/{ident}/report"' in html
        report = client.get(f"/qualifications/{ident}/report")
        assert report.status_code == 200 and "VLKB qualification report" in report.text
        assert f'src="/qualifications/{ident}/thumbnail.png"' in html  # beside its verdicts
        thumbnail = client.get(f"/qualifications/{ident}/thumbnail.png")
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(thumbnail.content)).size == (640, 480)
    assert client.get("/qualifications/999999/thumbnail.png").status_code == 404
    bad = client.post("/qualify", files=[("files", ("x.png", b"nope", "image/png"))])
    assert bad.status_code == 415 and 'class="web-error"' in bad.text


# --- history, show, feedback ---------------------------------------------------------------------


@both_backends
def test_history_filters_by_day_verdict_and_sample_name(client: TestClient):
    names = ["sound-bead-a.png", "deep-dilution.png", "porous-bead.png"]
    client.post("/api/qualify", files=upload(*[EXAMPLES / n for n in names]))

    def listed(**params: Any) -> list[str]:
        response = client.get("/api/qualifications", params=params)
        assert response.status_code == 200, response.text
        return [q["sample"]["path"] for q in response.json()["qualifications"]]

    assert listed() == [f"upload:{n}" for n in reversed(names)]
    assert listed(verdict="reject") == ["upload:porous-bead.png", "upload:deep-dilution.png"]
    assert listed(q="SOUND") == ["upload:sound-bead-a.png"]
    assert listed(q="bead", verdict="reject") == ["upload:porous-bead.png"]
    assert listed(q="%") == [] and listed(q="_") == []  # wildcards are literal
    assert listed(since="2000-01-01", limit=1) == ["upload:porous-bead.png"]
    assert listed(since="2999-01-01") == []
    response = client.get("/api/qualifications", params={"since": "yesterday"})
    assert response.status_code == 400 and "is not a date" in response.json()["error"]
    response = client.get("/api/qualifications", params={"verdict": "maybe"})
    assert response.status_code == 400 and "unknown verdict" in response.json()["error"]
    response = client.get("/api/qualifications", params={"limit": 0})
    assert response.status_code == 400 and "limit" in response.json()["error"]
    assert listed(purpose="evaluation") == []
    assert len(listed(purpose="qualification")) == 3
    response = client.get("/api/qualifications", params={"purpose": "fun"})
    assert response.status_code == 400 and "unknown purpose" in response.json()["error"]
    page = client.get("/history", params={"q": "dilution", "verdict": "reject"})
    assert page.status_code == 200
    assert "deep-dilution.png" in page.text and "sound-bead-a.png" not in page.text
    bad = client.get("/history", params={"since": "soon"})
    assert bad.status_code == 400 and "is not a date" in bad.text


@both_backends
def test_show_is_what_kb_show_json_prints(client: TestClient, example: Workspace):
    client.post("/api/qualify", files=upload(EXAMPLES / "flat-deposit.png"))
    response = client.get("/api/qualifications/1")
    assert response.status_code == 200
    code, out, err = kb("show", 1, "--json", "-w", example.root)
    assert code == 0, err
    assert response.json() == json.loads(out)


def test_ids_are_integers_checked_by_the_router(client: TestClient):
    for path in ("/api/qualifications/7", "/api/qualifications/99999999999999999999999"):
        response = client.get(path)
        assert response.status_code == 404
        assert "no qualification with ID" in response.json()["error"]
    for path in ("/api/qualifications/abc", "/api/qualifications/-1", "/api/qualifications/1.5",
                 "/qualifications/..%2F..%2Fkb.toml/report", "/api/qualifications/%2e%2e"):
        response = client.get(path)
        assert response.status_code == 404, path
        if path.startswith("/api/"):
            assert "error" in response.json()
        else:
            assert response.headers["content-type"].startswith("text/html")
    page = client.get("/qualifications/3")
    assert page.status_code == 404 and "no qualification with ID 3" in page.text


@both_backends
def test_feedback_round_trip_through_api_and_form(client: TestClient, example: Workspace):
    client.post("/api/qualify", files=upload(EXAMPLES / "clustered-carbides.png"))
    response = client.post(
        "/api/qualifications/1/feedback",
        json={"node": "EA-6", "verdict": "accept", "comment": "clusters are within spec",
              "expert": "Dr. Ada Lovelace"},
    )
    assert response.status_code == 201, response.text
    entry = response.json()["feedback"]
    assert entry["machine_verdict"] == "reject" and entry["verdict"] == "accept"
    form = client.post(
        "/qualifications/1/feedback",
        data={"node": "EA-1", "verdict": "reject", "comment": "dilution <looks> high",
              "expert": "R. Hooke"},
        follow_redirects=False,
    )
    assert form.status_code == 303 and form.headers["location"].startswith("/qualifications/1?")
    page = client.get(form.headers["location"])
    assert "recorded in the audit log" in page.text and "dilution &lt;looks&gt; high" in page.text

    (row,) = client.get("/api/qualifications").json()["qualifications"]
    assert [(f["node"], f["verdict"], f["expert"]) for f in row["feedback"]] == [
        ("EA-6", "accept", "Dr. Ada Lovelace"), ("EA-1", "reject", "R. Hooke")
    ]
    shown = client.get("/api/qualifications/1").json()
    assert [f["comment"] for f in shown["feedback"]] == [
        "clusters are within spec", "dilution <looks> high"
    ]
    report = client.get("/qualifications/1/report").text
    assert "clusters are within spec" in report and "Dr. Ada Lovelace" in report
    history = client.get("/history").text
    assert "clusters are within spec" in history and "R. Hooke" in history
    code, out, _ = kb("audit", "verify", "--json", "-w", example.root)
    assert code == 0 and json.loads(out)["feedback"] == 2 and json.loads(out)["ok"] is True


@both_backends
def test_feedback_errors_are_readable_and_store_nothing(client: TestClient, example: Workspace):
    client.post("/api/qualify", files=upload(EXAMPLES / "sound-bead-a.png"))
    post = client.post
    response = post("/api/qualifications/1/feedback",
                    json={"node": "EA-9", "verdict": "accept", "comment": "x"})
    assert response.status_code == 404 and "has no node 'EA-9'" in response.json()["error"]
    response = post("/api/qualifications/1/feedback",
                    json={"node": "EA-1", "verdict": "review", "comment": "x"})
    assert response.status_code == 400 and response.json()["error"].startswith("verdict: ")
    response = post("/api/qualifications/1/feedback",
                    json={"node": "EA-1", "verdict": "accept", "comment": "  "})
    assert response.status_code == 400 and "needs a comment" in response.json()["error"]
    response = post("/api/qualifications/5/feedback",
                    json={"node": "EA-1", "verdict": "accept", "comment": "x"})
    assert response.status_code == 404
    form = post("/qualifications/1/feedback", data={"node": "EA-1", "verdict": "accept",
                                                    "comment": "", "expert": "me"})
    assert form.status_code == 400 and "needs a comment" in form.text
    assert stored(example) == 1


# --- tree, models, pages -------------------------------------------------------------------------


def test_tree_is_what_kb_tree_json_prints(client: TestClient, example: Workspace):
    code, out, err = kb("tree", "--json", "-w", example.root)
    assert code == 0, err
    assert client.get("/api/tree").json() == json.loads(out)


def test_models_add_loaded_and_roles_to_kb_models(client: TestClient, example: Workspace):
    code, out, _ = kb("models", "--json", "-w", example.root)
    document = client.get("/api/models").json()
    assert [{k: v for k, v in m.items() if k != "loaded"} for m in document["models"]] == (
        json.loads(out)["models"]
    )
    assert [(r["role"], r["model"], r["loaded"]) for r in document["roles"]] == [
        ("text", None, False), ("image", None, False), ("local", None, False)
    ]
    page = client.get("/").text
    assert 'data-role="text"' in page and "unbound" in page


def test_pages_fetch_nothing_from_elsewhere(client: TestClient):
    client.post("/api/qualify", files=upload(EXAMPLES / "sound-bead-a.png"))
    client.post("/api/qualifications/1/feedback",
                json={"node": "EA-1", "verdict": "accept", "comment": "ok", "expert": "me"})
    for path in ("/", "/history", "/qualifications/1", "/qualifications/1/report", "/login"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy
        html = response.text
        assert not re.search(r'(src|href|action)="(https?:)?//', html), path
        assert "@import" not in html and "url(http" not in html, path
    assert "content-security-policy" not in client.get("/docs").headers  # Swagger UI's CDN


def test_openapi_documents_the_api(client: TestClient):
    spec = client.get("/openapi.json").json()
    assert {"/api/qualify", "/api/qualifications", "/api/qualifications/{qualification_id}",
            "/api/qualifications/{qualification_id}/feedback", "/api/tree",
            "/api/models"} <= set(spec["paths"])
    qualify = spec["paths"]["/api/qualify"]["post"]
    assert "multipart/form-data" in qualify["requestBody"]["content"]
    assert {p["name"] for p in qualify["parameters"]} >= {"threshold", "fusion", "weight"}
    assert "/" not in spec["paths"] and "/history" not in spec["paths"]


def test_unknown_paths_are_json_for_the_api_and_a_page_otherwise(client: TestClient):
    response = client.get("/api/nothing")
    assert response.status_code == 404 and response.json() == {
        "error": "not found: GET /api/nothing"
    }
    response = client.get("/nothing")
    assert response.status_code == 404 and "text/html" in response.headers["content-type"]


# --- safety --------------------------------------------------------------------------------------


def test_a_token_is_required_on_every_request_when_configured(example: Workspace):
    with TestClient(create_app(example, token=TOKEN)) as client:
        for path in ("/api/tree", "/api/qualifications", "/openapi.json", "/docs"):
            assert client.get(path).status_code == 401, path
            wrong = client.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/tree", headers=good).status_code == 200
        response = client.post("/api/qualify", files=upload(EXAMPLES / "sound-bead-a.png"))
        assert response.status_code == 401 and stored(example) == 0
        response = client.post("/api/qualify", headers=good,
                               files=upload(EXAMPLES / "sound-bead-a.png"))
        assert response.status_code == 200

        page = client.get("/history")
        assert page.status_code == 401 and 'name="token"' in page.text
        assert "sound-bead-a" not in page.text
        failed = client.post("/login", data={"token": "guess", "name": "Eve"},
                             follow_redirects=False)
        assert failed.status_code == 401 and "not the right one" in failed.text
        login = client.post("/login", data={"token": TOKEN, "name": "Dr. Ada Lovelace"},
                            follow_redirects=False)
        assert login.status_code == 303
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        page = client.get("/history")  # the client keeps the cookie
        assert page.status_code == 200 and "sound-bead-a" in page.text
        client.cookies.clear()
        client.cookies.set("vlkb_session", "forged")
        assert client.get("/history").status_code == 401


def test_cross_site_writes_are_refused(client: TestClient, example: Workspace):
    png = upload(EXAMPLES / "sound-bead-a.png")
    evil = client.post("/api/qualify", files=png, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403 and evil.json()["error"] == "cross-site request refused"
    opaque = client.post("/api/qualify", files=png, headers={"Origin": "null"})
    assert opaque.status_code == 403
    same = client.post("/api/qualify", files=png, headers={"Origin": "http://testserver"})
    assert same.status_code == 200
    assert stored(example) == 1


def test_an_allowed_host_list_refuses_other_host_names(example: Workspace):
    app = create_app(example, allowed_hosts=frozenset({"127.0.0.1", "localhost"}))
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/api/tree").status_code == 200
        rebound = client.get("/api/tree", headers={"Host": "attacker.example:8000"})
        assert rebound.status_code == 400 and "not served here" in rebound.json()["error"]


@both_backends
def test_eight_parallel_uploads_all_succeed(client: TestClient, example: Workspace):
    samples = sorted(EXAMPLES.glob("*.png"))
    jobs = [samples[i % len(samples)] for i in range(8)]

    def send(path: Path) -> tuple[int, str]:
        response = client.post("/api/qualify", files=upload(path))
        return response.status_code, response.text

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(send, jobs))
    assert [status for status, _ in answers] == [200] * 8, [t for _, t in answers]
    assert not any("locked" in text for _, text in answers)
    ids = {json.loads(text)["qualifications"][0]["id"] for _, text in answers}
    assert ids == set(range(1, 9))
    assert stored(example) == 8


def test_serve_refuses_to_leave_loopback_without_a_token(example: Workspace):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert not is_loopback("example.org")
    with pytest.raises(VLKBError, match="without a token: set KB_TOKEN"):
        serve(example, "0.0.0.0", 8000, None)
    with pytest.raises(VLKBError, match="KB_TOKEN is too short"):
        serve(example, "0.0.0.0", 8000, "short")
    result = runner.invoke(
        kb_app, ["serve", "--host", "0.0.0.0", "-w", str(example.root)], env={"KB_TOKEN": ""}
    )
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "without a token" in result.stderr


# --- two writers, one chain ----------------------------------------------------------------------


def test_cli_and_web_writing_at_the_same_time_extend_one_chain_without_failures(
    client: TestClient, example: Workspace, tmp_path: Path
):
    samples = sorted(EXAMPLES.glob("*.png"))
    batch = tmp_path / "batch"
    batch.mkdir()
    for i in range(3 * 32):
        shutil.copy(samples[i % len(samples)], batch / f"b{i:03d}-{samples[i % len(samples)].name}")
    database = example.root / "kb.sqlite"

    def cli_stored() -> int:
        with sqlite3.connect(database, timeout=30) as con:
            return con.execute(
                "SELECT COUNT(*) FROM qualification WHERE sample_path NOT LIKE 'upload:%'"
            ).fetchone()[0]

    command = [str(Path(sys.executable).with_name("kb")), "qualify", str(batch), "--json",
               "-w", str(example.root)]
    cli_out, cli_err = tmp_path / "cli.out", tmp_path / "cli.err"
    with cli_out.open("w") as stdout, cli_err.open("w") as stderr:  # a pipe would fill and stall
        cli = subprocess.Popen(command, stdout=stdout, stderr=stderr,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 120
        while cli_stored() == 0 and cli.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)

        def send(path: Path) -> tuple[int, str]:
            response = client.post("/api/qualify", files=upload(path))
            return response.status_code, response.text

        answers = []
        for _ in range(3):
            with ThreadPoolExecutor(max_workers=4) as pool:
                answers += list(pool.map(send, [samples[i % len(samples)] for i in range(32)]))
        cli.wait(timeout=300)
    finally:
        if cli.poll() is None:
            cli.kill()
    out, err = cli_out.read_text(), cli_err.read_text()
    assert cli.returncode == 0, err
    cli_doc = json.loads(out)
    assert cli_doc["failures"] == [] and len(cli_doc["qualifications"]) == 3 * 32
    refused = [text for status, text in answers if status != 200]
    assert refused == [] and len(answers) == 3 * 32
    assert all(json.loads(text)["failures"] == [] for _, text in answers)
    with sqlite3.connect(database) as con:
        order = [path.startswith("upload:") for (path,) in con.execute(
            "SELECT q.sample_path FROM audit_chain c JOIN qualification q ON q.id = c.record_id "
            "WHERE c.kind = 'qualification' ORDER BY c.seq")]
    assert order.count(True) == order.count(False) == 3 * 32
    switches = sum(1 for a, b in zip(order, order[1:], strict=False) if a != b)
    assert switches >= 2, "the two writers did not overlap, so nothing was tested"
    assert stored(example) == 2 * 3 * 32


def test_a_locked_database_answers_503_never_422(example: Workspace):
    config = example.root / "kb.toml"
    config.write_text(config.read_text().replace("[database]", "[database]\nbusy_timeout_s = 0.2"))
    assert "busy_timeout_s = 0.2" in config.read_text()
    ws = Workspace.open(example.root)
    with TestClient(create_app(ws)) as client:
        blocker = sqlite3.connect(ws.root / "kb.sqlite")
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            response = client.post("/api/qualify", files=upload(EXAMPLES / "sound-bead-a.png"))
        finally:
            blocker.rollback()
            blocker.close()
        assert response.status_code == 503, response.text
        assert "locked" in response.json()["error"]
        response = client.post("/api/qualify", files=upload(EXAMPLES / "sound-bead-a.png"))
        assert response.status_code == 200, response.text
