"""Embedding through the KB cache: each image or text is embedded once per model, ever."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from sqlmodel import Session

from engine.appearance import vectors_of
from kb.embeddings import IMAGE, cached_embeddings, store_embeddings
from kb.rules import Prompt

if TYPE_CHECKING:  # torch is imported by the command that loads a model, not by this module
    from engine.encoders.base import Encoder


def embed_images(
    session: Session,
    encoder: Encoder,
    images: Mapping[str, Callable[[], Image.Image]],
    modality: str = IMAGE,
) -> dict[str, np.ndarray]:
    """Vectors for images keyed by SHA-256; only cache misses are decoded and encoded.

    An appearance modality (engine.appearance) gives the images' appearance features instead.
    """
    vectors = cached_embeddings(session, encoder.fingerprint, modality, images)
    missing = [sha for sha in images if sha not in vectors]
    for start in range(0, len(missing), encoder.spec.batch_size):
        chunk = missing[start : start + encoder.spec.batch_size]
        fresh = vectors_of(encoder, modality, [images[sha]() for sha in chunk])
        new = dict(zip(chunk, fresh, strict=True))
        store_embeddings(session, encoder.fingerprint, modality, new)
        vectors.update(new)
    return vectors


def embed_prompts(session: Session, encoder: Encoder, prompts: Sequence[Prompt]) -> np.ndarray:
    """Prompt vectors in the order given, through the cache."""
    by_sha = {p.sha256: p.text for p in prompts}
    vectors = cached_embeddings(session, encoder.fingerprint, "text", by_sha)
    missing = [sha for sha in by_sha if sha not in vectors]
    if missing:
        fresh = encoder.embed_texts([by_sha[sha] for sha in missing])
        new = dict(zip(missing, fresh, strict=True))
        store_embeddings(session, encoder.fingerprint, "text", new)
        vectors.update(new)
    return np.stack([vectors[p.sha256] for p in prompts]) if prompts else np.zeros((0, 0))
