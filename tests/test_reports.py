"""HTML reports: content an auditor relies on, escaping, self-containment, atomic writes, and a
real headless Chromium rendering that is not blank."""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from reports.render import render_batch_index, render_qualification, write_report

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]

GIT_COMMIT = "4f2a9c0d3b1e8f7a6c5d4e3f2a1b0c9d8e7f6a5b"
REVIEW_RGB = (0xF2, 0xC9, 0x4C)
ACCEPT_RGB = (0x17, 0x6B, 0x3A)
REJECT_RGB = (0xB3, 0x26, 0x1E)
CHROMIUM_MISSING = (
    "chromium is not installed, but the report must be checked in a real browser: "
    "run make install / apt-get install -y chromium"
)


# --- a tiny DOM, so assertions look at elements rather than at raw text ---------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class Element:
    """One parsed element with its attributes and children (elements or text)."""

    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag = tag
        self.attrs = attrs
        self.children: list[Element | str] = []

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def iter(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def find_all(self, match: Callable[[Element], bool]) -> list[Element]:
        return [e for e in self.iter() if match(e)]

    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return re.sub(r"\s+", " ", " ".join(parts)).strip()


class TreeBuilder(HTMLParser):
    """Builds Elements; void and self-closed (SVG) elements get no children."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, dict(attrs))
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Element:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def by_class(name: str) -> Callable[[Element], bool]:
    return lambda e: name in e.classes()


def badge_verdict(element: Element) -> str:
    """The verdict class of a badge element (accept, reject, review, not_assessed)."""
    verdicts = element.classes() & {"accept", "reject", "review", "not_assessed"}
    assert len(verdicts) == 1, element.attrs
    return verdicts.pop()


# --- documents in the `kb qualify --json` shape ---------------------------------------------


def png(size: tuple[int, int], dot: tuple[int, int, int]) -> bytes:
    """A small segmented-looking micrograph: black substrate, green bead, one coloured dot."""
    image = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse([w // 8, h // 4, 7 * w // 8, 7 * h // 4], fill=(0, 255, 0))
    draw.ellipse([w // 2 - 6, h // 2 - 6, w // 2 + 6, h // 2 + 6], fill=dot)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def example() -> dict[str, Any]:
    """The stored example: one assessment (EA-5) under the root gate, batch-normalised."""
    return json.loads((DATA / "qualification.json").read_text(encoding="utf-8"))


def measurement(quantity: str, value: Any, op: str, limit: float, unit: str, **extra: Any):
    """One measurement evidence item as the engine writes it."""
    item = {
        "role": "measurement",
        "quantity": quantity,
        "value": value,
        "op": op,
        "limit": limit,
        "unit": unit,
        "uncertainty": extra.pop("uncertainty", 0.0),
        "verdict": extra.pop("verdict"),
        "note": extra.pop("note", None),
    }
    assert not extra
    return item


def assessment(key: str, name: str, parent: str, verdict: str, **fields: Any) -> dict[str, Any]:
    """An assessment node; unspecified numbers are null, as for a skipped node."""
    node = {
        "key": key,
        "kind": "assessment",
        "parent": parent,
        "name": name,
        "verdict": verdict,
        "score": None,
        "threshold": None,
        "review_margin": None,
        "fusion": None,
        "criterion": None,
        "rationale": f"{name}: {verdict}.",
        "evidence": [],
        "measurements": {},
    }
    node.update(fields)
    return node


def rich_document() -> dict[str, Any]:
    """Every kind of node the report must handle: VLR + measurement, measurement only, skipped."""
    doc = example()
    doc["ruleset"]["git_commit"] = GIT_COMMIT
    text_evidence = copy.deepcopy(doc["nodes"][1]["evidence"][0])
    text_evidence.update(delta=0.0125, z=0.1234, mu=0.0100, sigma=0.0203)
    doc["nodes"][0]["rationale"] = (
        "Overall qualification: reject; all children must accept: 1 accept, 1 reject, "
        "1 review of 3 assessed children."
    )
    doc["nodes"] += [
        {
            "key": "geometry",
            "kind": "gate",
            "parent": "qualification",
            "name": "Bead geometry",
            "verdict": "reject",
            "score": None,
            "threshold": None,
            "review_margin": None,
            "fusion": None,
            "criterion": None,
            "rationale": "Bead geometry: reject; all children must accept.",
            "evidence": [],
            "measurements": {},
        },
        assessment(
            "EA-1",
            "Dilution",
            "geometry",
            "review",
            score=0.1234,
            threshold=0.0,
            review_margin=0.25,
            fusion="zsum",
            criterion="Dilution must not exceed 5 % of the bead area.",
            rationale=(
                "Dilution: review. Measured dilution_fraction = 0.048 fraction (must be at most "
                "0.05 fraction) is within ±0.004 of the limit, so it needs review."
            ),
            evidence=[
                text_evidence,
                measurement(
                    "dilution_fraction",
                    0.048,
                    "<=",
                    0.05,
                    "fraction",
                    uncertainty=0.004,
                    verdict="review",
                ),
            ],
            measurements={"dilution_fraction": 0.048},
        ),
        assessment(
            "EA-2",
            "Heat-affected zone",
            "geometry",
            "reject",
            criterion="The heat-affected zone must not reach deeper than 1 mm.",
            rationale=(
                "Heat-affected zone: reject. Measured haz_depth_mm = 1.234 mm (must be at most "
                "1 mm) fails the limit."
            ),
            evidence=[
                measurement(
                    "haz_depth_mm", 1.234, "<=", 1.0, "mm", uncertainty=0.03, verdict="reject"
                ),
                measurement("pore_count", 3, "<=", 5, "count", verdict="accept"),
            ],
            measurements={"haz_depth_mm": 1.234, "pore_count": 3},
        ),
        assessment(
            "EA-3",
            "Bead reinforcement",
            "geometry",
            "not_assessed",
            criterion="A distinct bead must stand above the substrate.",
            rationale="Bead reinforcement: not assessed; no bead was found in the micrograph.",
        ),
    ]
    return doc


def feedback_on(node: str, verdict: str, comment: str, expert: str = "Dr. Ada Weld"):
    return {
        "node": node,
        "verdict": verdict,
        "comment": comment,
        "expert": expert,
        "time": "2026-11-26T09:15:00+00:00",
    }


def images_for(doc: dict[str, Any]) -> dict[str, bytes]:
    """The sample micrograph and the closest positive reference of EA-5 (the negative one is
    left out on purpose, to show the placeholder)."""
    ea5 = next(n for n in doc["nodes"] if n["key"] == "EA-5")
    image_evidence = next(e for e in ea5["evidence"] if e["role"] == "image")
    return {
        doc["sample"]["sha256"]: png((1600, 1200), (255, 105, 180)),
        image_evidence["closest_positive"]["sha256"]: png((256, 256), (255, 105, 180)),
    }


@pytest.fixture(scope="module")
def rich_html() -> str:
    doc = rich_document()
    feedback = [
        feedback_on("EA-5", "accept", "Carbides are fine; the segmentation missed the fine ones."),
        feedback_on("geometry", "reject", "Agreed, HAZ too deep."),
    ]
    return render_qualification(doc, images_for(doc), feedback)


# --- the per-sample report ------------------------------------------------------------------


def test_report_has_a_verdict_badge_for_every_node(rich_html: str) -> None:
    dom = parse(rich_html)
    doc = rich_document()
    entries = {
        e.attrs["data-node"]: e
        for e in dom.find_all(lambda e: "data-node" in e.attrs)
        if e.tag == "div"
    }
    assert set(entries) == {n["key"] for n in doc["nodes"]}
    for node in doc["nodes"]:
        badges = entries[node["key"]].find_all(by_class("badge"))
        assert badges, node["key"]
        assert badge_verdict(badges[0]) == node["verdict"], node["key"]
    overall = dom.find_all(lambda e: "badge" in e.classes() and "large" in e.classes())
    assert [badge_verdict(b) for b in overall] == ["reject"]


def test_report_shows_each_assessment_with_criterion_chart_and_rationale(rich_html: str) -> None:
    dom = parse(rich_html)
    sections = {
        s.attrs["data-node"]: s
        for s in dom.find_all(lambda e: e.tag == "section" and "data-node" in e.attrs)
    }
    assert set(sections) == {"EA-5", "EA-1", "EA-2", "EA-3"}
    ea5 = sections["EA-5"]
    assert "At least 30 % of the bead is undissolved carbide." in ea5.text()
    charts = ea5.find_all(lambda e: e.tag == "svg")
    assert len(charts) == 1
    assert charts[0].attrs["aria-label"] == (
        "Fused score -0.32 against threshold +0.00 with review band ±0"
    )
    assert "Carbide dissolution: reject." in ea5.text()
    ea1_chart = sections["EA-1"].find_all(lambda e: e.tag == "svg")[0]
    assert "review band ±0.25" in ea1_chart.attrs["aria-label"]
    assert sections["EA-1"].find_all(lambda e: e.tag == "rect" and e.attrs.get("fill") == "#f6df94")
    # No score: no chart, and the report says why instead of drawing nonsense.
    assert not sections["EA-2"].find_all(lambda e: e.tag == "svg")
    assert "no usable vision-language evidence" in sections["EA-2"].text()
    assert not sections["EA-3"].find_all(lambda e: e.tag == "svg")
    assert "Not assessed: no bead was found in the micrograph." in sections["EA-3"].text()
    assert "A distinct bead must stand above the substrate." in sections["EA-3"].text()


@pytest.mark.parametrize(
    ("rule", "extra", "words"),
    [
        ("all", {}, "all children must accept"),
        ("any", {}, "one accepting child suffices"),
        ("k_of_n", {"k": 2}, "2 accepting children needed"),
        ("consensus", {"quorum": 0.75}, "a 75% consensus of the children needed"),
    ],
)
def test_gate_rule_is_shown_in_the_tree(rule: str, extra: dict[str, Any], words: str) -> None:
    doc = rich_document()
    geometry = next(n for n in doc["nodes"] if n["key"] == "geometry")
    geometry.update(rule=rule, **extra)
    dom = parse(render_qualification(doc, {}))
    entry = dom.find_all(lambda e: e.tag == "div" and e.attrs.get("data-node") == "geometry")[0]
    assert [r.text() for r in entry.find_all(by_class("rule"))] == [words]
    root = dom.find_all(lambda e: e.tag == "div" and e.attrs.get("data-node") == "qualification")
    assert not root[0].find_all(by_class("rule"))  # a record stored before gates said


def test_skip_reason_field_is_preferred_over_the_rationale() -> None:
    doc = rich_document()
    ea3 = next(n for n in doc["nodes"] if n["key"] == "EA-3")
    ea3.update(reason="precondition failed: EA-1 is reject", rationale="EA-3: long story.")
    text = parse(render_qualification(doc, {})).text()
    assert "Not assessed: precondition failed: EA-1 is reject" in text
    assert "long story" not in text


def test_evidence_table_numbers_are_formatted(rich_html: str) -> None:
    dom = parse(rich_html)
    ea5 = dom.find_all(lambda e: e.attrs.get("data-node") == "EA-5" and e.tag == "section")[0]
    table = ea5.find_all(by_class("evidence"))[0]
    rows = [
        [c.text() for c in row.find_all(lambda e: e.tag == "td")]
        for row in table.find_all(lambda e: e.tag == "tr")[1:]
    ]
    assert rows[0][0] == "prompts (text)"
    assert rows[0][1] == "clip 66fdca1f9e3e"
    assert rows[0][2:7] == ["-0.0748", "-0.16", "-0.0747", "0.0007", "batch (n=3)"]
    assert rows[1][0] == "reference images"
    assert rows[1][2:7] == ["-0.0459", "-0.16", "-0.0435", "0.0143", "batch (n=3)"]


def test_closest_prompts_and_references_with_thumbnails(rich_html: str) -> None:
    dom = parse(rich_html)
    ea5 = dom.find_all(lambda e: e.attrs.get("data-node") == "EA-5" and e.tag == "section")[0]
    near = [n.text() for n in ea5.find_all(by_class("near"))]
    assert near[0].startswith("Closest positive · similarity -0.130")
    assert "dense carbides in the matrix" in near[0]
    assert near[1].startswith("Closest negative · similarity -0.070")
    assert "carbides dissolved in the bead" in near[1]
    assert "references/EA-5/positive/pos-2.png" in near[2] and "0.965" in near[2]
    assert "Image not available" in near[3] and "references/EA-5/negative/neg-1.png" in near[3]
    thumbs = ea5.find_all(lambda e: e.tag == "img")
    assert len(thumbs) == 1
    assert thumbs[0].attrs["alt"] == "references/EA-5/positive/pos-2.png"


def test_the_sample_is_shown_large_as_an_inline_png(rich_html: str) -> None:
    dom = parse(rich_html)
    figure = dom.find_all(lambda e: e.tag == "figure")[0]
    src = figure.find_all(lambda e: e.tag == "image")[0].attrs["href"] or ""
    assert src.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
        assert image.size == (1024, 768)  # 1600 x 1200 scaled down, aspect kept
    assert "/tmp/docws/s0.png" in figure.text()


def test_measurements_show_value_against_limit_with_unit(rich_html: str) -> None:
    dom = parse(rich_html)
    rows = {}
    for table in dom.find_all(by_class("measurements")):
        for row in table.find_all(lambda e: e.tag == "tr"):
            cells = row.find_all(lambda e: e.tag == "td")
            if cells:
                badges = row.find_all(by_class("badge"))
                rows[cells[0].text()] = (
                    [c.text() for c in cells[1:4]],
                    badge_verdict(badges[0]) if badges else None,
                )
    assert rows["haz_depth_mm"] == (["1.234 mm", "≤ 1 mm", "± 0.03 mm"], "reject")
    assert rows["dilution_fraction"] == (
        ["0.048 (4.8 %)", "≤ 0.05 (5.0 %)", "± 0.004 (0.4 %)"],
        "review",
    )
    assert rows["pore_count"] == (["3", "≤ 5", "—"], "accept")


def test_provenance_names_sample_ruleset_models_and_normalisation(rich_html: str) -> None:
    doc = rich_document()
    dom = parse(rich_html)
    provenance = {
        row.find_all(lambda e: e.tag == "th")[0].text(): row.find_all(lambda e: e.tag == "td")[
            0
        ].text()
        for row in dom.find_all(by_class("provenance"))[0].find_all(lambda e: e.tag == "tr")
    }
    assert provenance["Sample path"] == "/tmp/docws/s0.png"
    assert provenance["Sample SHA-256"] == doc["sample"]["sha256"]
    assert provenance["Ruleset version"] == "1"
    assert provenance["Ruleset hash"] == doc["ruleset"]["hash"]
    assert provenance["Rules git commit"] == GIT_COMMIT
    assert provenance["Normalisation"] == "batch"
    assert provenance["Software version"] == "VLKB 0.1.0"
    assert provenance["Operator"] == "root"
    assert provenance["Time (UTC)"] == "2026-11-25 05:02:30 UTC"
    assert provenance["Pixel size"] == "10.000 µm/px"
    models = dom.find_all(by_class("models"))[0].text()
    for model in doc["models"]:
        assert model["fingerprint"] in models
        assert model["source"] in models
    stats = [
        [c.text() for c in row.find_all(lambda e: e.tag == "td")]
        for row in dom.find_all(by_class("normalization"))[0].find_all(lambda e: e.tag == "tr")[1:]
    ]
    assert ["EA-5", "text", "clip", "-0.0747", "0.0007", "batch (n=3)"] in stats
    assert ["EA-5", "image", "flava", "-0.0435", "0.0143", "batch (n=3)"] in stats
    assert ["EA-1", "text", "clip", "+0.0100", "0.0203", "batch (n=3)"] in stats


def test_expert_feedback_sits_beside_the_machine_verdict(rich_html: str) -> None:
    dom = parse(rich_html)
    ea5 = dom.find_all(lambda e: e.attrs.get("data-node") == "EA-5" and e.tag == "section")[0]
    verdicts = ea5.find_all(by_class("verdicts"))[0]
    machine = verdicts.find_all(by_class("machine"))[0]
    assert badge_verdict(machine.find_all(by_class("badge"))[0]) == "reject"
    card = verdicts.find_all(by_class("expert-feedback"))[0]
    assert "Expert feedback" in card.text() and "Accept" in card.text()
    assert "Dr. Ada Weld" in card.text()
    assert "2026-11-26 09:15:00 UTC" in card.text()
    assert "Carbides are fine; the segmentation missed the fine ones." in card.text()
    # The tree keeps the machine's verdict first and marks the expert's beside it.
    entry = dom.find_all(lambda e: e.tag == "div" and e.attrs.get("data-node") == "EA-5")[0]
    badges = entry.find_all(by_class("badge"))
    assert badge_verdict(badges[0]) == "reject"
    assert "expert" in badges[1].classes() and "Accept" in badges[1].text()
    # Feedback on a gate shows in the tree under that gate.
    gate = dom.find_all(
        lambda e: (
            e.tag == "li"
            and any(
                c.attrs.get("data-node") == "geometry" for c in e.children if isinstance(c, Element)
            )
        )
    )[0]
    assert "Agreed, HAZ too deep." in gate.text()


def test_user_text_is_escaped() -> None:
    doc = example()
    ea5 = doc["nodes"][1]
    ea5["criterion"] = "<script>alert('criterion')</script> & more"
    ea5["name"] = "<b onmouseover=alert(1)>Carbide</b>"
    hostile = '"><img src=x onerror=alert(1)><script>alert("prompt")</script>'
    ea5["evidence"][0]["closest_positive"]["label"] = hostile
    ea5["evidence"][0]["items"][1]["label"] = hostile
    doc["operator"] = "<svg onload=alert(1)>"
    feedback = [
        feedback_on(
            "EA-5", "accept", "</aside><script>alert('fb')</script>", expert="<i>Mallory</i>"
        )
    ]
    html = render_qualification(doc, {}, feedback)
    dom = parse(html)
    assert not dom.find_all(lambda e: e.tag in {"script", "b", "i"})
    assert not dom.find_all(lambda e: any(a.startswith("on") for a in e.attrs))
    assert not [e for e in dom.find_all(lambda e: e.tag == "img")]
    assert [e.tag for e in dom.find_all(lambda e: e.tag == "svg")] == ["svg"]  # the chart only
    assert "&lt;script&gt;alert(&#39;criterion&#39;)&lt;/script&gt; &amp; more" in html
    assert "<script>alert(&#34;prompt&#34;)" not in html
    assert dom.text().count('"><img src=x onerror=alert(1)><script>alert("prompt")</script>') == 2
    assert "<i>Mallory</i>" in dom.text() and "<svg onload=alert(1)>" in dom.text()


def test_missing_optional_fields_render() -> None:
    doc = rich_document()
    doc.pop("id")
    doc.pop("created_at")
    doc["models"] = []
    doc["ruleset"]["git_commit"] = None
    doc.pop("um_per_px")
    for node in doc["nodes"]:
        for evidence in node["evidence"]:
            if evidence["role"] in {"text", "image"}:
                evidence.update(
                    model=None,
                    fingerprint=None,
                    delta=None,
                    z=None,
                    mu=None,
                    sigma=None,
                    normalization=None,
                    closest_positive=None,
                    closest_negative=None,
                    items=[],
                    note="role 'text' is not bound to a model in kb.toml",
                )
        if node["kind"] == "assessment":
            node.update(score=None, threshold=None, review_margin=None, fusion=None)
    html = render_qualification(doc, {"not-this-one": b"garbage"})
    dom = parse(html)
    text = dom.text()
    assert "not stored" in text  # no qualification id
    assert "Time (UTC) not recorded" in text
    assert "Rules git commit not recorded" in text
    assert "No model was bound to a role" in text
    assert "No z-score was computed in this qualification." in text
    assert "not used: role 'text' is not bound to a model in kb.toml" in text
    assert "None" not in text
    figure = dom.find_all(lambda e: e.tag == "figure")[0]
    assert "Image not available" in figure.text()


def test_undecodable_image_becomes_a_placeholder() -> None:
    doc = example()
    html = render_qualification(doc, {doc["sample"]["sha256"]: b"\x89PNG\r\n\x1a\nbroken"})
    figure = parse(html).find_all(lambda e: e.tag == "figure")[0]
    assert not figure.find_all(lambda e: e.tag == "img")
    assert "Stored image could not be decoded" in figure.text()


LINK_ATTRIBUTES = {
    "src",
    "href",
    "xlink:href",
    "srcset",
    "poster",
    "action",
    "data",
    "background",
    "formaction",
    "ping",
    "cite",
}


def external_references(html: str) -> list[str]:
    """Every way the page could reach outside itself, as found by a parser and by patterns."""
    found = []
    dom = parse(html)
    for element in dom.iter():
        for name, value in element.attrs.items():
            if (
                name in LINK_ATTRIBUTES
                and value is not None
                and not value.startswith(("data:image/png;base64,", "#"))
            ):
                found.append(f"{element.tag} {name}={value}")
        if element.tag == "script" and "src" in element.attrs:
            found.append("script src")
        if element.tag == "link":
            found.append(f"link {element.attrs}")
        if element.tag in {"iframe", "object", "embed", "base", "meta"} and (
            element.tag != "meta" or "http-equiv" in element.attrs
        ):
            found.append(element.tag)
    for style in dom.find_all(lambda e: e.tag == "style"):
        css = style.text()
        found += re.findall(r"url\(\s*['\"]?(?!data:|#)[^)]*\)", css)
        found += re.findall(r"@import[^;]*|@font-face", css)
    found += re.findall(r"style=\"[^\"]*url\(", html)
    found += re.findall(r"https?://", html)
    return found


def test_report_is_self_contained(rich_html: str) -> None:
    assert external_references(rich_html) == []
    dom = parse(rich_html)
    assert dom.find_all(lambda e: e.tag == "style")
    assert len(dom.find_all(lambda e: e.tag == "img")) == 1  # one reference
    assert len(dom.find_all(lambda e: e.tag == "image")) == 1  # the sample, under its layers


def test_reports_package_needs_no_engine_kb_cli_or_torch() -> None:
    code = (
        "import sys, reports.render\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'engine', 'kb', 'cli', 'torch', 'transformers'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- the batch index ------------------------------------------------------------------------


def batch_documents() -> list[dict[str, Any]]:
    """Three samples: one rejected, one accepted, one in review."""
    first = rich_document()
    second = copy.deepcopy(first)
    second.update(id=2, verdict="accept", created_at="2026-11-25T05:03:00+00:00")
    second["sample"].update(path="/tmp/docws/s1.png", sha256="b" * 64)
    for node in second["nodes"]:
        node["verdict"] = "accept"
    third = copy.deepcopy(first)
    third.update(id=3, verdict="review", created_at="2026-11-25T05:04:00+00:00")
    third["sample"].update(path="/tmp/docws/<s2>.png", sha256="c" * 64)
    for node in third["nodes"]:
        node["verdict"] = (
            "review" if node["key"] in {"EA-1", "geometry", "qualification"} else "accept"
        )
    return [first, second, third]


def test_batch_index_matrix_counts_and_links() -> None:
    documents = batch_documents()
    links = {1: "s0-1.html", 2: "s1-2.html", 3: "sub dir/s2 & 3.html"}
    html = render_batch_index(documents, links)
    dom = parse(html)
    counts = {
        e.attrs["data-verdict"]: e.find_all(by_class("count"))[0].text()
        for e in dom.find_all(by_class("overall-count"))
    }
    assert counts == {"accept": "1", "reject": "1", "review": "1", "not_assessed": "0"}
    # Sample 1 is rejected but has EA-1 in review, sample 3 is in review: two need review.
    assert dom.find_all(by_class("needs-review"))[0].text() == "2"
    rows = {r.attrs["data-sample"]: r for r in dom.find_all(lambda e: "data-sample" in e.attrs)}
    assert set(rows) == {"1", "2", "3"}
    hrefs = {
        k: [a.attrs["href"] for a in r.find_all(lambda e: e.tag == "a")] for k, r in rows.items()
    }
    assert hrefs == {"1": ["s0-1.html"], "2": ["s1-2.html"], "3": ["sub dir/s2 & 3.html"]}
    assert "&lt;s2&gt;.png" in html
    cells = {
        key: {
            c.attrs["data-assessment"]: badge_verdict(c.find_all(by_class("badge"))[0])
            for c in row.find_all(lambda e: "data-assessment" in e.attrs)
        }
        for key, row in rows.items()
    }
    assert cells["1"] == {
        "EA-5": "reject",
        "EA-1": "review",
        "EA-2": "reject",
        "EA-3": "not_assessed",
    }
    assert cells["2"] == dict.fromkeys(("EA-5", "EA-1", "EA-2", "EA-3"), "accept")
    assert cells["3"]["EA-1"] == "review"
    for href in external_references(html):
        assert href.split("=", 1)[1] in links.values(), href


def test_batch_index_sample_without_link_is_plain_text() -> None:
    documents = batch_documents()
    html = render_batch_index(documents, {1: "s0-1.html"})
    rows = {
        r.attrs["data-sample"]: r for r in parse(html).find_all(lambda e: "data-sample" in e.attrs)
    }
    assert not rows["2"].find_all(lambda e: e.tag == "a")
    assert "s1.png" in rows["2"].text()


@pytest.mark.parametrize(
    "href",
    [
        "/tmp/reports/s0.html",
        "https://example.org/s0.html",
        "file:///tmp/reports/s0.html",
        "//example.org/s0.html",
        "javascript:alert(1)",
        "C:\\reports\\s0.html",
        "\\\\server\\share\\s0.html",
    ],
)
def test_batch_index_refuses_absolute_links(href: str) -> None:
    with pytest.raises(ValueError, match="not relative"):
        render_batch_index(batch_documents(), {1: "s0-1.html", 2: href})


# --- writing --------------------------------------------------------------------------------


def test_write_report_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    assert write_report(target, "<p>first</p>") == target
    assert target.read_text(encoding="utf-8") == "<p>first</p>"
    write_report(str(target), "<p>second ✓</p>")
    assert target.read_text(encoding="utf-8") == "<p>second ✓</p>"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failed_write_keeps_the_old_report(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    write_report(target, "<p>old</p>")
    with pytest.raises(UnicodeEncodeError):
        write_report(target, "<p>half \ud800 written</p>")  # a lone surrogate cannot be encoded
    assert target.read_text(encoding="utf-8") == "<p>old</p>"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


# --- a real browser -------------------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )
    if found is None:
        pytest.fail(CHROMIUM_MISSING)
    return found


def colour_pixels(
    colours: list[tuple[int, tuple[int, int, int]]], rgb: tuple[int, int, int], tolerance: int = 6
) -> int:
    """How many pixels lie within `tolerance` of a colour in every channel."""
    return sum(
        count
        for count, colour in colours
        if all(abs(a - b) <= tolerance for a, b in zip(colour, rgb, strict=True))
    )


def test_report_renders_in_headless_chromium(tmp_path: Path, rich_html: str) -> None:
    browser = chromium()
    report = write_report(tmp_path / "report.html", rich_html)
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,1600",
            f"--screenshot={shot}",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert shot.is_file(), f"no screenshot; chromium said:\n{result.stderr[-2000:]}"
    with Image.open(shot) as image:
        picture = image.convert("RGB")
    assert picture.size == (1200, 1600)
    colours = picture.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, "the screenshot is (nearly) blank"
    white = max(colours)[1]
    assert white == (255, 255, 255), "the page background should be white"
    assert max(colours)[0] < 0.95 * 1200 * 1600, "almost nothing was drawn"
    for name, rgb in (("accept", ACCEPT_RGB), ("reject", REJECT_RGB), ("review", REVIEW_RGB)):
        assert colour_pixels(colours, rgb) > 100, f"no {name} badge colour in the screenshot"
