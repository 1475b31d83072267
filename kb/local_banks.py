"""The local-bank cache: fitted local-evidence banks keyed by (model fingerprint, key).

The key is a SHA-256 the engine computes over the bank's settings and its positive
references' hashes, so a bank is found again exactly when nothing that shaped it changed.
Like the embedding cache it is derived data: deleting a row costs one refit, never a result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import ColumnElement
from sqlmodel import Session, select

from kb.tables import LocalBank


@dataclass(frozen=True)
class StoredBank:
    """What a fitted bank is, in plain numbers: its rows and its references' statistics."""

    bank: np.ndarray  # (rows, dim) float32
    mu: float | None
    sigma: float | None
    count: int | None
    threshold: float | None  # None: no reference map to take it from (infinite)


def _of(fingerprint: str, key: str) -> ColumnElement[bool]:
    """The where-clause of one model's bank for one key."""
    return (LocalBank.model_fingerprint == fingerprint) & (LocalBank.key_sha256 == key)


def cached_bank(session: Session, fingerprint: str, key: str) -> StoredBank | None:
    """The stored bank for this model and key, or None."""
    row = session.exec(select(LocalBank).where(_of(fingerprint, key))).first()
    if row is None:
        return None
    bank = np.frombuffer(row.bank, dtype=np.float32).reshape(row.rows, row.dim).copy()
    return StoredBank(bank, row.mu, row.sigma, row.count, row.threshold)


def store_bank(session: Session, fingerprint: str, key: str, stored: StoredBank) -> None:
    """Keep a fitted bank unless one is stored for this model and key already."""
    if session.exec(select(LocalBank.id).where(_of(fingerprint, key))).first() is not None:
        return  # checked without reading the blob back
    bank = np.ascontiguousarray(stored.bank, dtype=np.float32)
    session.add(
        LocalBank(
            model_fingerprint=fingerprint,
            key_sha256=key,
            rows=int(bank.shape[0]),
            dim=int(bank.shape[1]),
            bank=bank.tobytes(),
            mu=stored.mu,
            sigma=stored.sigma,
            count=stored.count,
            threshold=stored.threshold,
        )
    )
    session.flush()
