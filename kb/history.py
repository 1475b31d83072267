"""Queries that read qualifications back: the history list and what was judged before.

Rows come out exactly as stored; turning them into documents (times as ISO text, feedback
attached) is the engine's business, so nothing here knows the JSON contract.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from kb.tables import Qualification

EVALUATION_TAG = json.dumps({"purpose": "evaluation"})[1:-1]  # as it appears in result_json


def find_qualifications(
    session: Session,
    limit: int,
    since: datetime | None = None,
    verdict: str | None = None,
    sample: str | None = None,
    before: datetime | None = None,
    purpose: str | None = None,
) -> list[Qualification]:
    """The newest `limit` qualifications at or after `since` (and strictly before `before`)
    with this overall verdict.

    sample: only those whose sample path contains this text (any case; % and _ are literal).
    purpose: only evaluation runs, or only the rest (records older than the purpose field are
    qualifications). The stored document is canonical JSON (sorted keys, json.dumps's
    separators), so its purpose is an exact piece of text on every backend.
    """
    query = select(Qualification)
    if since is not None:
        query = query.where(col(Qualification.created_at) >= _aware(since))
    if before is not None:
        query = query.where(col(Qualification.created_at) < _aware(before))
    if verdict is not None:
        query = query.where(Qualification.verdict == verdict)
    if purpose is not None:
        tagged = col(Qualification.result_json).contains(EVALUATION_TAG, autoescape=True)
        query = query.where(tagged if purpose == "evaluation" else ~tagged)
    if sample:
        path = func.lower(col(Qualification.sample_path))
        query = query.where(path.contains(sample.lower(), autoescape=True))
    return list(session.exec(query.order_by(col(Qualification.id).desc()).limit(limit)).all())


def _aware(moment: datetime) -> datetime:
    """A time without a zone is UTC, as the knowledge base stores times."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def documents_under_ruleset(
    session: Session, ruleset_id: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(sample SHA-256, stored document) of every qualification made under this ruleset version."""
    rows = session.exec(
        select(Qualification.sample_sha256, Qualification.result_json).where(
            Qualification.ruleset_id == ruleset_id
        )
    )
    for sha, stored in rows:
        yield sha, json.loads(stored)
