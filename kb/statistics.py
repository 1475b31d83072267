"""Normalisation statistics and calibration versions: stored once, entered into the audit
chain, and checked against it every time they are read for a verdict."""

from __future__ import annotations

from sqlmodel import Session, col, select

from kb.audit import CALIBRATION, NORMALIZATION, chain_record, check_recorded, next_id
from kb.tables import Calibration, NormalizationStat


def reference_stat(
    session: Session, ruleset_id: int, assessment_key: str, role: str, fingerprint: str
) -> NormalizationStat | None:
    """The statistics measured on the assessment's own references, verified, if stored."""
    row = session.exec(
        select(NormalizationStat).where(
            NormalizationStat.ruleset_id == ruleset_id,
            NormalizationStat.assessment_key == assessment_key,
            NormalizationStat.role == role,
            NormalizationStat.model_fingerprint == fingerprint,
            NormalizationStat.source == "references",
        )
    ).first()
    if row is not None:
        check_recorded(session, NORMALIZATION, row)
    return row


def stored_stat(
    session: Session, ruleset_id: int, assessment_key: str, role: str, fingerprint: str
) -> NormalizationStat | None:
    """The newest calibration statistics for this assessment, role and model, else the
    reference ones; verified against the audit chain before they are used."""
    rows = session.exec(
        select(NormalizationStat)
        .where(
            NormalizationStat.ruleset_id == ruleset_id,
            NormalizationStat.assessment_key == assessment_key,
            NormalizationStat.role == role,
            NormalizationStat.model_fingerprint == fingerprint,
        )
        .order_by(col(NormalizationStat.id).desc())
    ).all()
    chosen = next((r for r in rows if r.source == "calibration"), None) or next(
        (r for r in rows if r.source == "references"), None
    )
    if chosen is not None:
        check_recorded(session, NORMALIZATION, chosen)
    return chosen


def add_stat(session: Session, row: NormalizationStat) -> NormalizationStat:
    """Store one statistic and enter it into the chain (inside the caller's write)."""
    session.add(row)
    session.flush()
    chain_record(session, NORMALIZATION, row)
    return row


def latest_calibration(session: Session, ruleset_id: int) -> Calibration | None:
    """The newest calibration of this ruleset version, verified, if any."""
    row = session.exec(
        select(Calibration)
        .where(Calibration.ruleset_id == ruleset_id)
        .order_by(col(Calibration.id).desc())
    ).first()
    if row is not None:
        check_recorded(session, CALIBRATION, row)
    return row


def next_calibration_version(session: Session) -> int:
    """The version the next calibration gets (read under the write lock): its record ID."""
    return next_id(session, Calibration)


def add_calibration(session: Session, row: Calibration) -> Calibration:
    session.add(row)
    session.flush()
    chain_record(session, CALIBRATION, row)
    return row
