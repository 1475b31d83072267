"""Gates, preconditions and the order the detection tree is walked in."""

import pytest

from engine.results import NodeResult
from engine.tree import build_tree, combine_gate, walk
from kb.rules import Assessment, Gate, Precondition, Ruleset


def gate(rule: str, **kw) -> Gate:
    return Gate(key="g", name="G", rule=rule, parent=None, **kw)


@pytest.mark.parametrize(
    ("rule", "kw", "children", "expected"),
    [
        ("all", {}, ["accept", "accept"], "accept"),
        ("all", {}, ["accept", "review"], "review"),
        ("all", {}, ["review", "reject"], "reject"),
        ("all", {}, ["accept", "not_assessed"], "accept"),
        ("all", {}, ["not_assessed", "not_assessed"], "not_assessed"),
        ("any", {}, ["reject", "accept"], "accept"),
        ("any", {}, ["reject", "review"], "review"),
        ("any", {}, ["reject", "reject"], "reject"),
        ("k_of_n", {"k": 2}, ["accept", "accept", "reject"], "accept"),
        ("k_of_n", {"k": 2}, ["accept", "review", "reject"], "review"),
        ("k_of_n", {"k": 2}, ["accept", "reject", "reject"], "reject"),
        ("consensus", {"quorum": 2 / 3}, ["accept", "accept", "reject"], "accept"),
        ("consensus", {"quorum": 2 / 3}, ["reject", "reject", "accept"], "reject"),
        ("consensus", {"quorum": 0.75}, ["accept", "accept", "reject"], "review"),
    ],
)
def test_gate_rules(rule, kw, children, expected):
    verdict, explanation = combine_gate(gate(rule, **kw), children)
    assert verdict == expected
    assert explanation


def _assessment(key: str, parent: str, preconditions=()) -> Assessment:
    return Assessment(
        key=key,
        name=key,
        criterion="c",
        parent=parent,
        source=f"{key}.toml",
        preconditions=tuple(preconditions),
    )


@pytest.fixture
def ruleset() -> Ruleset:
    needs_bead = Precondition("EA-3", ("accept",), "no distinct bead, nothing to judge")
    gates = {
        "root": Gate("root", "Root", "all", None),
        "geometry": Gate("geometry", "Geometry", "all", "root"),
        "carbides": Gate("carbides", "Carbides", "all", "root", preconditions=(needs_bead,)),
    }
    assessments = {
        "EA-1": _assessment("EA-1", "geometry"),
        "EA-3": _assessment("EA-3", "geometry"),
        "EA-5": _assessment("EA-5", "carbides"),
        "EA-6": _assessment("EA-6", "carbides"),
    }
    return Ruleset(root="root", gates=gates, assessments=assessments)


def judged_by(verdicts: dict[str, str]):
    seen = []

    def judge(a: Assessment) -> NodeResult:
        seen.append(a.key)
        return NodeResult(
            key=a.key,
            kind="assessment",
            parent=a.parent,
            name=a.name,
            verdict=verdicts[a.key],
            rationale="r",
        )

    return judge, seen


def test_precondition_skips_the_gate_and_everything_under_it(ruleset):
    judge, seen = judged_by(
        {"EA-1": "accept", "EA-3": "reject", "EA-5": "accept", "EA-6": "accept"}
    )
    nodes = {n.key: n for n in walk(ruleset, judge)}
    assert nodes["carbides"].verdict == "not_assessed"
    assert nodes["EA-5"].verdict == "not_assessed" and nodes["EA-6"].verdict == "not_assessed"
    assert (
        "no distinct bead" in nodes["EA-5"].rationale
        and "EA-3 is reject" in nodes["EA-5"].rationale
    )
    assert "EA-5" not in seen and "EA-6" not in seen  # skipped nodes are never judged
    assert nodes["root"].verdict == "reject"


def test_met_precondition_judges_the_subtree(ruleset):
    judge, seen = judged_by(
        {"EA-1": "accept", "EA-3": "accept", "EA-5": "accept", "EA-6": "review"}
    )
    nodes = walk(ruleset, judge)
    by_key = {n.key: n for n in nodes}
    assert by_key["carbides"].verdict == "review"
    assert by_key["root"].verdict == "review"
    assert [n.key for n in nodes] == [
        "root",
        "carbides",
        "EA-5",
        "EA-6",
        "geometry",
        "EA-1",
        "EA-3",
    ]
    assert sorted(seen) == ["EA-1", "EA-3", "EA-5", "EA-6"]


def test_display_tree_has_evidence_and_items():
    from kb.rules import MeasurementRule, Prompt

    a = Assessment(
        key="EA-5",
        name="Carbides",
        criterion="c",
        parent="root",
        source="x",
        prompts=(Prompt("many", "positive"), Prompt("few", "negative")),
        measurements=(MeasurementRule("carbide_fraction", ">=", 0.3, "fraction"),),
    )
    graph = build_tree(Ruleset("root", {"root": Gate("root", "Root", "all", None)}, {"EA-5": a}))
    assert graph.nodes["EA-5/text"]["kind"] == "evidence"
    assert graph.nodes["EA-5/text/0"]["label"] == "positive: many"
    assert (
        "carbide_fraction >= 0.3 fraction"
        in graph.nodes["EA-5/measurement/carbide_fraction"]["label"]
    )
    assert list(graph.successors("root")) == ["EA-5"]
