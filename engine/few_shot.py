"""Thresholds chosen from the references alone, so a few-shot workspace decides well without
a labelled calibration set.

Each reference is scored as a sample would be, but against the others only (leave-one-out for
the image role; prompts never contain a reference, so the text role scores it as it is), with
the same reference statistics and fusion. The threshold is the one that best separates the
positive from the negative references (in the middle of the widest such gap), and the review
band a quarter of their pooled within-class spread. Only what the rules leave out is chosen;
an expert's number always stands, and `kb calibrate --labels` overrides both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from sqlmodel import Session

from engine.encoders.roles import ModelSet
from engine.evaluation.metrics import widest_best_threshold
from engine.evidence import RolePlan, reference_deltas
from engine.scoring import fuse, leave_one_out_shas, zscore
from kb.rules import Assessment, Ruleset
from kb.vocabulary import Verdict

MIN_PER_POLARITY = 5  # fewer references per side give a threshold no one should trust
BAND_OF_SPREAD = 0.25  # review band: this share of the references' pooled within-class std


@dataclass(frozen=True)
class ReferenceThreshold:
    """The threshold (and band) one assessment takes from its references, and from how many."""

    threshold: float
    review_margin: float | None  # None: the rules give the band
    positives: int
    negatives: int

    @property
    def source(self) -> str:
        return f"references (leave-one-out, {self.positives} + {self.negatives})"


def reference_thresholds(
    session: Session,
    ruleset: Ruleset,
    models: ModelSet,
    setup: Mapping[tuple[str, str], RolePlan],
) -> dict[str, ReferenceThreshold]:
    """Every assessment whose rules leave the threshold to the references and that has at
    least MIN_PER_POLARITY of each, with reference statistics for each of its roles."""
    chosen = {}
    for key, assessment in ruleset.assessments.items():
        if "threshold" not in assessment.decision.from_references:
            continue
        scores = _reference_scores(session, assessment, models, setup)
        if scores is None:
            continue
        truth = [Verdict.ACCEPT if polarity == "positive" else Verdict.REJECT
                 for polarity in scores[1]]
        positives, negatives = truth.count(Verdict.ACCEPT), truth.count(Verdict.REJECT)
        if min(positives, negatives) < MIN_PER_POLARITY:
            continue
        values = scores[0]
        margin = None
        if "review_margin" in assessment.decision.from_references:
            by_class = [values[[t == label for t in truth]] for label in set(truth)]
            pooled = float(np.sqrt(np.mean([np.var(v) for v in by_class])))
            margin = BAND_OF_SPREAD * pooled
        chosen[key] = ReferenceThreshold(
            widest_best_threshold(values, truth), margin, positives, negatives
        )
    return chosen


def _reference_scores(
    session: Session,
    assessment: Assessment,
    models: ModelSet,
    setup: Mapping[tuple[str, str], RolePlan],
) -> tuple[np.ndarray, list[str]] | None:
    """(fused score, polarity) of each reference scored by every role; None when a role
    has no items or no reference statistics (then nothing can be chosen honestly)."""
    by_role: dict[str, dict[str, float]] = {}
    polarity_of = {r.sha256: r.polarity for r in assessment.references}
    for role in models.bound_roles():
        plan = setup.get((assessment.key, role))
        if plan is None:
            continue
        if plan.items is None or plan.norm is None or not plan.norm.source.startswith("ref"):
            return None
        encoder = models.encoder(role)
        deltas = reference_deltas(session, assessment, role, encoder, plan.items)
        shas = (leave_one_out_shas(plan.items.shas, plan.items.polarities) if role == "image"
                else [r.sha256 for r in assessment.references])
        z = zscore(deltas, plan.norm)
        by_role[role] = dict(zip(shas, (float(v) for v in z), strict=True))
    if not by_role:
        return None
    common = [sha for sha in polarity_of if all(sha in z for z in by_role.values())]
    decision = assessment.decision
    fused = [fuse({role: z[sha] for role, z in by_role.items()}, decision.fusion,
                  decision.weights) for sha in common]
    return np.asarray(fused, dtype=np.float64), [polarity_of[sha] for sha in common]
