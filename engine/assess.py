"""Judging one assessment for one sample: fuse the VLR z-scores, check the measurement
rules, combine them into a verdict and say why in plain sentences.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.decision_rule import assessment_rule
from engine.metrology.names import quantity_name
from engine.results import MeasurementEvidence, NodeResult, VLREvidence
from engine.scoring import decide, fuse, judge_measurement
from kb.rules import Assessment, Decision
from kb.vocabulary import COMPARISON_WORDS, DECISIVE, strictest


def measurement_evidence(
    assessment: Assessment, quantities: dict[str, float], unmeasurable: dict[str, str],
    notes: dict[str, str] | None = None,
) -> list[MeasurementEvidence]:
    """Every measurement rule judged; a quantity that could not be measured goes to review,
    and one measured on a stand-in (notes) says so in its note."""
    evidence = []
    for rule in assessment.measurements:
        value = quantities.get(rule.quantity)
        if value is None:
            why = unmeasurable.get(rule.quantity, "not measured")
            evidence.append(
                MeasurementEvidence(
                    rule.quantity,
                    None,
                    rule.op,
                    rule.limit,
                    rule.unit,
                    rule.uncertainty,
                    "review",
                    note=f"could not be measured: {why}",
                )
            )
            continue
        verdict = judge_measurement(value, rule.op, rule.limit, rule.uncertainty)
        evidence.append(
            MeasurementEvidence(
                rule.quantity, value, rule.op, rule.limit, rule.unit, rule.uncertainty, verdict,
                note=(notes or {}).get(rule.quantity),
            )
        )
    return evidence


def judge_assessment(
    assessment: Assessment,
    vlr: Sequence[VLREvidence],
    measurements: Sequence[MeasurementEvidence],
    decision: Decision | None = None,
) -> NodeResult:
    """The assessment's verdict from its evidence, combined as its decision says.

    `strictest`: every kind of evidence must accept; the strictest verdict wins.
    `measurement-led`: with measurement rules, they decide; vision-language evidence that
    contradicts them (accept against reject) sends the assessment to review only when it is
    confident and applicable, and is otherwise advisory. Without them it decides alone.
    """
    decision = decision or assessment.decision
    usable = [e for e in vlr if e.usable and e.counted]
    score = None
    vlr_verdict = None
    if usable:
        score = fuse({e.role: float(e.z) for e in usable}, decision.fusion, decision.weights)
        vlr_verdict = decide(score, decision.threshold, decision.review_margin)
    combined = (["vision-language"] if vlr_verdict else []) + (
        ["measurement"] if measurements else []
    )
    measured = strictest(m.verdict for m in measurements) if measurements else None
    if decision.combine == "measurement-led" and measured is not None:
        verdict, decided_by, advice, advisory = _measurement_led(
            measured, vlr_verdict, score, usable, decision
        )
    else:
        verdicts = ([vlr_verdict] if vlr_verdict else []) + [m.verdict for m in measurements]
        verdict, advice, advisory = strictest(verdicts), None, False
        decided_by = _decider(vlr_verdict, measured)
    sentences = [f"{assessment.name}: {verdict}."]
    sentences += [_measurement_sentence(m) for m in measurements]
    if usable:
        sentences.append(_fusion_sentence(usable, score, vlr_verdict, decision))
    if advice:
        sentences.append(advice)
    sentences += [_vlr_sentence(e) for e in vlr]
    if decided_by is None:
        sentences.append("No evidence could be used, so nothing was judged.")
    return NodeResult(
        key=assessment.key,
        kind="assessment",
        parent=assessment.parent,
        name=assessment.name,
        verdict=verdict,
        rationale=" ".join(sentences),
        score=score,
        threshold=decision.threshold if usable else None,
        review_margin=decision.review_margin if usable else None,
        fusion=decision.fusion if usable else None,
        criterion=assessment.criterion,
        evidence=(*vlr, *measurements),
        measurements={m.quantity: m.value for m in measurements if m.value is not None},
        decision_rule=assessment_rule(
            assessment, decision, combined, decided_by, advisory=advisory
        ),
        combine=decision.combine,
        decided_by=decided_by,
    )


def _decider(vlr_verdict: str | None, measured: str | None) -> str | None:
    """Which kinds decided a strictest combination (or measurement-led without measurements)."""
    if vlr_verdict and measured:
        return "strictest"
    if measured:
        return "measurement"
    return "vision-language" if vlr_verdict else None


def _measurement_led(
    measured: str,
    vlr_verdict: str | None,
    score: float | None,
    usable: Sequence[VLREvidence],
    decision: Decision,
) -> tuple[str, str, str | None, bool]:
    """(verdict, what decided it, a sentence saying so, whether vision-language evidence
    disagreed but was only advisory) when the measurements lead."""
    contradicts = {measured, vlr_verdict} == set(DECISIVE)  # accept against reject
    if not contradicts or score is None:
        if vlr_verdict is None:
            return measured, "measurement", None, False
        agrees = "agrees" if vlr_verdict == measured else "does not contradict them"
        return measured, "measurement", (
            f"The measurements decide (measurement-led); the vision-language evidence "
            f"({vlr_verdict}) {agrees}."
        ), False
    distance = abs(score - decision.threshold)
    confident = distance >= decision.confidence_margin
    # Evidence outside the range of the references is not usable at all; what is left but not
    # applicable is evidence whose range could not be measured (too few references).
    strangers = [e.role for e in usable if not e.applicable]
    if confident and not strangers:
        return "review", "disagreement", (
            f"The vision-language evidence says {vlr_verdict} against the measurements' "
            f"{measured}, confidently (|score - threshold| = {distance:.2f}, at least "
            f"{decision.confidence_margin:g}) and on images like its references, so a person "
            "must decide."
        ), False
    why = []
    if not confident:
        why.append(
            f"not confident (|score - threshold| = {distance:.2f} < {decision.confidence_margin:g})"
        )
    if strangers:
        why.append(
            f"not shown applicable (no range of the references measured for "
            f"{' or '.join(strangers)})"
        )
    return measured, "measurement", (
        f"The vision-language evidence disagrees ({vlr_verdict}) but is {' and '.join(why)}: "
        "advisory only; the measurements decide."
    ), True


def not_a_phase_map(
    assessment: Assessment, vlr: Sequence[VLREvidence], reason: str
) -> NodeResult:
    """An assessment with measurement rules on a sample that is not a phase map: nothing it
    measured would mean anything, so it is not assessed, whatever the other evidence says.

    The vision-language evidence is kept as a record; it does not decide.
    """
    measurements = tuple(
        MeasurementEvidence(
            rule.quantity, None, rule.op, rule.limit, rule.unit, rule.uncertainty,
            "not_assessed", note=reason,
        )
        for rule in assessment.measurements
    )
    return NodeResult(
        key=assessment.key,
        kind="assessment",
        parent=assessment.parent,
        name=assessment.name,
        verdict="not_assessed",
        rationale=(
            f"{assessment.name}: not assessed; {reason}. Its measurement rules cannot be "
            "applied, so a person must judge this sample."
        ),
        criterion=assessment.criterion,
        evidence=(*vlr, *measurements),
        reason=reason,
        combine=assessment.decision.combine,
    )


def format_quantity(value: float, unit: str) -> str:
    """A value as an engineer writes it: fractions in per cent, micrometres as µm."""
    if unit == "fraction":
        return f"{value * 100:.3g} %"
    if unit == "count":
        return f"{value:.0f}"
    if unit == "ratio":
        return f"{value:.3g}"
    return f"{value:.3g} {unit.replace('um', 'µm').replace('mm2', 'mm²')}"


def _measurement_sentence(m: MeasurementEvidence) -> str:
    what = quantity_name(m.quantity)
    bound = f"{COMPARISON_WORDS[m.op]} {format_quantity(m.limit, m.unit)}"
    if m.value is None:
        return f"The {what} must be {bound} but {m.note}; a person should check it."
    outcome = {
        "accept": "meets the limit",
        "reject": "fails the limit",
        "review": "is within the measurement uncertainty "
        f"(±{format_quantity(m.uncertainty, m.unit)}) of the limit, so it needs review",
    }[m.verdict]
    told = f"; {m.note}" if m.note else ""
    return f"Measured {what} {format_quantity(m.value, m.unit)} (must be {bound}) {outcome}{told}."


def _fusion_sentence(
    usable: Sequence[VLREvidence], score: float | None, verdict: str | None, decision: Decision
) -> str:
    parts = ", ".join(f"{e.role} z = {e.z:+.2f}" for e in usable)
    how = "sum" if decision.fusion == "zsum" else "weighted mean"
    relation = {
        "accept": "at or above",
        "reject": "below",
        "review": "too close to",
    }[verdict or "review"]
    band = f" (review band ±{decision.review_margin:g})" if decision.review_margin > 0 else ""
    return (
        f"Vision-language score {score:+.2f} ({how} of {parts}) is {relation} "
        f"the threshold {decision.threshold:+.2f}{band}."
    )


def _vlr_sentence(e: VLREvidence) -> str:
    what = "prompts" if e.role == "text" else "reference images"
    if not e.usable:
        return f"The {e.role} evidence was not used: {e.note}."
    if e.role == "local":
        return _local_sentence(e)
    side = "positive" if (e.delta or 0) >= 0 else "negative"
    text = (
        f"Against the {what} ({e.model}) the sample is closer to the {side} ones "
        f"(net similarity {e.delta:+.4f}, z = {e.z:+.2f} with mu {e.mu:+.4f}, "
        f"sigma {e.sigma:.4f} from {e.normalization})"
    )
    pos, neg = e.closest("positive"), e.closest("negative")
    if pos and neg:
        text += (
            f"; nearest positive: {_short(pos.label)} ({pos.similarity:.3f}), "
            f"nearest negative: {_short(neg.label)} ({neg.similarity:.3f})"
        )
    return text + "."


def _local_sentence(e: VLREvidence) -> str:
    counted = "" if e.counted else "; shown, not counted in the fused score ([local] fuse = false)"
    return (f"Against the good references' patches ({e.model}) the sample's anomaly score is "
            f"{-(e.delta or 0.0):.4f} (z = {e.z:+.2f} with mu {e.mu:+.4f}, sigma {e.sigma:.4f} "
            f"from {e.normalization}); {e.rationale}{counted}.")


def _short(label: str, limit: int = 70) -> str:
    label = label if len(label) <= limit else label[: limit - 1] + "…"
    return f"“{label}”"
