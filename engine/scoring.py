"""The article's maths as small pure numpy functions: net similarity, z-scores, fusion, decisions.

Everything here takes and returns plain arrays and floats so each formula can be checked
against a hand computation; nothing here knows about models, files or the database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kb.vocabulary import FUSIONS, meets


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; a zero row stays zero rather than becoming NaN."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def mean_direction(embeddings: np.ndarray) -> np.ndarray:
    """Re-normalised mean of unit embeddings: the centre of a prompt or reference set."""
    return l2_normalize(l2_normalize(embeddings).mean(axis=0))


def net_similarity(
    images: np.ndarray, positive_centre: np.ndarray, negative_centre: np.ndarray
) -> np.ndarray:
    """Delta = cos(z, positive centre) - cos(z, negative centre), one value per image row."""
    z = l2_normalize(np.atleast_2d(images))
    return z @ l2_normalize(positive_centre) - z @ l2_normalize(negative_centre)


def leave_one_out_deltas(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Delta of every reference image against the reference means with itself left out.

    A reference scored against a mean that contains it looks better than it is; leaving it
    out gives an honest spread for calibrating z-scores from the references alone. A
    reference that is the only one of its polarity has no leave-one-out mean and is skipped.
    """
    deltas = []
    for own, other, sign in ((positives, negatives, 1.0), (negatives, positives, -1.0)):
        if len(own) < 2:
            continue
        other_centre = mean_direction(other)
        for i in range(len(own)):
            own_centre = mean_direction(np.delete(own, i, axis=0))
            d = net_similarity(own[i], own_centre, other_centre)[0]
            deltas.append(sign * d)
    return np.asarray(deltas, dtype=np.float64)


def leave_one_out_shas(shas: Sequence[str], polarities: Sequence[str]) -> list[str]:
    """The items leave_one_out_deltas scores, in its order: positives, then negatives, each
    only when its polarity has at least two."""
    order: list[str] = []
    for polarity in ("positive", "negative"):
        same = [s for s, p in zip(shas, polarities, strict=True) if p == polarity]
        if len(same) >= 2:
            order += same
    return order


@dataclass(frozen=True)
class Normalization:
    """The mu and sigma a delta is standardised with, and where they came from."""

    mu: float
    sigma: float
    source: str  # "batch", "references", "calibration:<version>"
    count: int


def population_stats(deltas: np.ndarray, source: str) -> Normalization:
    """Mean and population standard deviation (ddof=0, as the article)."""
    deltas = np.asarray(deltas, dtype=np.float64)
    return Normalization(float(deltas.mean()), float(deltas.std()), source, int(deltas.size))


def zscore(delta: np.ndarray | float, norm: Normalization) -> np.ndarray:
    """(delta - mu) / sigma; zero where sigma is zero (every delta equal: nothing to rank)."""
    delta = np.asarray(delta, dtype=np.float64)
    if norm.sigma <= 0:
        return np.zeros_like(delta)
    return (delta - norm.mu) / norm.sigma


def fuse(z_by_role: Mapping[str, float], fusion: str, weights: Mapping[str, float]) -> float:
    """Combine per-role z-scores: `zsum` adds them (article), `weighted` is their weighted mean."""
    if not z_by_role:
        raise ValueError("nothing to fuse")
    if fusion == "zsum":
        return float(sum(z_by_role.values()))
    if fusion == "weighted":
        total = sum(weights.get(role, 1.0) for role in z_by_role)
        if total <= 0:
            raise ValueError("fusion weights of the available roles sum to zero")
        return float(sum(weights.get(role, 1.0) * z for role, z in z_by_role.items()) / total)
    raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")


def decide(score: float, threshold: float, review_margin: float) -> str:
    """accept above the threshold, reject below, review when closer to it than the margin.

    The band is symmetric so a borderline part goes to a person whichever side it falls;
    with a zero margin this is the article's rule (accept if score >= threshold).
    """
    if abs(score - threshold) < review_margin:
        return "review"
    return "accept" if score >= threshold else "reject"


def judge_measurement(value: float, op: str, limit: float, uncertainty: float = 0.0) -> str:
    """Value against a limit; a value within the measurement's uncertainty of it goes to review."""
    if uncertainty > 0 and abs(value - limit) <= uncertainty:
        return "review"
    return "accept" if meets(value, op, limit) else "reject"
