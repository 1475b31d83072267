"""The decision rule behind each stored verdict, recorded beside it (ISO/IEC 17025 asks that a
statement of conformity say which rule was applied): fusion, threshold, review band, how the
kinds of evidence were combined, the measurement rules and the gate rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kb.rules import Assessment, Decision, Gate, Precondition


def _preconditions(preconditions: Sequence[Precondition]) -> list[dict[str, Any]]:
    return [
        {"node": p.node, "verdicts": list(p.verdicts), "reason": p.reason} for p in preconditions
    ]


def assessment_rule(
    assessment: Assessment,
    decision: Decision,
    combined: Sequence[str] = (),
    decided_by: str | None = None,
    advisory: bool = False,
) -> dict[str, Any]:
    """The rule an assessment was judged by (after any calibration or run override).

    combined: the kinds of evidence that took part ("vision-language", "measurement");
    decided_by: what decided (kb.vocabulary.DECIDERS), None when nothing was judged;
    advisory: vision-language evidence disagreed with the measurements but did not count.
    """
    margin = float(decision.review_margin)
    threshold = float(decision.threshold)
    return {
        "fusion": decision.fusion,
        "weights": dict(decision.weights),
        "threshold": threshold,
        "review_margin": margin,
        "review_band": [threshold - margin, threshold + margin],
        "combination": decision.combine,
        "confidence_margin": float(decision.confidence_margin),
        "combined": list(combined),
        "decided_by": decided_by,
        "advisory": advisory,
        "measurement_rules": [
            {
                "quantity": m.quantity,
                "op": m.op,
                "limit": m.limit,
                "unit": m.unit,
                "uncertainty": m.uncertainty,
                "review_band": [m.limit - m.uncertainty, m.limit + m.uncertainty],
            }
            for m in assessment.measurements
        ],
        "preconditions": _preconditions(assessment.preconditions),
    }


def gate_rule(gate: Gate) -> dict[str, Any]:
    """How a gate combines its children's verdicts, and when it is judged at all."""
    return {
        "gate": gate.rule,
        "k": gate.k,
        "quorum": gate.quorum,
        "preconditions": _preconditions(gate.preconditions),
    }
