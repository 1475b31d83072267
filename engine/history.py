"""Reading the audit log back: the history list, one stored qualification, expert feedback and
chain checks. Nothing here recomputes a verdict; everything comes from the stored records.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session

from engine.session import VLKB
from kb.audit import (
    GENESIS,
    ChainReport,
    append_feedback,
    entry_record,
    feedback_of,
    get_qualification,
    head_entry,
    node_verdicts,
    verify_chain,
)
from kb.audit_key import audit_key
from kb.db import damaged, integrity_problem
from kb.errors import DatabaseError, VLKBError
from kb.history import find_qualifications
from kb.tables import Feedback
from kb.vocabulary import PURPOSES, VERDICTS


def iso_utc(moment: datetime) -> str:
    """A stored time (naive UTC in SQLite) as ISO 8601 with its zone, like `kb qualify` prints."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def parse_since(text: str, option: str = "--since") -> datetime:
    """`--since`: a day (YYYY-MM-DD, from midnight UTC) or an ISO time (UTC unless it says)."""
    try:
        if len(text.strip()) == 10:
            day = date.fromisoformat(text.strip())
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise VLKBError(
            f"{option} {text!r} is not a date; use YYYY-MM-DD or an ISO time such as "
            "2026-11-25T14:30:00+01:00"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_until(text: str) -> datetime:
    """`--until`: the first moment after it (a day: the next midnight UTC; a time: 1 µs on)."""
    moment = parse_since(text, "--until")
    if len(text.strip()) == 10:
        return moment + timedelta(days=1)
    return moment + timedelta(microseconds=1)


def check_verdict(verdict: str) -> str:
    if verdict not in VERDICTS:
        raise VLKBError(f"unknown verdict {verdict!r}; use one of {', '.join(VERDICTS)}")
    return verdict


def feedback_dict(f: Feedback) -> dict[str, Any]:
    """One feedback entry as shown by show, history and the report."""
    return {
        "id": f.id,
        "qualification_id": f.qualification_id,
        "node": f.node,
        "verdict": f.verdict,
        "comment": f.comment,
        "expert": f.expert,
        "created_at": iso_utc(f.created_at),
    }


def feedback_by_qualification(
    session: Session, qualification_ids: Sequence[int]
) -> dict[int, list[dict[str, Any]]]:
    """Feedback grouped by qualification ID, oldest first; every ID gets a list."""
    grouped: dict[int, list[dict[str, Any]]] = {i: [] for i in qualification_ids}
    for f in feedback_of(session, qualification_ids):
        grouped[f.qualification_id].append(feedback_dict(f))
    return grouped


def stored_document(session: Session, qualification_id: int) -> dict[str, Any]:
    """The stored document exactly as it was recorded, with its ID and time."""
    q = get_qualification(session, qualification_id)
    stored = json.loads(q.result_json)
    document = {"id": q.id, "created_at": iso_utc(q.created_at), **stored}
    document["created_at"] = stored.get("created_at") or document["created_at"]
    return document


def list_qualifications(
    vlkb: VLKB,
    limit: int = 50,
    since: str | datetime | None = None,
    verdict: str | None = None,
    sample: str | None = None,
    until: str | datetime | None = None,
    purpose: str | None = None,
) -> list[dict[str, Any]]:
    """The newest `limit` qualifications from `since` up to `until` with this overall verdict.

    sample: only those whose sample path contains this text (any case; % and _ are literal).
    until: a day includes the whole day; a time includes that moment.
    purpose: only `kb evaluate` runs (evaluation) or only the others (qualification).
    """
    moment = parse_since(since) if isinstance(since, str) else since
    before = parse_until(until) if isinstance(until, str) else (
        until + timedelta(microseconds=1) if until is not None else None)
    if verdict is not None:
        check_verdict(verdict)
    if limit < 1:
        raise VLKBError("--limit must be at least 1")
    if purpose is not None and purpose not in PURPOSES:
        raise VLKBError(f"unknown purpose {purpose!r}; use one of {', '.join(PURPOSES)}")
    with vlkb.kb.reading() as session:
        rows = find_qualifications(session, limit, moment, verdict, sample, before, purpose)
        feedback = feedback_by_qualification(session, [q.id for q in rows if q.id is not None])
        documents = {q.id: json.loads(q.result_json) for q in rows}
        return [
            {
                "id": q.id,
                "created_at": iso_utc(q.created_at),
                "sample": {"path": q.sample_path, "sha256": q.sample_sha256},
                "verdict": q.verdict,
                "ruleset": documents[q.id]["ruleset"],
                "normalization": q.normalization,
                "operator": q.operator,
                "operator_source": documents[q.id].get("operator_source"),
                "purpose": documents[q.id].get("purpose", "qualification"),
                "feedback": feedback[q.id] if q.id is not None else [],
            }
            for q in rows
        ]


def load_qualification(vlkb: VLKB, qualification_id: int) -> dict[str, Any]:
    """One stored qualification with its expert feedback; nothing is recomputed."""
    with vlkb.kb.reading() as session:
        document = stored_document(session, qualification_id)
        feedback = feedback_by_qualification(session, [qualification_id])[qualification_id]
        return {**document, "feedback": feedback, "report": None}


def add_feedback(
    vlkb: VLKB,
    qualification_id: int,
    node: str,
    verdict: str,
    comment: str,
    expert: str | None = None,
) -> dict[str, Any]:
    """Append an expert's verdict on one node, beside the machine verdict, to the audit log.

    expert must name a person: nothing here falls back to the account the process runs as
    (the CLI passes the user at the keyboard; the web, what the expert typed).
    """
    with vlkb.kb.transaction() as session:
        f = append_feedback(session, qualification_id, node, verdict, comment, expert or "")
        machine = next(n.verdict for n in node_verdicts(session, qualification_id) if n.key == node)
        return {**feedback_dict(f), "machine_verdict": machine, "record_hash": f.record_hash}


def verify_audit_log(
    vlkb: VLKB, key_file: Path | None = None, expect_head: str | None = None
) -> ChainReport:
    """Walk the whole chain with the audit key (if any) and against an anchored head; a
    damaged file is reported as such, with what could still be checked."""
    if expect_head is not None and not re.fullmatch(r"[0-9a-f]{64}", expect_head):
        raise VLKBError(
            f"--expect-head {expect_head!r} is not a record hash; give the 64 hex digits "
            "that `kb audit head` printed"
        )
    key = audit_key(vlkb.workspace, key_file)
    kb = vlkb.kb
    problem = integrity_problem(kb.engine) if kb.url.startswith("sqlite") else None
    damage = damaged(kb.url, problem) if problem is not None else None
    try:
        with kb.reading() as session:
            report = verify_chain(session, key, expect_head)
    except DatabaseError:
        if damage is None:
            raise
        return ChainReport(0, None, None, damage)
    if damage is not None and report.ok:
        return replace(report, problem=damage)
    return report


def chain_head(vlkb: VLKB) -> dict[str, Any]:
    """The newest entry of the chain, for an auditor to keep outside the database."""
    with vlkb.kb.reading() as session:
        entry = head_entry(session)
        if entry is None:
            return {"hash": GENESIS, "seq": 0, "kind": None, "id": None, "created_at": None,
                    "keyed": False}
        moment = getattr(entry_record(session, entry), "created_at", None)
        return {
            "hash": entry.record_hash,
            "seq": entry.seq,
            "kind": entry.kind,
            "id": entry.record_id,
            "created_at": iso_utc(moment) if moment is not None else None,
            "keyed": entry.mac is not None,
        }
