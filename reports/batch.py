"""Shape a multi-image run for the batch index: samples x assessments, counts, review load."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from reports.filters import VERDICT_LABELS, file_name, parse_time

VERDICT_ORDER = tuple(VERDICT_LABELS)  # the order the labels table gives

Record = Mapping[str, Any]


@dataclass(frozen=True)
class BatchRow:
    """One sample: its overall verdict and one verdict per assessment column."""

    document: Record
    name: str
    href: str | None
    cells: list[str | None]  # verdict per assessment column; None when the ruleset lacks it
    needs_review: bool


@dataclass(frozen=True)
class BatchView:
    """What the batch index template reads."""

    columns: list[tuple[str, str]]  # (key, name)
    rows: list[BatchRow]
    overall: list[tuple[str, int]]  # verdict -> samples, in a fixed order
    column_counts: list[Counter[str]]
    needs_review: int  # samples with at least one node in review
    rulesets: list[tuple[Any, Any]]  # (version, hash), in order of first use
    normalizations: list[str]
    first: datetime | None
    last: datetime | None


def check_relative(links: Mapping[int, str]) -> None:
    """Refuse absolute links: the index must open offline and survive the folder being moved."""
    for ident, href in links.items():
        text = str(href)
        parts = urlsplit(text)
        if parts.scheme or parts.netloc or text.startswith(("/", "\\")):
            raise ValueError(f"link for qualification {ident} is not relative: {text!r}")


def _assessments(document: Record) -> dict[str, Record]:
    """The assessment nodes by key; gates have no column of their own."""
    return {
        str(n.get("key")): n for n in document.get("nodes") or [] if n.get("kind") == "assessment"
    }


def _needs_review(document: Record) -> bool:
    """A person must look at this sample: its verdict, or any node's, is review."""
    return document.get("verdict") == "review" or any(
        n.get("verdict") == "review" for n in document.get("nodes") or []
    )


def batch_view(documents: Sequence[Record], links: Mapping[int, str]) -> BatchView:
    """Columns in order of first appearance, so differing rulesets still line up by key."""
    columns: dict[str, str] = {}
    for document in documents:
        for key, node in _assessments(document).items():
            columns.setdefault(key, str(node.get("name") or ""))
    column_counts: list[Counter[str]] = [Counter() for _ in columns]
    rows = []
    for document in documents:
        verdicts = {k: str(n.get("verdict")) for k, n in _assessments(document).items()}
        cells = [verdicts.get(key) for key in columns]
        for counts, verdict in zip(column_counts, cells, strict=True):
            if verdict is not None:
                counts[verdict] += 1
        ident = document.get("id")
        rows.append(
            BatchRow(
                document=document,
                name=file_name((document.get("sample") or {}).get("path")),
                href=links.get(ident) if isinstance(ident, int) else None,
                cells=cells,
                needs_review=_needs_review(document),
            )
        )
    overall = Counter(str(d.get("verdict")) for d in documents)
    order = list(VERDICT_ORDER) + sorted(set(overall) - set(VERDICT_ORDER))
    times = [t for t in (parse_time(d.get("created_at")) for d in documents) if t is not None]
    rulesets: dict[tuple[Any, Any], None] = {}
    for document in documents:
        ruleset = document.get("ruleset") or {}
        rulesets.setdefault((ruleset.get("version"), ruleset.get("hash")), None)
    return BatchView(
        columns=list(columns.items()),
        rows=rows,
        overall=[(verdict, overall.get(verdict, 0)) for verdict in order],
        column_counts=column_counts,
        needs_review=sum(row.needs_review for row in rows),
        rulesets=list(rulesets),
        normalizations=sorted({str(d.get("normalization")) for d in documents}),
        first=min(times, default=None),
        last=max(times, default=None),
    )
