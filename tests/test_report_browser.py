"""The report as a person reads it, in headless Chromium: the reason first, passing
assessments folded, everything open again on paper, and the audit record it belongs to."""

from __future__ import annotations

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
