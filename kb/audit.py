"""The append-only audit log: qualifications, their node verdicts and expert feedback, in one
SHA-256 chain.

Each record stores the hash of its own content together with the hash of the record before
it, whatever kind that record is; `audit_chain` fixes the order. Editing, deleting or
slipping in any stored verdict or comment behind the tool's back breaks the chain.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from kb.errors import NotFoundError, VLKBError
from kb.tables import AuditEntry, Feedback, NodeVerdict, Qualification, utcnow

GENESIS = "0" * 64
QUALIFICATION = "qualification"
FEEDBACK = "feedback"
EXPERT_VERDICTS = ("accept", "reject")


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


def os_user() -> str:
    """Who is at the keyboard: the default operator of a run and author of feedback."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def is_blank(text: str | None) -> bool:
    """Whether text says nothing: empty, whitespace, or only invisible characters (U+200B...)."""
    return not any(
        not ch.isspace() and unicodedata.category(ch) not in ("Cf", "Cc", "Zs", "Zl", "Zp")
        for ch in text or ""
    )


def _stamp(moment: datetime) -> str:
    return moment.replace(tzinfo=None, microsecond=0).isoformat()


def _chained(prev_hash: str, content: dict[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


def record_hash(prev_hash: str, q: Qualification, nodes: Sequence[NodeVerdict | NodeRecord]) -> str:
    return _chained(
        prev_hash,
        {
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
                [n.key, n.kind, n.parent, n.verdict, n.score, n.threshold, n.rationale]
                for n in nodes
            ],
        },
    )


def feedback_hash(prev_hash: str, f: Feedback) -> str:
    return _chained(
        prev_hash,
        {
            "kind": FEEDBACK,
            "created_at": _stamp(f.created_at),
            "qualification_id": f.qualification_id,
            "node": f.node,
            "verdict": f.verdict,
            "comment": f.comment,
            "expert": f.expert,
        },
    )


def last_hash(session: Session) -> str:
    """The hash the next record of any kind must follow."""
    row = session.exec(select(AuditEntry).order_by(col(AuditEntry.seq).desc()).limit(1)).first()
    return row.record_hash if row else GENESIS


def _enter(session: Session, kind: str, record_id: int, prev: str, digest: str) -> None:
    session.add(AuditEntry(kind=kind, record_id=record_id, prev_hash=prev, record_hash=digest))
    session.flush()


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
    created_at: datetime | None = None,
) -> Qualification:
    """Append one qualification and its nodes; the caller's transaction makes it atomic."""
    q = Qualification(
        created_at=created_at or utcnow(),
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
    _enter(session, QUALIFICATION, q.id, q.prev_hash, q.record_hash)
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


def append_feedback(
    session: Session,
    qualification_id: int,
    node: str,
    verdict: str,
    comment: str,
    expert: str,
) -> Feedback:
    """Record an expert's verdict on one node; the machine verdict is left as it was."""
    get_qualification(session, qualification_id)
    machine = {n.key: n.verdict for n in node_verdicts(session, qualification_id)}
    keys = list(machine)
    if node not in keys:
        raise NotFoundError(
            f"qualification {qualification_id} has no node {node!r}; "
            f"valid nodes: {', '.join(keys)}"
        )
    if verdict not in EXPERT_VERDICTS:
        raise VLKBError(
            f"expert verdict {verdict!r} is not one of {', '.join(EXPERT_VERDICTS)}"
        )
    if is_blank(comment):
        if verdict != machine[node]:
            raise VLKBError(
                f"feedback {verdict} on {node} overrides the machine verdict "
                f"({machine[node]}), so it needs a reason: say why in the comment "
                "(--comment TEXT, the form's comment, the JSON's comment)"
            )
        raise VLKBError("feedback needs a comment saying why (--comment TEXT)")
    if is_blank(expert):
        raise VLKBError(
            "feedback needs the expert's name (--expert NAME, the form's expert field, "
            "the JSON's expert)"
        )
    comment, expert = comment.strip(), expert.strip()
    f = Feedback(
        created_at=utcnow(),
        qualification_id=qualification_id,
        node=node,
        verdict=verdict,
        comment=comment,
        expert=expert,
        prev_hash=last_hash(session),
        record_hash="",
    )
    f.record_hash = feedback_hash(f.prev_hash, f)
    session.add(f)
    session.flush()
    assert f.id is not None
    _enter(session, FEEDBACK, f.id, f.prev_hash, f.record_hash)
    return f


def feedback_of(session: Session, qualification_ids: Sequence[int]) -> list[Feedback]:
    """Feedback on these qualifications, oldest first."""
    if not qualification_ids:
        return []
    return list(
        session.exec(
            select(Feedback)
            .where(col(Feedback.qualification_id).in_(list(qualification_ids)))
            .order_by(col(Feedback.id))
        )
    )


@dataclass(frozen=True)
class ChainReport:
    """The outcome of walking the chain: how far it held and, if not, where and why."""

    checked: int
    first_bad_kind: str | None
    first_bad_id: int | None
    problem: str | None
    head: str = GENESIS
    counts: tuple[tuple[str, int], ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def first_bad(self) -> str | None:
        """The first bad record as a person names it, e.g. "feedback 3"."""
        return None if self.ok else f"{self.first_bad_kind} {self.first_bad_id}"


def _recomputed(session: Session, kind: str, record: Qualification | Feedback, prev: str) -> str:
    if isinstance(record, Feedback):
        return feedback_hash(prev, record)
    assert record.id is not None
    return record_hash(prev, record, node_verdicts(session, record.id))


def verify_chain(session: Session) -> ChainReport:
    """Recompute every record's hash in chain order; name the first record that does not match."""
    prev = GENESIS
    checked = 0
    counts = {QUALIFICATION: 0, FEEDBACK: 0}
    seen: dict[str, set[int]] = {QUALIFICATION: set(), FEEDBACK: set()}
    models = {QUALIFICATION: Qualification, FEEDBACK: Feedback}

    def bad(kind: str, record_id: int | None, problem: str) -> ChainReport:
        return ChainReport(checked, kind, record_id, problem, prev, tuple(counts.items()))

    for entry in session.exec(select(AuditEntry).order_by(col(AuditEntry.seq))):
        if entry.kind not in models:
            return bad(entry.kind, entry.record_id, "has a kind the audit log does not know")
        record = session.get(models[entry.kind], entry.record_id)
        if record is None:
            return bad(entry.kind, entry.record_id, "is in the chain but was deleted")
        if entry.prev_hash != prev or record.prev_hash != prev:
            return bad(
                entry.kind,
                entry.record_id,
                "does not follow the record before it (a record was deleted or reordered)",
            )
        digest = _recomputed(session, entry.kind, record, prev)
        if digest != record.record_hash or digest != entry.record_hash:
            return bad(
                entry.kind,
                entry.record_id,
                "content differs from what was recorded (edited after it was written)",
            )
        prev = digest
        checked += 1
        counts[entry.kind] += 1
        seen[entry.kind].add(entry.record_id)
    for kind, model in models.items():
        ids = session.exec(select(col(model.id)).order_by(col(model.id)))  # type: ignore[attr-defined]
        for record_id in ids:
            if record_id not in seen[kind]:
                return bad(kind, record_id, "is not in the audit chain (added behind its back)")
    return ChainReport(checked, None, None, None, prev, tuple(counts.items()))
