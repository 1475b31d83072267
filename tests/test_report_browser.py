"""The report as a person reads it, in headless Chromium: the reason first, passing
assessments folded, everything open again on paper, and the audit record it belongs to."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli_runner import kb
from tests.test_web_browser import browser  # noqa: F401  (the shared Chromium fixture)
from tests.workspaces import example_copy

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def porous_report(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The example's porous bead qualified on its measurements, with its HTML report."""
    ws = example_copy(tmp_path / "ws")
    code, out, err = kb("qualify", EXAMPLES / "porous-bead.png", "--report", "--json",
                        "-w", ws.root)
    assert code == 0, err
    (result,) = json.loads(out)["qualifications"]
    code, out, err = kb("audit", "head", "--json", "-w", ws.root)
    assert code == 0, err
    yield Path(result["report"]), {"result": result, "head": json.loads(out)}


def test_the_report_leads_with_the_reason_and_folds_what_passed(
    browser: Any, porous_report: tuple[Path, dict[str, Any]]  # noqa: F811
) -> None:
    path, record = porous_report
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(path.as_uri())
    why = page.locator("#why")
    assert why.is_visible()
    headline = why.inner_text()
    assert headline.startswith("REJECT")
    assert "EA-4 Porosity: porosity" in headline and "exceeds 2 %" in headline
    assert "largest pore diameter" in headline and "exceeds 150 µm" in headline
    box = why.bounding_box()
    assert box is not None and box["y"] + box["height"] < 900  # on the first screen

    failed = page.locator('section[data-node="EA-4"] ul.rationale')
    passed = page.locator('section[data-node="EA-1"] ul.rationale')
    assert failed.is_visible() and not passed.is_visible()
    page.locator('section[data-node="EA-1"] summary').click()
    assert passed.is_visible()  # open on click

    page.goto(path.as_uri())
    page.emulate_media(media="print")
    assert passed.is_visible()  # and open on paper
    assert page.locator("details.statistics table.models").is_visible()

    head = record["head"]
    chain = page.locator("p.chain").inner_text()
    assert head["hash"] in chain and f"entry {head['seq']} " in chain


# --- the micrograph and its overlays ---------------------------------------------------------

YELLOW = (0xFF, 0xD4, 0x00)  # pores (reports/micrograph.py COLOURS)
CYAN = (0x00, 0xE5, 0xFF)  # baseline
VIOLET = (0xC7, 0x7D, 0xFF)  # local regions
REGION = {"x": 300.0, "y": 150.0, "width": 120.0, "height": 60.0, "score": 3.2}


def near(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: float = 60.0) -> bool:
    return sum((int(a) - b) ** 2 for a, b in zip(pixel[:3], colour, strict=True)) ** 0.5 \
        <= tolerance


class Screen:
    """A screenshot of the page, read in image coordinates of the micrograph."""

    def __init__(self, page: Any, width: float) -> None:
        from PIL import Image

        box = page.locator("#micrograph svg").bounding_box()
        assert box is not None and box["width"] > 550  # shown large, not as a thumbnail
        self.left, self.top, self.scale = box["x"], box["y"], box["width"] / width
        self.image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")

    def at(self, x: float, y: float) -> tuple[int, int, int]:
        return self.image.getpixel((int(self.left + x * self.scale),
                                    int(self.top + y * self.scale)))

    def count_near(self, points: list[tuple[float, float]], colour: tuple[int, int, int],
                   reach: int = 2) -> int:
        """How many of the points have a pixel of the colour within reach screen pixels."""
        found = 0
        for x, y in points:
            sx, sy = int(self.left + x * self.scale), int(self.top + y * self.scale)
            found += any(near(self.image.getpixel((sx + dx, sy + dy)), colour)
                         for dx in range(-reach, reach + 1) for dy in range(-reach, reach + 1))
        return found


def test_the_micrograph_shows_what_was_measured_and_the_layers_switch(
    browser: Any, porous_report: tuple[Path, dict[str, Any]]  # noqa: F811
) -> None:
    path, record = porous_report
    overlay = record["result"]["overlay"]
    largest = [tuple(p) for p in overlay["pores"]["outlines"][0]["points"]]
    cx = sum(x for x, _ in largest) / len(largest)
    cy = sum(y for _, y in largest) / len(largest)
    baseline = [tuple(p) for p in overlay["baseline"]]
    along = [(baseline[0][0] + (baseline[1][0] - baseline[0][0]) * t,
              baseline[0][1] + (baseline[1][1] - baseline[0][1]) * t) for t in (0.02, 0.98)]
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto(path.as_uri())
    page.locator("#micrograph").scroll_into_view_if_needed()

    shown = Screen(page, overlay["width"])
    assert near(shown.at(cx, cy), (0, 0, 128))  # the pore itself, dark blue, under its outline
    assert shown.count_near(largest, YELLOW) >= 0.8 * len(largest)
    assert shown.count_near(along, CYAN) == 2
    assert page.locator("#micrograph text", has_text="largest pore 232 µm").is_visible()
    assert page.locator("#micrograph text", has_text="HAZ depth 0.40 mm").is_visible()

    page.locator('input[data-layer="pores"]').uncheck()
    hidden = Screen(page, overlay["width"])
    assert hidden.count_near(largest, YELLOW) == 0
    assert hidden.count_near(along, CYAN) == 2  # the other layers stay
    assert not page.locator("#micrograph text", has_text="largest pore 232 µm").is_visible()

    viewport = page.locator("#micrograph .viewport")
    fit = viewport.evaluate("v => v.scrollWidth")
    page.locator("#zoom-4").check()
    assert viewport.evaluate("v => v.scrollWidth") >= 3.9 * fit  # zoomed, and it scrolls
    assert viewport.evaluate("v => v.scrollWidth > v.clientWidth")


def test_local_evidence_draws_its_anomaly_map_and_regions(
    browser: Any, porous_report: tuple[Path, dict[str, Any]], tmp_path: Path  # noqa: F811
) -> None:
    """A record carrying local evidence as docs/json.md describes it (regions and a PNG map)."""
    import base64

    from PIL import Image

    from reports.render import render_qualification, write_report

    _, record = porous_report
    document = record["result"]
    heat = Image.new("RGB", (64, 48), (0, 0, 0))
    heat.paste((255, 0, 0), (30, 15, 42, 21))  # hot where REGION lies (image / 10)
    buffer = io.BytesIO()
    heat.save(buffer, format="PNG")
    local = {"role": "local", "model": "efficientnet-lite0", "status": "used",
             "map": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
             "regions": [REGION]}
    ea4 = next(n for n in document["nodes"] if n["key"] == "EA-4")
    ea4["evidence"] = [e for e in ea4["evidence"] if e.get("role") != "local"] + [local]
    picture = (EXAMPLES / "porous-bead.png").read_bytes()
    html = render_qualification(document, {document["sample"]["sha256"]: picture})
    path = write_report(tmp_path / "local.html", html)

    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto(path.as_uri())
    page.locator("#micrograph").scroll_into_view_if_needed()
    x, y, w, h = REGION["x"], REGION["y"], REGION["width"], REGION["height"]
    edges = [(x + w * t, y) for t in (0.25, 0.5, 0.75)] + [(x, y + h / 2), (x + w, y + h / 2)]
    inside = (x + w / 2, y + h / 2 + 8)
    before = Screen(page, 640)
    assert before.count_near(edges, VIOLET) == len(edges)  # EA-4 rejected: its regions show
    original = before.at(*inside)

    page.locator('input[data-layer="map-EA-4"]').check()
    mapped = Screen(page, 640)
    red = mapped.at(*inside)
    assert red[0] > original[0] + 60 and red != original  # the hot spot, over the picture
    assert near(mapped.at(20, 20), (0, 0, 0), 30)  # black where the map is cold

    page.locator('input[data-layer="regions-EA-4"]').uncheck()
    assert Screen(page, 640).count_near(edges, VIOLET) == 0
    where = page.locator('section[data-node="EA-4"] p.where').inner_text()
    assert "anomaly map" in where and "micrograph" in where


def test_the_web_result_page_shows_the_micrograph_under_its_policy(
    browser: Any, porous_report: tuple[Path, dict[str, Any]]  # noqa: F811
) -> None:
    """The qualification page of `kb serve` draws the same overlay, with no script and under
    its Content-Security-Policy (a blocked style or picture would show up as a console error)."""
    from cli.web import create_app
    from kb.config import Workspace
    from tests.test_web_browser import run_server

    path, record = porous_report
    result = record["result"]
    overlay = result["overlay"]
    largest = [tuple(p) for p in overlay["pores"]["outlines"][0]["points"]]
    workspace = Workspace.open(path.parent.parent)
    with run_server(create_app(workspace)) as base:
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.goto(f"{base}/qualifications/{result['id']}")
        page.locator("#micrograph").scroll_into_view_if_needed()
        assert Screen(page, overlay["width"]).count_near(largest, YELLOW) >= 0.8 * len(largest)
        page.locator('input[data-layer="pores"]').uncheck()
        assert Screen(page, overlay["width"]).count_near(largest, YELLOW) == 0
    assert problems == [], problems
