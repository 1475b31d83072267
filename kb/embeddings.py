"""The embedding cache: float32 vectors keyed by (model fingerprint, modality, content SHA-256)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from sqlmodel import Session, col, select

from kb.tables import Embedding

# image and text embeddings, and images' appearance features (how far from the references)
IMAGE, TEXT, APPEARANCE = "image", "text", "appearance"
MODALITIES = (IMAGE, TEXT, APPEARANCE)
# appearance by phase of the map as read in a legend, whose colours follow the colon
# (engine/appearance.py): one modality per legend, so a changed legend misses the cache
APPEARANCE_BY_PHASE = "appearance-by-phase:"


def is_modality(modality: str) -> bool:
    """Whether vectors of this modality may be stored."""
    return modality in MODALITIES or modality.startswith(APPEARANCE_BY_PHASE)


def cached_embeddings(
    session: Session, fingerprint: str, modality: str, shas: Iterable[str]
) -> dict[str, np.ndarray]:
    """The cached vectors among `shas`; missing ones are simply absent from the result."""
    wanted = sorted(set(shas))
    found: dict[str, np.ndarray] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        rows = session.exec(
            select(Embedding).where(
                Embedding.model_fingerprint == fingerprint,
                Embedding.modality == modality,
                col(Embedding.content_sha256).in_(chunk),
            )
        )
        for row in rows:
            found[row.content_sha256] = np.frombuffer(row.vector, dtype=np.float32).copy()
    return found


def store_embeddings(
    session: Session, fingerprint: str, modality: str, vectors: Mapping[str, np.ndarray]
) -> None:
    """Add vectors not cached yet (a vector is a pure function of model and content)."""
    if not is_modality(modality):
        raise ValueError(f"unknown modality {modality!r}")
    already = cached_embeddings(session, fingerprint, modality, vectors)
    for sha, vector in vectors.items():
        if sha in already:
            continue
        v = np.asarray(vector, dtype=np.float32)
        session.add(
            Embedding(
                model_fingerprint=fingerprint,
                modality=modality,
                content_sha256=sha,
                dim=int(v.size),
                vector=v.tobytes(),
            )
        )
    session.flush()
