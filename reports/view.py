"""Shape one qualification document for its template: the tree, the sections, the feedback.

The engine's JSON stays the only input; this module only regroups it (children under
their parent, feedback beside its node, evidence by kind) so the template needs no logic
beyond loops and filters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reports.charts import ScoreChart, score_chart
from reports.filters import headline_quantity, is_missing
from reports.micrograph import MicrographView, sample_micrograph
from reports.thumbnails import Thumbnail, Thumbnails

Record = Mapping[str, Any]


@dataclass
class TreeEntry:
    """One node of the detection tree with its children in document order."""

    node: Record
    anchor: str
    feedback: list[Record]
    children: list[TreeEntry] = field(default_factory=list)


@dataclass(frozen=True)
class AssessmentSection:
    """Everything shown for one assessment, evidence already split by kind."""

    node: Record
    anchor: str
    chart: ScoreChart | None
    vlr: list[Record]
    measurements: list[Record]
    other_quantities: dict[str, Any]
    feedback: list[Record]


@dataclass(frozen=True)
class NormalizationRow:
    """The statistics one z-score was standardised with, for the provenance block."""

    assessment: str
    role: str
    model: Any
    mu: Any
    sigma: Any
    source: Any


@dataclass(frozen=True)
class QualificationView:
    """What the qualification template reads; the raw document stays reachable as `document`."""

    document: Record
    root: TreeEntry | None
    tree: list[TreeEntry]
    sections: list[AssessmentSection]
    sample: Thumbnail
    micrograph: MicrographView  # the sample shown large, with its switchable overlays
    stray_feedback: list[Record]
    normalization_rows: list[NormalizationRow]
    thumbnails: Thumbnails
    reasons: list[str]  # why the overall verdict, one phrase per assessment that is not accept


def feedback_time(item: Record) -> Any:
    """When an expert gave feedback: `time` per the contract, else a stored `created_at`."""
    return item.get("time") or item.get("created_at")


def anchors(nodes: Sequence[Record]) -> dict[str, str]:
    """A readable, unique HTML id per node key (keys are user text)."""
    taken: set[str] = set()
    result = {}
    for index, node in enumerate(nodes):
        key = str(node.get("key", index))
        anchor = "node-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", key).strip("-") or str(index))
        if anchor in taken:
            anchor = f"{anchor}-{index}"
        taken.add(anchor)
        result[key] = anchor
    return result


def feedback_by_node(
    feedback: Sequence[Record], keys: set[str]
) -> tuple[dict[str, list[Record]], list[Record]]:
    """Feedback grouped under its node, oldest first; feedback on unknown nodes kept aside."""
    ordered = sorted(feedback, key=lambda f: str(feedback_time(f) or ""))
    grouped: dict[str, list[Record]] = {}
    stray = []
    for item in ordered:
        key = str(item.get("node"))
        if key in keys:
            grouped.setdefault(key, []).append(item)
        else:
            stray.append(item)
    return grouped, stray


def build_tree(
    nodes: Sequence[Record], anchor_of: Mapping[str, str], feedback: Mapping[str, list[Record]]
) -> list[TreeEntry]:
    """Nest nodes under their parents; a node whose parent is absent becomes a top entry."""
    entries: dict[str, TreeEntry] = {}
    for node in nodes:
        key = str(node.get("key"))
        entries[key] = TreeEntry(node, anchor_of[key], feedback.get(key, []))
    tops: list[TreeEntry] = []
    for key, entry in entries.items():
        parent = entry.node.get("parent")
        parent_key = None if parent is None else str(parent)
        if parent_key in entries and not _is_ancestor(key, parent_key, entries):
            entries[parent_key].children.append(entry)
        else:
            tops.append(entry)
    return tops


def _is_ancestor(key: str, candidate: str, entries: Mapping[str, TreeEntry]) -> bool:
    """True when `key` is above `candidate`, so attaching would close a cycle."""
    seen: set[str] = set()
    current: str | None = candidate
    while current is not None and current in entries and current not in seen:
        if current == key:
            return True
        seen.add(current)
        parent = entries[current].node.get("parent")
        current = None if parent is None else str(parent)
    return False


def _finite(value: Any) -> bool:
    """A number the chart can place (engine NaN or infinity would break the axis)."""
    return not is_missing(value) and math.isfinite(float(value))


def assessment_section(node: Record, anchor: str, feedback: list[Record]) -> AssessmentSection:
    """One assessment's evidence split into VLR rows and measurement rows, plus its chart."""
    evidence = list(node.get("evidence") or [])
    measurements = [e for e in evidence if e.get("role") == "measurement"]
    measured = {str(m.get("quantity")) for m in measurements}
    score, threshold = node.get("score"), node.get("threshold")
    chart = None
    if _finite(score) and _finite(threshold):
        margin = node.get("review_margin")
        chart = score_chart(float(score), float(threshold), margin if _finite(margin) else 0.0)
    return AssessmentSection(
        node=node,
        anchor=anchor,
        chart=chart,
        vlr=[e for e in evidence if e.get("role") != "measurement"],
        measurements=measurements,
        other_quantities={
            k: v for k, v in (node.get("measurements") or {}).items() if k not in measured
        },
        feedback=feedback,
    )


def normalization_rows(sections: Sequence[AssessmentSection]) -> list[NormalizationRow]:
    """Every mu and sigma that turned a net similarity into a z-score, per assessment and role."""
    return [
        NormalizationRow(
            assessment=str(section.node.get("key")),
            role=str(e.get("role")),
            model=e.get("model"),
            mu=e.get("mu"),
            sigma=e.get("sigma"),
            source=e.get("normalization"),
        )
        for section in sections
        for e in section.vlr
        if not is_missing(e.get("mu")) or not is_missing(e.get("sigma"))
    ]


def qualification_view(
    document: Record, images: Mapping[str, bytes], feedback: Sequence[Record]
) -> QualificationView:
    """Regroup the document for the qualification template."""
    nodes = list(document.get("nodes") or [])
    anchor_of = anchors(nodes)
    grouped, stray = feedback_by_node(feedback, set(anchor_of))
    tree = build_tree(nodes, anchor_of, grouped)
    sections = [
        assessment_section(n, anchor_of[str(n.get("key"))], grouped.get(str(n.get("key")), []))
        for n in nodes
        if n.get("kind") == "assessment"
    ]
    thumbnails = Thumbnails(images)
    micrograph = sample_micrograph(document, thumbnails)
    return QualificationView(
        document=document,
        root=tree[0] if len(tree) == 1 else None,
        tree=tree,
        sections=sections,
        sample=micrograph.picture,
        micrograph=micrograph,
        stray_feedback=stray,
        normalization_rows=normalization_rows(sections),
        thumbnails=thumbnails,
        reasons=reasons(sections),
    )


FAILED = {"<=": "exceeds", "<": "is not below", ">=": "is below", ">": "is not above"}
RANK = {"reject": 0, "review": 1, "not_assessed": 2}  # which reasons a reader needs first


def reasons(sections: Sequence[AssessmentSection]) -> list[str]:
    """One phrase per assessment that did not accept, strictest first, saying what failed:
    "EA-4 Porosity: porosity 4.8 % exceeds 2 %; largest pore diameter 232 µm exceeds 150 µm"."""
    ranked = sorted(
        (s for s in sections if s.node.get("verdict") in RANK),
        key=lambda s: RANK[str(s.node.get("verdict"))],
    )
    return [f"{s.node.get('key')} {s.node.get('name') or ''}: {_why(s)}".replace(" :", ":")
            for s in ranked]


def _why(section: AssessmentSection) -> str:
    node = section.node
    verdict = node.get("verdict")
    if verdict == "not_assessed":
        return f"not assessed ({node.get('reason') or 'no evidence could be used'})"
    parts = [_measurement_phrase(m) for m in section.measurements
             if m.get("verdict") == verdict]
    decided = node.get("decided_by")
    if (not parts or decided != "measurement") and (
        _finite(node.get("score")) and _finite(node.get("threshold"))
    ):
        score, threshold = float(node["score"]), float(node["threshold"])
        if decided == "disagreement":
            parts.append(f"vision-language score {score:+.2f} contradicts the measurements "
                         "with confidence")
        elif verdict == "reject" or not parts:
            relation = "below" if score < threshold else "too close to"
            parts.append(f"vision-language score {score:+.2f} is {relation} the threshold "
                         f"{threshold:+.2f}")
    return "; ".join(p for p in parts if p) or str(verdict)


def _measurement_phrase(m: Record) -> str:
    # records from before names were stored: the code less its own unit, e.g. haz_depth_mm
    name = m.get("name") or str(m.get("quantity", "")).removesuffix(f"_{m.get('unit')}").replace(
        "_", " ")
    unit = m.get("unit")
    if m.get("value") is None:
        return f"{name} could not be measured ({m.get('note') or 'no reason recorded'})"
    value, limit = headline_quantity(m.get("value"), unit), headline_quantity(m.get("limit"), unit)
    if m.get("verdict") == "review":
        return f"{name} {value} is within the uncertainty of the limit {limit}"
    return f"{name} {value} {FAILED.get(str(m.get('op')), 'fails')} {limit}"
