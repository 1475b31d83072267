"""Reading the audit log back: the history list, one stored qualification, chain checks."""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import col, select

from kb.audit import ChainReport, get_qualification, verify_chain
from kb.config import Workspace
from kb.store import KnowledgeBase
from kb.tables import Qualification


def _document(q: Qualification) -> dict[str, Any]:
    stored = json.loads(q.result_json)
    return {"id": q.id, "created_at": q.created_at.isoformat(), **stored, "report": None}


def list_qualifications(workspace: Workspace, limit: int = 50) -> list[dict[str, Any]]:
    kb = KnowledgeBase.open(workspace)
    with kb.transaction() as session:
        rows = session.exec(
            select(Qualification).order_by(col(Qualification.id).desc()).limit(limit)
        ).all()
        return [
            {
                "id": q.id,
                "created_at": q.created_at.isoformat(),
                "sample": {"path": q.sample_path, "sha256": q.sample_sha256},
                "verdict": q.verdict,
                "ruleset": json.loads(q.result_json)["ruleset"],
                "normalization": q.normalization,
                "operator": q.operator,
            }
            for q in rows
        ]


def load_qualification(workspace: Workspace, qualification_id: int) -> dict[str, Any]:
    """The stored document exactly as it was recorded; nothing is recomputed."""
    kb = KnowledgeBase.open(workspace)
    with kb.transaction() as session:
        return _document(get_qualification(session, qualification_id))


def verify_audit_log(workspace: Workspace) -> ChainReport:
    kb = KnowledgeBase.open(workspace)
    with kb.transaction() as session:
        return verify_chain(session)
