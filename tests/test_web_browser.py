"""`kb serve` end to end in headless Chromium: pick and drop micrographs, move a verdict with
the threshold, read the report, record feedback and find it in the history.

Runs a real uvicorn server on a free loopback port and Debian's /usr/bin/chromium through
Playwright (never `playwright install`: nothing is downloaded).
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from PIL import Image

from cli.web import create_app
from engine.history import list_qualifications, verify_audit_log
from engine.session import VLKB
from engine.sync import sync_workspace
from kb.config import Workspace
from tests.workspaces import example_copy, micrograph, new_workspace, write_carbide_assessment

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 90_000  # the first run loads the tiny models; the machine is shared
TOKEN = "correct-horse-battery-staple"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def workspace(tmp_path: Path, tiny_clip_dir: Path, tiny_flava_dir: Path) -> Workspace:
    """Tiny real CLIP and FLAVA bound to the roles, so EA-5 has a fused score to move."""
    ws = new_workspace(tmp_path / "ws", tiny_clip_dir, tiny_flava_dir)
    write_carbide_assessment(ws)
    sync_workspace(VLKB(ws))
    return ws


@contextmanager
def run_server(app: Any) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def server(workspace: Workspace) -> Iterator[str]:
    with run_server(create_app(workspace)) as base:
        yield base


@pytest.fixture
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"chromium is not installed at {CHROMIUM}, but the web interface must be checked in "
            "a real browser: run `make install` (it installs Debian's chromium)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed in the venv: run `make install`")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def ea5_cell(page: Any) -> Any:
    return page.locator('#run-results td[data-node="EA-5"]').first


def run_and_wait(page: Any, previous_id: str | None) -> tuple[str, str, float]:
    """Press Qualify; wait for a new results table; (qualification ID, EA-5 verdict, score)."""
    page.click("#run")
    row = page.locator("#run-results tr[data-id]").first
    if previous_id is None:
        row.wait_for(timeout=WAIT_MS)
    else:
        page.wait_for_function(
            "id => { const row = document.querySelector('#run-results tr[data-id]');"
            " return row && row.dataset.id !== id; }",
            arg=previous_id, timeout=WAIT_MS,
        )
    ident = row.get_attribute("data-id")
    cell = ea5_cell(page)
    score_line = cell.locator(".score-line").inner_text()  # "+0.42 vs +0.00"
    score = float(score_line.split(" vs ")[0])
    return str(ident), str(cell.get_attribute("data-verdict")), score


def test_qualify_move_a_verdict_report_and_feedback_in_chromium(
    server: str, browser: Any, workspace: Workspace, tmp_path: Path
) -> None:
    sample = micrograph(tmp_path / "carbide-sample.png", seed=3, pink_share=0.3)
    second = micrograph(tmp_path / "dropped-sample.png", seed=4, pink_share=0.1)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    requests: list[str] = []
    problems: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))

    page.goto(server + "/")
    assert page.locator('tr[data-role="text"]').inner_text().count("yes") >= 1  # weights here
    assert page.locator("#run").is_disabled()

    # Pick a micrograph with the file picker; the results show verdict badges.
    page.set_input_files("#files", str(sample))
    assert "carbide-sample.png" in page.locator("#chosen").inner_text()
    first_id, verdict, score = run_and_wait(page, None)
    assert verdict in ("accept", "reject", "review")
    assert page.locator("#run-results .badge").count() >= 2
    assert "Carbide dissolution" in page.locator("details.why").first.inner_text()

    # A threshold above (then below) the fused score moves EA-5 for this run only.
    page.fill("#threshold", f"{score + 1:.3f}")
    high_id, high, _ = run_and_wait(page, first_id)
    assert high == "reject"
    assert "threshold" in page.locator("#run-results").inner_text()
    page.fill("#threshold", f"{score - 1:.3f}")
    low_id, low, _ = run_and_wait(page, high_id)
    assert low == "accept"
    page.screenshot(path=str(tmp_path / "web-qualify.png"), full_page=True)

    # Dropping a file on the drop zone works like picking it.
    payload = base64.b64encode(second.read_bytes()).decode()
    page.evaluate(
        """([name, data]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const files = new DataTransfer();
            files.items.add(new File([bytes], name, {type: "image/png"}));
            const zone = document.getElementById("drop-zone");
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true}));
        }""",
        ["dropped-sample.png", payload],
    )
    assert "dropped-sample.png" in page.locator("#chosen").inner_text()
    page.fill("#threshold", "")
    dropped_id, _, _ = run_and_wait(page, low_id)
    assert "dropped-sample.png" in page.locator("#run-results tr[data-id]").first.inner_text()

    # The full report opens from the results, served from the knowledge base.
    with context.expect_page() as opened:
        page.locator("#run-results a", has_text="full report").first.click()
    report = opened.value
    report.wait_for_load_state()
    assert "VLKB qualification report" in report.content()
    assert "dropped-sample.png" in report.locator("h1").inner_text()
    report.close()

    # Expert feedback on the low-threshold qualification, then find it in the history.
    page.goto(f"{server}/qualifications/{low_id}")
    page.select_option("#node", "EA-5")
    page.check('input[name="verdict"][value="reject"]')
    page.fill("#expert", "Dr. Grace Hopper")
    page.fill("#comment", "carbide share is borderline; threshold lowered too far")
    page.click("text=Record feedback")
    page.wait_for_url(f"**/qualifications/{low_id}?recorded=*", timeout=WAIT_MS)
    assert "recorded in the audit log" in page.locator("#feedback .web-ok").inner_text()
    assert "Dr. Grace Hopper" in page.locator('#feedback tr[data-node="EA-5"]').inner_text()
    frame = page.frame_locator("iframe.report-frame")
    assert "Dr. Grace Hopper" in frame.locator("body").inner_text(timeout=WAIT_MS)
    page.screenshot(path=str(tmp_path / "web-feedback.png"), full_page=True)

    page.goto(server + "/history")
    page.fill("#q", "carbide-sample")
    page.click("text=Search")
    page.wait_for_url("**/history?*")
    row = page.locator(f'table.history tr[data-id="{low_id}"]')
    assert "Dr. Grace Hopper" in row.inner_text()
    assert "borderline" in row.inner_text()
    assert page.locator("table.history tr[data-id]").count() == 3  # the three runs of it
    assert page.locator(f'table.history tr[data-id="{dropped_id}"]').count() == 0
    page.screenshot(path=str(tmp_path / "web-history.png"), full_page=True)

    # A batch is judged file by file, with its progress said; a bad file fails alone.
    page.goto(server + "/")
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    page.set_input_files("#files", [str(sample), str(notes), str(second)])
    run_and_wait(page, None)
    page.wait_for_function(
        "() => document.getElementById('busy').textContent.startsWith('Done')", timeout=WAIT_MS
    )
    assert page.locator("#busy").inner_text() == "Done: 2 of 3 judged; see below for the rest."
    assert page.locator("#run-results table.results tbody tr").count() == 2
    assert page.locator("#run-results details.why").count() == 2
    assert page.locator("#run-results h2").count() == 1  # one results section, not three
    assert "notes.png" in page.locator("#run-results ul.failures").inner_text()
    page.wait_for_function(  # loaded or failed: a broken image is complete with width 0
        "() => [...document.querySelectorAll('#run-results td.thumb img')]"
        ".every(i => i.complete)", timeout=WAIT_MS
    )
    widths = page.eval_on_selector_all(
        "#run-results td.thumb img", "images => images.map(i => i.naturalWidth)"
    )
    assert len(widths) == 2 and all(w > 0 for w in widths)  # the stored thumbnails load

    # Save the qualify page as a test artefact and check it is not blank.
    shot = tmp_path / "web.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[0] > 600 and pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100
    green = np.all(np.abs(pixels.astype(int) - (0x17, 0x6B, 0x3A)) < 8, axis=-1)
    assert green.sum() > 50  # accept badges are drawn
    context.close()

    refused = [p for p in problems if "status of 415" in p]
    assert len(refused) == 1  # the browser logs the answer to notes.png, nothing else
    problems = [p for p in problems if p not in refused]
    assert problems == [], problems  # no script error, no blocked resource
    outside = [u for u in requests if not (u.startswith(server) or u.startswith("data:"))]
    assert outside == [], outside
    assert verify_audit_log(VLKB(workspace)).ok


def test_sign_in_by_name_then_qualify_records_that_person_in_chromium(
    browser: Any, tmp_path: Path
) -> None:
    example = example_copy(tmp_path / "example")  # measurements only: no model to load
    with run_server(create_app(example, token=TOKEN)) as base:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(base + "/")
        page.fill("#name", "Dr. Grace Hopper")
        page.fill("#token", TOKEN)
        with page.expect_navigation(timeout=WAIT_MS):
            page.click("form button[type=submit]")
        assert page.locator("#qualify-form").count() == 1  # signed in: the qualify page
        page.set_input_files("#files", str(EXAMPLES / "sound-bead-a.png"))
        run_and_wait_any(page)
        (row,) = list_qualifications(VLKB(example))
        assert (row["operator"], row["operator_source"]) == ("Dr. Grace Hopper", "signed-in")
        page.goto(f"{base}/qualifications/{row['id']}")
        assert page.input_value("#expert") == "Dr. Grace Hopper"
        context.close()
        # 401 answers to the first visit are expected; anything else is a script or CSP error
        assert [p for p in problems if "401" not in p] == [], problems


def run_and_wait_any(page: Any) -> None:
    page.click("#run")
    page.locator("#run-results tr[data-id]").first.wait_for(timeout=WAIT_MS)


def test_the_api_docs_page_works_offline_with_its_assets_from_the_app(
    server: str, browser: Any
) -> None:
    page = browser.new_page()
    elsewhere: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server) else elsewhere.append(r.url))
    page.goto(server + "/docs")
    page.locator(".swagger-ui .info .title").wait_for(timeout=WAIT_MS)
    assert "VLKB" in page.locator(".swagger-ui .info .title").inner_text()
    assert page.locator(".opblock-summary-path", has_text="/api/qualify").count() >= 1
    assert elsewhere == []  # nothing from a CDN: it renders on a machine with no network
