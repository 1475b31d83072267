"""How an assessment combines its kinds of evidence: strictest, or led by its measurements.

judge_assessment is pure: it takes evidence objects and a decision, so each case is built
from real evidence records (a z-score per role, a measured value against its rule).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from engine.assess import judge_assessment, measurement_evidence
from engine.results import Applicability, VLREvidence
from kb.errors import RulesError
from kb.rules import (
    DEFAULT_CONFIDENCE_MARGIN,
    Assessment,
    Decision,
    MeasurementRule,
    Ruleset,
    compile_rules,
)
from reports.filters import decision_rule
from tests.workspaces import new_workspace, write_carbide_assessment

RULE = MeasurementRule("carbide_fraction", ">=", 0.30, "fraction", 0.01)
LIKE_THE_REFERENCES = Applicability(0.001, "references/a.png", 0.01, 0.1, 10.0, 6)


def assessment(mode: str, margin: float = DEFAULT_CONFIDENCE_MARGIN, measured: bool = True):
    decision = Decision(review_margin=0.25, combine=mode, confidence_margin=margin)
    return Assessment(
        key="EA-5", name="Carbide dissolution", criterion="At least 30 % carbide.",
        parent="qualification", source="assessments/EA-5.toml",
        measurements=(RULE,) if measured else (), decision=decision,
    )


def vlr(z_text: float, z_image: float, applicability=LIKE_THE_REFERENCES) -> list[VLREvidence]:
    return [
        VLREvidence(role, "m", "f", delta=0.0, z=z, mu=0.0, sigma=1.0,
                    normalization="references", applicability=applicability)
        for role, z in (("text", z_text), ("image", z_image))
    ]


def judged(a: Assessment, evidence: list[VLREvidence], carbide: float | None):
    quantities = {} if carbide is None else {"carbide_fraction": carbide}
    return judge_assessment(a, evidence, measurement_evidence(a, quantities, {}))


def test_strictest_lets_a_rejecting_model_overrule_accepting_measurements():
    node = judged(assessment("strictest"), vlr(-3.0, -2.0), carbide=0.40)
    assert node.verdict == "reject"
    assert node.combine == "strictest" and node.decided_by == "strictest"
    assert node.decision_rule["combination"] == "strictest"


def test_measurement_led_sends_a_confident_applicable_contradiction_to_review():
    a = assessment("measurement-led")
    evidence = vlr(-1.5, -1.5)  # fused -3.0: 3.0 from the threshold, beyond the margin 2
    assert abs(sum(e.z for e in evidence) - a.decision.threshold) >= a.decision.confidence_margin
    node = judged(a, evidence, carbide=0.40)
    assert node.verdict == "review" and node.decided_by == "disagreement"
    assert node.decision_rule["decided_by"] == "disagreement"
    assert "a person must decide" in node.rationale


def test_measurement_led_keeps_an_unconfident_contradiction_advisory():
    a = assessment("measurement-led")
    evidence = vlr(-0.5, -0.5)  # fused -1.0: rejects (beyond the review band) but not confident
    score = sum(e.z for e in evidence)
    assert score < -a.decision.review_margin and abs(score) < a.decision.confidence_margin
    node = judged(a, evidence, carbide=0.40)
    assert node.verdict == "accept" and node.decided_by == "measurement"
    assert node.decision_rule["advisory"] is True
    assert "disagrees (reject) but is not confident" in node.rationale
    assert "advisory only" in node.rationale


def test_measurement_led_keeps_a_contradiction_advisory_when_applicability_is_unmeasured():
    node = judged(assessment("measurement-led"), vlr(-3.0, -3.0, applicability=None), 0.40)
    assert node.verdict == "accept" and node.decided_by == "measurement"
    assert "not shown applicable" in node.rationale


def test_measurement_led_ignores_evidence_outside_the_range_of_the_references():
    far = replace(LIKE_THE_REFERENCES, ratio=LIKE_THE_REFERENCES.limit * 3)
    outside = [replace(e, z=None, note="outside the range of the references")
               for e in vlr(-3.0, -3.0, applicability=far)]
    node = judged(assessment("measurement-led"), outside, carbide=0.40)
    assert node.verdict == "accept" and node.score is None
    assert node.rationale.count("outside the range of the references") == 2


def test_measurement_led_measurements_decide_when_the_model_agrees_or_is_undecided():
    a = assessment("measurement-led")
    agreeing = judged(a, vlr(-3.0, -3.0), carbide=0.20)
    assert agreeing.verdict == "reject" and "agrees" in agreeing.rationale
    undecided = judged(a, vlr(0.1, -0.1), carbide=0.40)  # fused 0.0: in the review band
    assert undecided.verdict == "accept" and undecided.decided_by == "measurement"
    borderline = judged(a, vlr(-3.0, -3.0), carbide=0.305)  # within the uncertainty
    assert borderline.verdict == "review" and borderline.decided_by == "measurement"


def test_a_confident_accept_against_rejecting_measurements_is_a_disagreement_too():
    node = judged(assessment("measurement-led"), vlr(2.0, 2.0), carbide=0.20)
    assert node.verdict == "review" and node.decided_by == "disagreement"


def test_without_measurement_rules_the_vision_language_evidence_decides():
    a = assessment("measurement-led", measured=False)
    node = judged(a, vlr(-3.0, -1.0), carbide=None)
    assert node.verdict == "reject" and node.decided_by == "vision-language"


def test_the_confidence_margin_is_the_rules_choice():
    strict = assessment("measurement-led", margin=0.5)
    assert judged(strict, vlr(-0.5, -0.5), carbide=0.40).verdict == "review"
    lenient = assessment("measurement-led", margin=5.0)
    assert judged(lenient, vlr(-1.5, -1.5), carbide=0.40).verdict == "accept"


def test_the_report_names_the_mode_what_decided_and_advisory_evidence():
    node = judged(assessment("measurement-led"), vlr(-0.5, -0.5), carbide=0.40).to_dict()
    phrases = " | ".join(decision_rule(node))
    assert "evidence combined: measurement-led" in phrases
    assert "decided by: the measurement rules" in phrases
    assert "advisory only" in phrases
    assert node["combine"] == "measurement-led" and node["decided_by"] == "measurement"


# --- the rules option --------------------------------------------------------------------


@pytest.fixture
def ws(tmp_path: Path):
    workspace = new_workspace(tmp_path / "ws")
    write_carbide_assessment(workspace)
    tree = workspace.rules_dir / "tree.toml"  # start from no default: each test sets its own
    tree.write_text(tree.read_text().replace('[defaults.decision]\ncombine = "measurement-led"\n',
                                             ""))
    return workspace


def add_to(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_assessments_inherit_the_tree_default_unless_they_set_their_own(ws):
    tree = ws.rules_dir / "tree.toml"
    add_to(tree, '\n[defaults.decision]\ncombine = "measurement-led"\nconfidence_margin = 3.0\n')
    decision = compile_rules(ws.rules_dir).assessments["EA-5"].decision
    assert (decision.combine, decision.confidence_margin) == ("measurement-led", 3.0)
    add_to(ws.rules_dir / "assessments" / "EA-5.toml", 'combine = "strictest"\n')
    decision = compile_rules(ws.rules_dir).assessments["EA-5"].decision
    assert (decision.combine, decision.confidence_margin) == ("strictest", 3.0)


def test_without_a_default_an_assessment_combines_strictest(ws):
    decision = compile_rules(ws.rules_dir).assessments["EA-5"].decision
    assert decision.combine == "strictest"
    assert decision.confidence_margin == DEFAULT_CONFIDENCE_MARGIN


@pytest.mark.parametrize(
    ("file", "text", "problem"),
    [
        ("assessments/EA-5.toml", 'combine = "loudest"\n',
         "rules/assessments/EA-5.toml [decision]: unknown combine 'loudest'; expected one of "
         "strictest, measurement-led"),
        ("tree.toml", '\n[defaults.decision]\ncombine = "mean"\n',
         "rules/tree.toml [defaults.decision]: unknown combine 'mean'"),
        ("tree.toml", '\n[defaults.decision]\nthreshold = 1.0\n',
         "rules/tree.toml [defaults.decision]: unknown field(s) threshold"),
        ("assessments/EA-5.toml", "confidence_margin = -1\n",
         "rules/assessments/EA-5.toml [decision]: `confidence_margin` must not be negative"),
    ],
)
def test_a_bad_combination_is_one_line_naming_the_file(ws, file, text, problem):
    add_to(ws.rules_dir / file, text)
    with pytest.raises(RulesError) as caught:
        compile_rules(ws.rules_dir)
    message = str(caught.value)
    assert problem in message and "\n" not in message


def test_a_snapshot_stored_before_combination_modes_reads_back_as_strictest(ws):
    data = compile_rules(ws.rules_dir).to_dict()
    for a in data["assessments"].values():
        del a["decision"]["combine"], a["decision"]["confidence_margin"]
    decision = Ruleset.from_dict(data).assessments["EA-5"].decision
    assert decision.combine == "strictest"
