"""The append-only audit log: qualifications and node verdicts, chained by SHA-256.

Each record stores the hash of its own content together with the hash of the record before
it, so editing or deleting any stored verdict behind the tool's back breaks the chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from kb.errors import NotFoundError
from kb.tables import NodeVerdict, Qualification, utcnow

GENESIS = "0" * 64


@dataclass(frozen=True)
class NodeRecord:
    """The part of a node's result the audit log keeps as columns."""

    key: str
    kind: str
    parent: str | None
    verdict: str
    score: float | None
    threshold: float | None
    rationale: str


def _stamp(moment: datetime) -> str:
    return moment.replace(tzinfo=None, microsecond=0).isoformat()


def record_hash(prev_hash: str, q: Qualification, nodes: Sequence[NodeVerdict | NodeRecord]) -> str:
    content = {
        "created_at": _stamp(q.created_at),
        "sample_path": q.sample_path,
        "sample_sha256": q.sample_sha256,
        "ruleset_id": q.ruleset_id,
        "verdict": q.verdict,
        "normalization": q.normalization,
        "operator": q.operator,
        "software_version": q.software_version,
        "result_json": q.result_json,
        "nodes": [
            [n.key, n.kind, n.parent, n.verdict, n.score, n.threshold, n.rationale] for n in nodes
        ],
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


def last_hash(session: Session) -> str:
    row = session.exec(
        select(Qualification).order_by(col(Qualification.id).desc()).limit(1)
    ).first()
    return row.record_hash if row else GENESIS


def append_qualification(
    session: Session,
    *,
    sample_path: str,
    sample_sha256: str,
    ruleset_id: int,
    verdict: str,
    normalization: str,
    operator: str,
    software_version: str,
    document: dict[str, Any],
    nodes: Sequence[NodeRecord],
) -> Qualification:
    """Append one qualification and its nodes; the caller's transaction makes it atomic."""
    q = Qualification(
        created_at=utcnow(),
        sample_path=sample_path,
        sample_sha256=sample_sha256,
        ruleset_id=ruleset_id,
        verdict=verdict,
        normalization=normalization,
        operator=operator,
        software_version=software_version,
        result_json=json.dumps(document, sort_keys=True),
        prev_hash=last_hash(session),
        record_hash="",
    )
    q.record_hash = record_hash(q.prev_hash, q, nodes)
    session.add(q)
    session.flush()
    assert q.id is not None
    for n in nodes:
        session.add(
            NodeVerdict(
                qualification_id=q.id,
                key=n.key,
                kind=n.kind,
                parent=n.parent,
                verdict=n.verdict,
                score=n.score,
                threshold=n.threshold,
                rationale=n.rationale,
            )
        )
    session.flush()
    return q


def get_qualification(session: Session, qualification_id: int) -> Qualification:
    row = session.get(Qualification, qualification_id)
    if row is None:
        raise NotFoundError(f"no qualification with ID {qualification_id}; see `kb history`")
    return row


def node_verdicts(session: Session, qualification_id: int) -> list[NodeVerdict]:
    return list(
        session.exec(
            select(NodeVerdict)
            .where(NodeVerdict.qualification_id == qualification_id)
            .order_by(col(NodeVerdict.id))
        )
    )


@dataclass(frozen=True)
class ChainReport:
    checked: int
    first_bad_id: int | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.first_bad_id is None


def verify_chain(session: Session) -> ChainReport:
    """Recompute every record's hash in order; name the first record that does not match."""
    prev = GENESIS
    checked = 0
    for q in session.exec(select(Qualification).order_by(col(Qualification.id))):
        assert q.id is not None
        if q.prev_hash != prev:
            return ChainReport(
                checked,
                q.id,
                "does not follow the record before it (a record was deleted or reordered)",
            )
        if record_hash(prev, q, node_verdicts(session, q.id)) != q.record_hash:
            return ChainReport(
                checked,
                q.id,
                "content differs from what was recorded (edited after it was written)",
            )
        prev = q.record_hash
        checked += 1
    return ChainReport(checked, None, None)
