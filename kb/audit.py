"""The append-only audit log: qualifications, their node verdicts, expert feedback, ruleset
versions, calibrations and normalisation statistics, in one SHA-256 chain.

Each record's hash covers its kind, its ID and its content together with the hash of the
record before it, whatever kind that record is; `audit_chain` fixes the order. Editing,
deleting, renumbering or slipping in any record behind the tool's back breaks the chain. With
an audit key (never stored here) every entry also carries an HMAC of its hash, so re-hashing
the chain without the key is detected too.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, text
from sqlmodel import Session, SQLModel, col, select

from kb.errors import AuditKeyError, DatabaseError, NotFoundError, VLKBError
from kb.tables import (
    AuditEntry,
    Calibration,
    Feedback,
    ImageRecord,
    NodeVerdict,
    NormalizationStat,
    Qualification,
    RulesetVersion,
    utcnow,
)
from kb.vocabulary import DECISIVE

GENESIS = "0" * 64
QUALIFICATION = "qualification"
FEEDBACK = "feedback"
RULESET = "ruleset"
CALIBRATION = "calibration"
NORMALIZATION = "normalization_stat"
MODELS: dict[str, type[SQLModel]] = {
    QUALIFICATION: Qualification,
    FEEDBACK: Feedback,
    RULESET: RulesetVersion,
    CALIBRATION: Calibration,
    NORMALIZATION: NormalizationStat,
}
LEGACY, CURRENT = 1, 2  # audit_chain.format: before schema 3 / kind and ID in the hash
AUDIT_KEY = "vlkb_audit_key"  # session.info entry: the key writers MAC new entries with
# PostgreSQL advisory lock key of the chain head: the first 8 bytes of SHA-256("vlkb audit
# chain") as a signed 64-bit integer, so it cannot collide by accident with another program's.
CHAIN_LOCK = int.from_bytes(hashlib.sha256(b"vlkb audit chain").digest()[:8], "big", signed=True)

__all__ = ["AuditEntry", "GENESIS", "MODELS"]


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


def chained(prev_hash: str, content: dict[str, Any]) -> str:
    """The hash of a record: its canonical JSON content after the hash of the record before."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


def mac_of(key: bytes, record_hash: str) -> str:
    return hmac.new(key, record_hash.encode("ascii"), hashlib.sha256).hexdigest()


def _node_rows(nodes: Sequence[NodeVerdict | NodeRecord]) -> list[list[Any]]:
    return [[n.key, n.kind, n.parent, n.verdict, n.score, n.threshold, n.rationale] for n in nodes]


def _qualification_fields(q: Qualification, nodes: Sequence[NodeVerdict | NodeRecord]) -> dict:
    return {
        "created_at": _stamp(q.created_at),
        "sample_path": q.sample_path,
        "sample_sha256": q.sample_sha256,
        "ruleset_id": q.ruleset_id,
        "verdict": q.verdict,
        "normalization": q.normalization,
        "operator": q.operator,
        "software_version": q.software_version,
        "result_json": q.result_json,
        "nodes": _node_rows(nodes),
    }


def _feedback_fields(f: Feedback) -> dict[str, Any]:
    return {
        "created_at": _stamp(f.created_at),
        "qualification_id": f.qualification_id,
        "node": f.node,
        "verdict": f.verdict,
        "comment": f.comment,
        "expert": f.expert,
    }


def _columns(record: SQLModel) -> dict[str, Any]:
    """Every column of a record, times as second-resolution ISO text."""
    return {
        name: _stamp(value) if isinstance(value, datetime) else value
        for name, value in record.model_dump().items()
    }


def record_content(
    session: Session,
    kind: str,
    record: Any,
    nodes: Sequence[NodeVerdict | NodeRecord] | None = None,
) -> dict[str, Any]:
    """What the current record format hashes: the kind, the ID and every field of the record."""
    if kind == QUALIFICATION:
        if nodes is None:
            nodes = node_verdicts(session, record.id)
        fields = _qualification_fields(record, nodes)
    elif kind == FEEDBACK:
        fields = _feedback_fields(record)
    elif kind in MODELS:
        fields = {k: v for k, v in _columns(record).items() if k != "id"}
    else:
        raise ValueError(f"unknown audit record kind {kind!r}")
    return {**fields, "kind": kind, "id": record.id}


def legacy_hash(session: Session, kind: str, record: Any, prev: str) -> str:
    """The hash as written before schema 3 (no ID; a qualification without its kind)."""
    if kind == QUALIFICATION:
        return chained(prev, _qualification_fields(record, node_verdicts(session, record.id)))
    if kind == FEEDBACK:
        return chained(prev, {**_feedback_fields(record), "kind": FEEDBACK})
    raise ValueError(f"{kind} records have no format before schema 3")


def expected_hash(session: Session, entry: AuditEntry, record: Any, prev: str) -> str:
    if entry.format == LEGACY:
        return legacy_hash(session, entry.kind, record, prev)
    return chained(prev, record_content(session, entry.kind, record))


def head_entry(session: Session) -> AuditEntry | None:
    return session.exec(select(AuditEntry).order_by(col(AuditEntry.seq).desc()).limit(1)).first()


def entry_record(session: Session, entry: AuditEntry) -> Any | None:
    """The row a chain entry stands for, or None when its kind is unknown or the row is gone."""
    model = MODELS.get(entry.kind)
    return session.get(model, entry.record_id) if model is not None else None


def last_hash(session: Session) -> str:
    """The hash the next record of any kind must follow."""
    row = head_entry(session)
    return row.record_hash if row else GENESIS


def lock_chain(session: Session) -> None:
    """Serialise appends on the chain head across processes and machines (PostgreSQL): a
    transaction-scoped advisory lock, released by the commit or rollback; taking it again in
    the same transaction is harmless. SQLite's writers hold its file lock (BEGIN IMMEDIATE)."""
    if session.get_bind().dialect.name == "postgresql":
        session.exec(text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=CHAIN_LOCK))  # type: ignore[call-overload]


def _writable_head(session: Session) -> str:
    """The head to extend, refusing a keyed chain without its key or with another key."""
    lock_chain(session)
    head = head_entry(session)
    if head is None:
        return GENESIS
    key = session.info.get(AUDIT_KEY)
    if head.mac is not None:
        if key is None:
            raise AuditKeyError(
                "the audit chain of this knowledge base is keyed: set KB_AUDIT_KEY, or "
                "key_file under [audit] in kb.toml, to the audit key to write to it"
            )
        if not hmac.compare_digest(mac_of(key, head.record_hash), head.mac):
            raise AuditKeyError(
                "the audit key (KB_AUDIT_KEY or [audit] key_file) does not match the key the "
                "chain head was written with; use the auditor's key"
            )
    return head.record_hash


def check_writable(session: Session) -> None:
    """Refuse early, before any work, when this writer could not extend the chain."""
    _writable_head(session)


def next_id(session: Session, model: type[SQLModel]) -> int:
    """The ID a new record gets, fixed before inserting so its hash can cover it."""
    highest = session.exec(select(func.max(model.id))).one()  # type: ignore[attr-defined]
    return int(highest or 0) + 1


def _enter(session: Session, kind: str, record_id: int, prev: str, digest: str) -> AuditEntry:
    key = session.info.get(AUDIT_KEY)
    entry = AuditEntry(
        kind=kind,
        record_id=record_id,
        prev_hash=prev,
        record_hash=digest,
        format=CURRENT,
        mac=mac_of(key, digest) if key is not None else None,
    )
    session.add(entry)
    session.flush()
    return entry


def chain_record(session: Session, kind: str, record: Any) -> AuditEntry:
    """Enter a ruleset version, calibration or normalisation statistic (already flushed, so it
    has its ID) into the chain; the caller's write transaction holds the lock."""
    if kind not in (RULESET, CALIBRATION, NORMALIZATION):
        raise ValueError(f"{kind} records are appended with their own function")
    assert record.id is not None
    prev = _writable_head(session)
    digest = chained(prev, record_content(session, kind, record))
    return _enter(session, kind, record.id, prev, digest)


def chain_unchained_records(session: Session) -> int:
    """Schema 3 migration: enter the ruleset versions, calibrations and statistics stored
    before it, in the order they were written; idempotent."""
    entered = 0
    for kind in (RULESET, CALIBRATION, NORMALIZATION):
        model = MODELS[kind]
        chained_ids = set(
            session.exec(select(AuditEntry.record_id).where(AuditEntry.kind == kind)).all()
        )
        for record in session.exec(select(model).order_by(col(model.id))).all():  # type: ignore[attr-defined]
            if record.id not in chained_ids:
                chain_record(session, kind, record)
                entered += 1
    return entered


def describe(kind: str, record: Any) -> str:
    """A record as a person names it in an error."""
    if kind == RULESET:
        return f"ruleset version {record.version}"
    if kind == NORMALIZATION:
        return (
            f"normalisation statistic {record.id} ({record.assessment_key} {record.role}, "
            f"{record.source})"
        )
    return f"{kind} {record.id}"


def entry_of(session: Session, kind: str, record_id: int | None) -> AuditEntry | None:
    """The chain entry of one record (its hash and position), if it has one."""
    return session.exec(
        select(AuditEntry).where(AuditEntry.kind == kind, AuditEntry.record_id == record_id)
    ).first()


def check_recorded(session: Session, kind: str, record: Any) -> None:
    """Refuse to use a record whose content no longer matches its audit-chain entry."""
    entry = entry_of(session, kind, record.id)
    name = describe(kind, record)
    if entry is None:
        raise DatabaseError(
            f"{name} is not in the audit chain (written behind the tool's back); it is not "
            "used: run `kb audit verify`"
        )
    if expected_hash(session, entry, record, entry.prev_hash) != entry.record_hash:
        raise DatabaseError(
            f"{name} differs from what the audit chain recorded (edited after it was "
            "written); it is not used: run `kb audit verify` and restore the knowledge base"
        )
    key = session.info.get(AUDIT_KEY)
    if (
        key is not None
        and entry.mac is not None
        and not hmac.compare_digest(mac_of(key, entry.record_hash), entry.mac)
    ):
        raise DatabaseError(
                f"{name}: its audit MAC does not match the audit key; it is not used: "
                "run `kb audit verify`"
            )


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
    prev = _writable_head(session)
    q = Qualification(
        id=next_id(session, Qualification),
        created_at=created_at or utcnow(),
        sample_path=sample_path,
        sample_sha256=sample_sha256,
        ruleset_id=ruleset_id,
        verdict=verdict,
        normalization=normalization,
        operator=operator,
        software_version=software_version,
        result_json=json.dumps(document, sort_keys=True),
        prev_hash=prev,
        record_hash="",
    )
    q.record_hash = chained(prev, record_content(session, QUALIFICATION, q, nodes))
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
    if verdict not in DECISIVE:
        raise VLKBError(
            f"expert verdict {verdict!r} is not one of {', '.join(DECISIVE)}"
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
    prev = _writable_head(session)
    f = Feedback(
        id=next_id(session, Feedback),
        created_at=utcnow(),
        qualification_id=qualification_id,
        node=node,
        verdict=verdict,
        comment=comment,
        expert=expert,
        prev_hash=prev,
        record_hash="",
    )
    f.record_hash = chained(prev, record_content(session, FEEDBACK, f))
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
    first_bad_id: int | str | None
    problem: str | None
    head: str = GENESIS
    counts: tuple[tuple[str, int], ...] = ()
    macs_checked: int = 0
    macs_unchecked: int = 0  # entries with a MAC that no key was given to check
    keyed_from: int | None = None  # seq of the first entry with a MAC

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def first_bad(self) -> str | None:
        """The first bad record as a person names it, e.g. "feedback 3" or "image 1a2b3c..."."""
        if self.ok:
            return None
        shown = self.first_bad_id
        if isinstance(shown, str):
            shown = shown[:12]
        return f"{self.first_bad_kind} {shown}"


def thumbnail_sha256(session: Session, sample_sha256: str) -> str | None:
    image = session.get(ImageRecord, sample_sha256)
    return hashlib.sha256(image.thumbnail_png).hexdigest() if image is not None else None


def recorded_thumbnail(q: Qualification) -> str | None:
    """The thumbnail SHA-256 a qualification's document recorded (None before schema 3)."""
    try:
        sample = json.loads(q.result_json).get("sample") or {}
    except (ValueError, AttributeError):
        return None
    value = sample.get("thumbnail_sha256") if isinstance(sample, dict) else None
    return value if isinstance(value, str) else None


def verify_chain(
    session: Session, key: bytes | None = None, expect_head: str | None = None
) -> ChainReport:
    """Recompute every record's hash (and MAC) in chain order; name the first that fails.

    Then every record must be in the chain, every stored original image must match its
    SHA-256, a given key must have keyed something and an expected head must be in the chain.
    """
    prev = GENESIS
    checked = 0
    counts = dict.fromkeys(MODELS, 0)
    seen: dict[str, set[int]] = {kind: set() for kind in MODELS}
    macs_checked = macs_unchecked = 0
    keyed_from: int | None = None
    new_format_from: int | None = None
    found_head = expect_head is None

    def report(kind: str | None, record_id: int | str | None, problem: str | None) -> ChainReport:
        return ChainReport(
            checked, kind, record_id, problem, prev, tuple(counts.items()),
            macs_checked, macs_unchecked, keyed_from,
        )

    for entry in session.exec(select(AuditEntry).order_by(col(AuditEntry.seq))):
        kind, rid = entry.kind, entry.record_id
        if kind not in MODELS:
            return report(kind, rid, "has a kind the audit log does not know")
        record: Any = session.get(MODELS[kind], rid)
        if record is None:
            return report(kind, rid, "is in the chain but was deleted")
        if entry.format not in (LEGACY, CURRENT) or (
            entry.format == LEGACY and kind not in (QUALIFICATION, FEEDBACK)
        ):
            return report(kind, rid, f"has an unknown record format {entry.format}")
        if entry.format == LEGACY and new_format_from is not None:
            return report(
                kind, rid,
                "is in the record format of before schema 3, after records of the new format "
                "(slipped in behind the tool's back)",
            )
        if entry.format == CURRENT and new_format_from is None:
            new_format_from = entry.seq
        own_prev = getattr(record, "prev_hash", prev)
        if entry.prev_hash != prev or own_prev != prev:
            return report(
                kind, rid,
                "does not follow the record before it (a record was deleted or reordered)",
            )
        digest = expected_hash(session, entry, record, prev)
        if digest != entry.record_hash or getattr(record, "record_hash", digest) != digest:
            return report(
                kind, rid, "content differs from what was recorded (edited after it was written)"
            )
        if kind == QUALIFICATION:
            recorded = recorded_thumbnail(record)
            if recorded is not None and thumbnail_sha256(session, record.sample_sha256) != recorded:
                return report(
                    kind, rid,
                    "has a stored thumbnail that differs from the one it recorded (the image "
                    "table was edited)",
                )
        if entry.mac is None:
            if keyed_from is not None:
                return report(
                    kind, rid,
                    f"carries no MAC although the chain is keyed from entry {keyed_from} "
                    "(appended without the audit key)",
                )
        else:
            keyed_from = keyed_from or entry.seq
            if key is None:
                macs_unchecked += 1
            elif not hmac.compare_digest(mac_of(key, digest), entry.mac):
                return report(
                    kind, rid,
                    "has a MAC that does not match the audit key (written or re-hashed "
                    "without the key)",
                )
            else:
                macs_checked += 1
        if expect_head is not None and digest == expect_head:
            found_head = True
        prev = digest
        checked += 1
        counts[kind] += 1
        seen[kind].add(rid)
    for kind, model in MODELS.items():
        ids = session.exec(select(col(model.id)).order_by(col(model.id)))  # type: ignore[attr-defined]
        for record_id in ids:
            if record_id not in seen[kind]:
                return report(kind, record_id, "is not in the audit chain (added behind its back)")
    images = session.exec(
        select(ImageRecord).where(col(ImageRecord.data).is_not(None)).order_by(
            col(ImageRecord.sha256)
        )
    )
    for image in images:
        if hashlib.sha256(image.data or b"").hexdigest() != image.sha256:
            return report(
                "image", image.sha256,
                "has original bytes that do not match its SHA-256 (the image was replaced)",
            )
    if key is not None and keyed_from is None:
        return report(None, None, "an audit key was given but no record of the chain is keyed")
    if not found_head:
        assert expect_head is not None
        return report(
            None, None,
            f"the chain does not extend the expected head {expect_head[:16]} (records were "
            "removed, or the chain was re-hashed after it)",
        )
    return report(None, None, None)
