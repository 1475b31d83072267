"""The detection tree: built from a ruleset as a networkx DiGraph and walked bottom-up.

Gates combine their children's verdicts (all / any / k_of_n / consensus); preconditions
skip a node and everything under it with verdict `not_assessed` and a stated reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace

import networkx as nx

from engine.decision_rule import assessment_rule, gate_rule
from engine.results import NodeResult
from kb.rules import Assessment, Gate, Ruleset, dependency_graph
from kb.vocabulary import Verdict

NOT_ASSESSED = Verdict.NOT_ASSESSED

def build_tree(ruleset: Ruleset) -> nx.DiGraph:
    """root -> gates -> assessments -> evidence -> items, edges pointing from parent to child."""
    tree = nx.DiGraph()
    for gate in ruleset.gates.values():
        tree.add_node(
            gate.key,
            kind="gate",
            label=gate.name,
            rule=_rule_label(gate),
            preconditions=gate.preconditions,
        )
    for gate in ruleset.gates.values():
        if gate.parent:
            tree.add_edge(gate.parent, gate.key)
    for a in ruleset.assessments.values():
        tree.add_node(a.key, kind="assessment", label=a.name, preconditions=a.preconditions)
        tree.add_edge(a.parent, a.key)
        for role, items in (("text", a.prompts), ("image", a.references)):
            if not items:
                continue
            evidence = f"{a.key}/{role}"
            tree.add_node(evidence, kind="evidence", label=f"{role} evidence ({len(items)} items)")
            tree.add_edge(a.key, evidence)
            for i, item in enumerate(items):
                label = item.text if role == "text" else item.path
                node = f"{evidence}/{i}"
                tree.add_node(node, kind="item", label=f"{item.polarity}: {label}")
                tree.add_edge(evidence, node)
        for m in a.measurements:
            node = f"{a.key}/measurement/{m.quantity}"
            bound = f"{m.quantity} {m.op} {m.limit:g} {m.unit}"
            if m.uncertainty:
                bound += f" (±{m.uncertainty:g})"
            tree.add_node(node, kind="evidence", label=f"measurement {bound}")
            tree.add_edge(a.key, node)
    return tree


def _rule_label(gate: Gate) -> str:
    if gate.rule == "k_of_n":
        return f"{gate.k} of n"
    if gate.rule == "consensus":
        return f"consensus (quorum {gate.quorum:.2f})"
    return gate.rule


def combine_gate(gate: Gate, verdicts: Sequence[str]) -> tuple[str, str]:
    """A gate's verdict from its children's, and a sentence saying how it was reached."""
    counts = Counter(v for v in verdicts if v != NOT_ASSESSED)
    n = sum(counts.values())
    accept, reject, review = counts["accept"], counts["reject"], counts["review"]
    tally = f"{accept} accept, {reject} reject, {review} review of {n} assessed children"
    if n == 0:
        return NOT_ASSESSED, "no child was assessed"
    if gate.rule == "all":
        verdict = "reject" if reject else "review" if review else "accept"
        return verdict, f"all children must accept: {tally}"
    if gate.rule == "any":
        verdict = "accept" if accept else "review" if review else "reject"
        return verdict, f"one accepting child suffices: {tally}"
    if gate.rule == "k_of_n":
        k = gate.k or 1
        verdict = "accept" if accept >= k else "reject" if accept + review < k else "review"
        return verdict, f"{k} accepting children needed: {tally}"
    quorum = gate.quorum or 2 / 3
    if accept >= quorum * n:
        verdict = "accept"
    elif reject >= quorum * n:
        verdict = "reject"
    else:
        verdict = "review"
    return verdict, f"a {quorum:.0%} consensus needed: {tally}"


def _skip_reason(ruleset: Ruleset, key: str, verdicts: dict[str, str]) -> str | None:
    """Why a node is not judged: an unmet precondition of its own or of a gate above it."""
    current: str | None = key
    while current is not None:
        node: Gate | Assessment = ruleset.gates.get(current) or ruleset.assessments[current]
        for pre in node.preconditions:
            actual = verdicts[pre.node]
            if actual not in pre.verdicts:
                where = "" if current == key else f" (precondition of {current})"
                return f"{pre.reason}{where}: {pre.node} is {actual}"
        current = node.parent
    return None


def walk(ruleset: Ruleset, judge: Callable[[Assessment], NodeResult]) -> list[NodeResult]:
    """Judge every node once, children and preconditions first; the root comes last."""
    results: dict[str, NodeResult] = {}
    verdicts: dict[str, str] = {}
    for key in nx.topological_sort(dependency_graph(ruleset)):
        reason = _skip_reason(ruleset, key, verdicts)
        if key in ruleset.assessments:
            a = ruleset.assessments[key]
            result = (
                _with_reason(judge(a))
                if reason is None
                else replace(
                    _skipped(key, "assessment", a.parent, a.name, reason, a.criterion),
                    decision_rule=assessment_rule(a, a.decision),
                    combine=a.decision.combine,
                )
            )
        else:
            gate = ruleset.gates[key]
            if reason is not None:
                result = _skipped(key, "gate", gate.parent, gate.name, reason)
            else:
                children = ruleset.children(key)
                verdict, how = combine_gate(gate, [verdicts[c] for c in children])
                result = NodeResult(
                    key=key,
                    kind="gate",
                    parent=gate.parent,
                    name=gate.name,
                    verdict=verdict,
                    rationale=f"{gate.name}: {verdict}; {how}.",
                    reason=how if verdict == NOT_ASSESSED else None,
                )
            result = replace(
                result, rule=gate.rule, k=gate.k, quorum=gate.quorum, decision_rule=gate_rule(gate)
            )
        results[key] = result
        verdicts[key] = result.verdict
    return [results[k] for k in _display_order(ruleset)]


def held_for_review(
    ruleset: Ruleset, nodes: Sequence[NodeResult], held: set[str], reason: str
) -> list[NodeResult]:
    """The root, and every gate above an assessment in held, give review with the reason.

    For a sample that cannot be judged as the rules intend (not a phase map): a gate would
    otherwise decide on the children left, and the overall verdict must never be a
    confident accept or reject.
    """
    above = {ruleset.root}
    for key in held:
        parent = ruleset.assessments[key].parent if key in ruleset.assessments else None
        while parent is not None:
            above.add(parent)
            parent = ruleset.gates[parent].parent
    out = []
    for node in nodes:
        if node.key in above and node.kind == "gate":
            node = replace(
                node,
                verdict="review",
                rationale=f"{node.name}: review; {reason}, so a person must judge it.",
                reason=None,
            )
        out.append(node)
    return out


def _skipped(
    key: str, kind: str, parent: str | None, name: str, reason: str, criterion: str | None = None
) -> NodeResult:
    return NodeResult(
        key=key,
        kind=kind,
        parent=parent,
        name=name,
        verdict=NOT_ASSESSED,
        rationale=f"{name}: not assessed; {reason}.",
        criterion=criterion,
        reason=reason,
    )


def _with_reason(result: NodeResult) -> NodeResult:
    """A judged assessment left not_assessed says why: the notes of its unusable evidence."""
    if result.verdict != NOT_ASSESSED or result.reason:
        return result
    notes = [n for n in (getattr(e, "note", None) for e in result.evidence) if n]
    return replace(result, reason="; ".join(notes) or "no evidence could be used")


def _display_order(ruleset: Ruleset) -> list[str]:
    """Depth-first from the root, the order a person reads the tree in."""
    ordered: list[str] = []
    stack = [ruleset.root]
    while stack:
        key = stack.pop()
        ordered.append(key)
        if key in ruleset.gates:
            stack.extend(reversed(ruleset.children(key)))
    return ordered


def tree_document(ruleset: Ruleset) -> dict[str, object]:
    """The tree as JSON (`kb tree --json`, GET /api/tree): every node and its parent."""
    graph = build_tree(ruleset)
    nodes = [
        {
            "key": key,
            "kind": data["kind"],
            "label": data["label"],
            "parent": next(iter(graph.predecessors(key)), None),
        }
        for key, data in graph.nodes(data=True)
    ]
    return {"root": ruleset.root, "hash": ruleset.content_hash, "nodes": nodes}
