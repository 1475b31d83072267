"""Agreement between verdicts and expert labels: confusion counts, rates, AUROC, top-k.

Accept is the positive class. A `review` verdict is a question to a person, not an answer:
it is counted in `review_rate` and left out of the confusion matrix; `not_assessed` samples
are left out of everything and counted apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kb.vocabulary import DECISIVE


@dataclass(frozen=True)
class Confusion:
    tp: int
    fn: int
    tn: int
    fp: int

    @property
    def total(self) -> int:
        return self.tp + self.fn + self.tn + self.fp

    def to_dict(self) -> dict[str, int]:
        return {"tp": self.tp, "fn": self.fn, "tn": self.tn, "fp": self.fp}


def confusion(truth: Sequence[str], predicted: Sequence[str]) -> Confusion:
    """Counts over samples decided as accept or reject."""
    pairs = [(t, p) for t, p in zip(truth, predicted, strict=True) if p in DECISIVE]
    return Confusion(
        tp=sum(t == "accept" and p == "accept" for t, p in pairs),
        fn=sum(t == "accept" and p == "reject" for t, p in pairs),
        tn=sum(t == "reject" and p == "reject" for t, p in pairs),
        fp=sum(t == "reject" and p == "accept" for t, p in pairs),
    )


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def auroc(truth: Sequence[str], scores: Sequence[float]) -> float | None:
    """Probability that a random accept outscores a random reject (ties count half)."""
    values = np.asarray(scores, dtype=np.float64)
    positive = np.asarray([t == "accept" for t in truth])
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    # Mann-Whitney U from mid-ranks, which handles ties exactly.
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def top_k_precision(truth: Sequence[str], scores: Sequence[float], k: int) -> float | None:
    """Share of true accepts among the k highest-scoring samples (the article's retrieval)."""
    if not scores or k < 1:
        return None
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")[:k]
    return float(np.mean([truth[i] == "accept" for i in order]))


def agreement(
    truth: Sequence[str],
    predicted: Sequence[str],
    scores: Sequence[float | None] | None = None,
    top_k: int = 5,
) -> dict[str, object]:
    """Every figure of one evidence mode of one assessment, as a JSON-ready dict."""
    per_sample = zip(truth, predicted, scores or [None] * len(truth), strict=True)
    judged = [(t, p, s) for t, p, s in per_sample if p != "not_assessed"]
    truths = [t for t, _, _ in judged]
    verdicts = [p for _, p, _ in judged]
    c = confusion(truths, verdicts)
    precision = _ratio(c.tp, c.tp + c.fp)
    recall = _ratio(c.tp, c.tp + c.fn)
    specificity = _ratio(c.tn, c.tn + c.fp)
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else None
    )
    balanced = (
        (recall + specificity) / 2 if recall is not None and specificity is not None else None
    )
    # A continuous score only counts when every judged sample has one.
    has_scores = bool(judged) and all(s is not None and np.isfinite(s) for _, _, s in judged)
    values = [float(s) for _, _, s in judged] if has_scores else []
    return {
        "n": len(judged),
        "not_assessed": len(truth) - len(judged),
        "accuracy": _ratio(c.tp + c.tn, c.total),
        "balanced_accuracy": balanced,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "confusion": c.to_dict(),
        "auroc": auroc(truths, values) if has_scores else None,
        "top_k": top_k_precision(truths, values, top_k) if has_scores else None,
        "review_rate": _ratio(sum(p == "review" for p in verdicts), len(verdicts)),
    }


def balanced_accuracy_at(
    scores: Sequence[float] | np.ndarray, truth: Sequence[str], threshold: float
) -> float | None:
    """Balanced accuracy of `accept when score >= threshold` (no review band)."""
    values = np.asarray(scores, dtype=np.float64)
    positive = np.asarray([t == "accept" for t in truth])
    if positive.all() or not positive.any():
        return None
    accepted = values >= threshold
    recall = float(accepted[positive].mean())
    specificity = float((~accepted[~positive]).mean())
    return (recall + specificity) / 2


def best_threshold(
    scores: Sequence[float] | np.ndarray, truth: Sequence[str], current: float
) -> float:
    """The threshold with the highest balanced accuracy; ties go to the one nearest current.

    Candidates are the current threshold and the midpoints between neighbouring scores, so
    the choice never sits on a calibration image's own score.
    """
    values = np.unique(np.asarray(scores, dtype=np.float64))
    candidates = [current, values[0] - 1.0, values[-1] + 1.0]
    candidates += list((values[:-1] + values[1:]) / 2.0)
    ranked = [
        (balanced_accuracy_at(scores, truth, c) or 0.0, -abs(c - current), c) for c in candidates
    ]
    return float(max(ranked)[2])


def widest_best_threshold(scores: Sequence[float] | np.ndarray, truth: Sequence[str]) -> float:
    """The threshold with the highest balanced accuracy, in the middle of the widest gap
    between neighbouring scores that reaches it: with few examples, the one farthest from
    every example generalises best."""
    values = np.unique(np.asarray(scores, dtype=np.float64))
    if len(values) < 2:
        return float(values[0]) if len(values) else 0.0
    mids = (values[:-1] + values[1:]) / 2.0
    widths = values[1:] - values[:-1]
    ranked = [(balanced_accuracy_at(scores, truth, m) or 0.0, w, m)
              for m, w in zip(mids, widths, strict=True)]
    return float(max(ranked)[2])


def binary_auroc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """AUROC of scores for a boolean truth (ties count half, by average ranks); None when
    one class is empty. Used per pixel: positive = defect, a high score = anomalous."""
    truth = np.asarray(positive, dtype=bool).ravel()
    values = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    # average rank of each run of equal values (1-based)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float | None:
    """AUROC over every pixel of every image: defect pixels (mask non-zero) against the rest."""
    if not masks:
        return None
    truth = np.concatenate([np.asarray(m).ravel() != 0 for m in masks])
    values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in maps])
    return binary_auroc(truth, values)


def aupro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], max_fpr: float = 0.3,
          steps: int = 200) -> float | None:
    """Area under the per-region-overlap curve up to `max_fpr`, divided by max_fpr (MVTec AD).

    At each threshold, PRO is the mean over every connected defect region (of every image) of
    the share of its pixels above the threshold, and the false-positive rate the share of
    defect-free pixels above it; the curve PRO(FPR) is integrated from 0 to max_fpr, so one
    large defect cannot outweigh many small ones. None without defect regions.
    """
    from scipy import ndimage

    region_ids, region_values, free = [], [], []
    offset = 0
    for mask, anomaly in zip(masks, maps, strict=True):
        defect = np.asarray(mask) != 0
        values = np.asarray(anomaly, dtype=np.float64)
        labels, count = ndimage.label(defect)
        region_ids.append(labels[defect] + offset - 1)
        region_values.append(values[defect])
        free.append(values[~defect])
        offset += count
    if offset == 0:
        return None
    ids = np.concatenate(region_ids)
    inside = np.concatenate(region_values)
    outside = np.sort(np.concatenate(free))
    if outside.size == 0:
        return None
    sizes = np.bincount(ids, minlength=offset).astype(np.float64)
    # thresholds: quantiles of the defect-free values spanning FPR 0..max_fpr, and the two
    # ends (nothing above: FPR 0, PRO 0; everything above: FPR 1, PRO 1)
    grid = np.quantile(outside, 1.0 - np.linspace(0.0, max_fpr, steps + 1))
    thresholds = np.unique(np.r_[np.inf, grid, -np.inf])[::-1]
    fpr = 1.0 - np.searchsorted(outside, thresholds, side="right") / outside.size
    pro = np.array([
        np.mean(np.bincount(ids, weights=(inside > t), minlength=offset) / sizes)
        for t in thresholds
    ])
    order = np.lexsort((pro, fpr))
    fpr, pro = fpr[order], pro[order]
    # the curve up to max_fpr (interpolated there), integrated by trapezoids
    at_limit = float(np.interp(max_fpr, fpr, pro))
    keep = fpr < max_fpr
    fpr, pro = np.r_[fpr[keep], max_fpr], np.r_[pro[keep], at_limit]
    area = float(np.sum((fpr[1:] - fpr[:-1]) * (pro[1:] + pro[:-1]) / 2.0))
    return area / max_fpr
