"""The rules compiler: TOML files under rules/ -> one immutable, content-hashed `Ruleset`.

Experts edit rules/ in git; this module reads it strictly (an unknown or missing field is an
error naming the file) so that what the knowledge base stores is exactly what was reviewed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
from PIL import Image, UnidentifiedImageError

from kb.config import ROLES
from kb.errors import RulesError
from kb.vocabulary import COMBINATIONS, COMPARISONS, FUSIONS, VERDICTS

TREE_FILE = "tree.toml"
ASSESSMENTS_DIR = "assessments"
REFERENCES_DIR = "references"
POLARITIES = ("positive", "negative")
GATE_RULES = ("all", "any", "k_of_n", "consensus")
ROLE_ITEMS = {"text": "prompts", "image": "reference images", "local": "reference images"}
# Defaults of an assessment's [local] table (docs/rules.md, "Local evidence").
LOCAL_QUANTILE = 0.999
LOCAL_CORESET = 2000
# How far (in z units) a fused vision-language score must lie from its threshold before, in
# measurement-led combination, it may contradict the measurements: two standard deviations of
# one role's reference spread, i.e. about one for each of two agreeing roles.
DEFAULT_CONFIDENCE_MARGIN = 2.0
# What [defaults.decision] of tree.toml may set for every assessment that does not set it.
TREE_DEFAULTS = ("combine", "confidence_margin")


@dataclass(frozen=True)
class Precondition:
    """Judge a node only if another node reached one of the given verdicts."""

    node: str
    verdicts: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Gate:
    """An inner node of the detection tree combining its children's verdicts."""

    key: str
    name: str
    rule: str
    parent: str | None
    k: int | None = None
    quorum: float | None = None
    description: str = ""
    preconditions: tuple[Precondition, ...] = ()
    position: int = 0  # where tree.toml lists it: sibling gates are shown in that order


@dataclass(frozen=True)
class Prompt:
    text: str
    polarity: str
    variant: str = "default"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Reference:
    path: str  # POSIX path relative to rules/
    polarity: str
    sha256: str


@dataclass(frozen=True)
class MeasurementRule:
    quantity: str
    op: str
    limit: float
    unit: str
    uncertainty: float = 0.0


@dataclass(frozen=True)
class LocalRule:
    """[local] of an assessment: compare patch features with a bank of its positive references.

    The image score is the map's `quantile`, or the mean of its `top_k` highest values when
    that is set; `coreset` caps the bank's patches. With `fuse` false its z-score is
    recorded and its map shown, but the assessment's fused score leaves it out.
    """

    quantile: float = LOCAL_QUANTILE
    top_k: int | None = None
    coreset: int = LOCAL_CORESET
    fuse: bool = True


@dataclass(frozen=True)
class Decision:
    fusion: str = "zsum"
    weights: dict[str, float] = field(default_factory=lambda: {role: 1.0 for role in ROLES})
    threshold: float = 0.0
    review_margin: float = 0.0
    # What the rules leave out ("threshold", "review_margin"): chosen from the references'
    # leave-one-out scores when there are enough of them, else the value above.
    from_references: tuple[str, ...] = ()
    combine: str = "strictest"  # a word of COMBINATIONS: how the kinds of evidence combine
    # measurement-led: |score - threshold| at least this, or the disagreement is advisory
    confidence_margin: float = DEFAULT_CONFIDENCE_MARGIN


@dataclass(frozen=True)
class Assessment:
    """One expert assessment: the criterion in words and the evidence that judges it."""

    key: str
    name: str
    criterion: str
    parent: str
    source: str  # file it came from, relative to rules/, for error messages
    prompts: tuple[Prompt, ...] = ()
    references: tuple[Reference, ...] = ()
    measurements: tuple[MeasurementRule, ...] = ()
    decision: Decision = field(default_factory=Decision)
    preconditions: tuple[Precondition, ...] = ()
    local: LocalRule | None = None  # None: no local evidence (opt-in per assessment)

    def prompts_of(self, polarity: str) -> list[Prompt]:
        return [p for p in self.prompts if p.polarity == polarity]

    def references_of(self, polarity: str) -> list[Reference]:
        return [r for r in self.references if r.polarity == polarity]

    def items_of(self, role: str) -> tuple[Prompt, ...] | tuple[Reference, ...]:
        """What a role compares the sample with: prompts for `text`, references for `image`,
        the positive references for `local` when the assessment opts in."""
        if role == "local":
            return tuple(self.references_of("positive")) if self.local is not None else ()
        return self.prompts if role == "text" else self.references

    def one_sided(self, role: str) -> str | None:
        """Why the role's items cannot give a net similarity yet (references accumulate)."""
        items = self.items_of(role)
        if role == "local":
            return None if len(items) >= 1 or self.local is None else (
                "local evidence needs at least one positive reference image")
        counts = {p: sum(i.polarity == p for i in items) for p in POLARITIES}
        if items and 0 in counts.values():
            return (
                f"a net similarity needs positive and negative {ROLE_ITEMS[role]} "
                f"(has {counts['positive']} positive, {counts['negative']} negative)"
            )
        return None


@dataclass(frozen=True)
class Ruleset:
    """A compiled rules/ folder; `content_hash` identifies it regardless of formatting."""

    root: str
    gates: dict[str, Gate]
    assessments: dict[str, Assessment]

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "gates": {k: asdict(g) for k, g in sorted(self.gates.items())},
            "assessments": {k: _assessment_dict(a) for k, a in sorted(self.assessments.items())},
        }

    @property
    def content_hash(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ruleset:
        gates = {
            k: Gate(**{**g, "preconditions": _preconditions_from(g["preconditions"])})
            for k, g in data["gates"].items()
        }
        assessments = {}
        for k, a in data["assessments"].items():
            assessments[k] = Assessment(
                **{
                    **a,
                    "prompts": tuple(Prompt(**p) for p in a["prompts"]),
                    "references": tuple(Reference(**r) for r in a["references"]),
                    "measurements": tuple(MeasurementRule(**m) for m in a["measurements"]),
                    "decision": _decision_of(a["decision"]),
                    "preconditions": _preconditions_from(a["preconditions"]),
                    "local": LocalRule(**a["local"]) if a.get("local") else None,
                }
            )
        return cls(root=data["root"], gates=gates, assessments=assessments)

    def children(self, key: str) -> list[str]:
        """Direct children of a gate: gates in tree.toml order, then assessments by key."""
        below = [g for g in self.gates.values() if g.parent == key]
        gates = [g.key for g in sorted(below, key=lambda g: (g.position, g.key))]
        leaves = sorted(a.key for a in self.assessments.values() if a.parent == key)
        return gates + leaves


def _assessment_dict(assessment: Assessment) -> dict[str, Any]:
    """asdict, without `local` where it is not set: a ruleset from before local evidence
    keeps its content hash."""
    data = asdict(assessment)
    if data.get("local") is None:
        data.pop("local", None)
        if data["decision"]["weights"].get("local") == 1.0:
            del data["decision"]["weights"]["local"]
    return data


def _preconditions_from(items: list[dict[str, Any]]) -> tuple[Precondition, ...]:
    return tuple(
        Precondition(node=p["node"], verdicts=tuple(p["verdicts"]), reason=p["reason"])
        for p in items
    )


# --- reading TOML strictly -------------------------------------------------------------


class _Table:
    """A TOML table read with bookkeeping, so every error names the file and the field."""

    def __init__(self, data: dict[str, Any], file: str, where: str = "") -> None:
        self.data, self.file, self.where = data, file, where

    def fail(self, problem: str) -> RulesError:
        place = f" [{self.where}]" if self.where else ""
        return RulesError(f"rules/{self.file}{place}: {problem}")

    def check_keys(self, required: set[str], optional: set[str]) -> None:
        unknown = set(self.data) - required - optional
        if unknown:
            allowed = ", ".join(sorted(required | optional))
            raise self.fail(f"unknown field(s) {', '.join(sorted(unknown))}; allowed: {allowed}")
        missing = required - set(self.data)
        if missing:
            raise self.fail(f"missing required field(s) {', '.join(sorted(missing))}")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"`{key}` must be a non-empty string")
        return value.strip()

    def number(self, key: str, default: float | None = None) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"`{key}` must be a number, got {value!r}")
        if not math.isfinite(value):
            raise self.fail(f"`{key}` must be a finite number, got {value!r}")
        return float(value)

    def integer(self, key: str) -> int:
        """A whole number; 2.0 is taken as 2, 2.5 is refused rather than rounded."""
        value = self.data.get(key)
        whole = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and float(value).is_integer()
        )
        if not whole:
            raise self.fail(f"`{key}` must be an integer, got {value!r}")
        return int(value)  # type: ignore[arg-type]

    def strings(self, key: str) -> list[str]:
        value = self.data.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(f"`{key}` must be a list of non-empty strings")
        return [v.strip() for v in value]

    def table(self, key: str) -> _Table:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(f"`{key}` must be a table")
        where = f"{self.where}.{key}" if self.where else key
        return _Table(value, self.file, where)

    def tables(self, key: str) -> list[_Table]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(f"`{key}` must be an array of tables ([[{key}]])")
        return [_Table(v, self.file, f"{key}[{i}]") for i, v in enumerate(value)]


def _read_toml(path: Path, rules_dir: Path) -> _Table:
    name = path.relative_to(rules_dir).as_posix()
    try:
        return _Table(tomllib.loads(path.read_text(encoding="utf-8")), name)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"rules/{name}: not valid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"rules/{name}: cannot read: {exc}") from exc


def _read_preconditions(table: _Table) -> tuple[Precondition, ...]:
    result = []
    for item in table.tables("preconditions"):
        item.check_keys({"node"}, {"verdict", "reason"})
        verdicts = item.strings("verdict") if "verdict" in item.data else ["accept"]
        bad = [v for v in verdicts if v not in VERDICTS]
        if bad:
            raise item.fail(f"unknown verdict(s) {bad}; expected one of {VERDICTS}")
        node = item.text("node")
        default_reason = f"requires {node} to be {' or '.join(verdicts)}"
        result.append(Precondition(node, tuple(verdicts), item.text("reason", default_reason)))
    return tuple(result)


def _read_tree(rules_dir: Path) -> _Table:
    path = rules_dir / TREE_FILE
    if not path.is_file():
        raise RulesError(
            f"rules/{TREE_FILE}: missing; every workspace needs a tree with a root gate"
        )
    doc = _read_toml(path, rules_dir)
    doc.check_keys({"gates"}, {"defaults"})
    return doc


def _read_defaults(doc: _Table) -> dict[str, Any]:
    """[defaults.decision] of tree.toml: what every assessment inherits unless it says."""
    defaults = doc.table("defaults")
    defaults.check_keys(set(), {"decision"})
    decision = defaults.table("decision")
    decision.check_keys(set(), set(TREE_DEFAULTS))
    return {
        **({"combine": _combine(decision)} if "combine" in decision.data else {}),
        **(
            {"confidence_margin": _confidence_margin(decision)}
            if "confidence_margin" in decision.data
            else {}
        ),
    }


def _combine(t: _Table, default: str = "strictest") -> str:
    combine = t.text("combine", default)
    if combine not in COMBINATIONS:
        raise t.fail(
            f"unknown combine {combine!r}; expected one of {', '.join(COMBINATIONS)}"
        )
    return combine


def _confidence_margin(t: _Table, default: float = DEFAULT_CONFIDENCE_MARGIN) -> float:
    margin = t.number("confidence_margin", default)
    if margin < 0:
        raise t.fail("`confidence_margin` must not be negative")
    return margin


def _read_gates(doc: _Table) -> dict[str, Gate]:
    gates_table = doc.table("gates")
    gates: dict[str, Gate] = {}
    for position, key in enumerate(gates_table.data):
        t = gates_table.table(key)
        t.check_keys({"rule"}, {"name", "parent", "k", "quorum", "description", "preconditions"})
        rule = t.text("rule")
        if rule not in GATE_RULES:
            raise t.fail(f"unknown rule {rule!r}; expected one of {GATE_RULES}")
        k = t.integer("k") if "k" in t.data else None
        if rule == "k_of_n" and (k is None or k < 1):
            raise t.fail("rule k_of_n needs `k`, a positive integer")
        quorum = t.number("quorum") if "quorum" in t.data else None
        if rule == "consensus":
            quorum = 2 / 3 if quorum is None else quorum
            if not 0.5 < quorum <= 1:
                raise t.fail(f"`quorum` must be in (0.5, 1], got {quorum}")
        gates[key] = Gate(
            key=key,
            name=t.text("name", key),
            rule=rule,
            parent=t.text("parent") if "parent" in t.data else None,
            k=k,
            quorum=quorum,
            description=str(t.data.get("description", "")).strip(),
            preconditions=_read_preconditions(t),
            position=position,
        )
    return gates


def _read_prompts(doc: _Table) -> tuple[Prompt, ...]:
    section = doc.table("prompts")
    section.check_keys(set(), {"positive", "negative", "variants"})
    sets = [("default", section)]
    variants = section.table("variants")
    for name in variants.data:
        variant = variants.table(name)
        variant.check_keys(set(), {"positive", "negative"})
        sets.append((name, variant))
    prompts = [
        Prompt(text, polarity, variant)
        for variant, table in sets
        for polarity in POLARITIES
        for text in table.strings(polarity)
    ]
    polarities = {p.polarity for p in prompts}
    if prompts and polarities != set(POLARITIES):
        raise section.fail("prompts need both positive and negative texts for a net similarity")
    return tuple(prompts)


def _image_sha256(path: Path, shown: str, table: _Table) -> str:
    try:
        data = path.read_bytes()
        with Image.open(path) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise table.fail(f"reference image {shown} is unreadable: {exc}") from exc
    return hashlib.sha256(data).hexdigest()


def _read_references(doc: _Table, key: str, rules_dir: Path) -> tuple[Reference, ...]:
    explicit = "references" in doc.data
    section = doc.table("references")
    section.check_keys(set(), set(POLARITIES))
    references = []
    for polarity in POLARITIES:
        patterns = (
            section.strings(polarity) if explicit else [f"{REFERENCES_DIR}/{key}/{polarity}/*"]
        )
        for pattern in patterns:
            if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
                raise section.fail(f"reference glob {pattern!r} must stay inside rules/")
            matches = sorted(
                p
                for p in glob.glob(str(rules_dir / pattern), recursive=True)
                if Path(p).is_file() and not Path(p).name.startswith(".")
            )
            if explicit and not matches:
                raise section.fail(f"{polarity} reference glob {pattern!r} matches no file")
            for match in matches:
                rel = Path(match).relative_to(rules_dir).as_posix()
                references.append(
                    Reference(rel, polarity, _image_sha256(Path(match), rel, section))
                )
    return tuple(references)


def _read_measurements(doc: _Table) -> tuple[MeasurementRule, ...]:
    rules = []
    for item in doc.tables("measurements"):
        item.check_keys({"quantity", "op", "limit", "unit"}, {"uncertainty"})
        op = item.text("op")
        if op not in COMPARISONS:
            raise item.fail(f"unknown op {op!r}; expected one of {tuple(COMPARISONS)}")
        uncertainty = item.number("uncertainty", 0.0)
        if uncertainty < 0:
            raise item.fail("`uncertainty` must not be negative")
        rules.append(
            MeasurementRule(
                item.text("quantity"), op, item.number("limit"), item.text("unit"), uncertainty
            )
        )
    return tuple(rules)


def _read_local(doc: _Table) -> LocalRule | None:
    """[local]: enabled (required), quantile in (0, 1], top_k >= 1, coreset >= 16, fuse."""
    if "local" not in doc.data:
        return None
    t = doc.table("local")
    t.check_keys({"enabled"}, {"quantile", "top_k", "coreset", "fuse"})
    enabled, fuse = t.data["enabled"], t.data.get("fuse", True)
    for key, value in (("enabled", enabled), ("fuse", fuse)):
        if not isinstance(value, bool):
            raise t.fail(f"`{key}` must be true or false, got {value!r}")
    if not enabled:
        return None
    quantile = t.number("quantile", LOCAL_QUANTILE)
    if not 0.0 < quantile <= 1.0:
        raise t.fail(f"`quantile` must be in (0, 1], got {quantile}")
    top_k = t.integer("top_k") if "top_k" in t.data else None
    if top_k is not None and top_k < 1:
        raise t.fail(f"`top_k` must be a positive integer, got {top_k}")
    size = t.integer("coreset") if "coreset" in t.data else LOCAL_CORESET
    if size < 16:
        raise t.fail(f"`coreset` must be at least 16 patches, got {size}")
    return LocalRule(quantile, top_k, size, fuse)


def _decision_of(data: dict[str, Any]) -> Decision:
    """A stored decision (JSON lists back into tuples; older snapshots lack newer fields)."""
    weights = {role: 1.0 for role in ROLES} | dict(data.get("weights", {}))  # older: fewer roles
    return Decision(**{**data, "weights": weights,
                       "from_references": tuple(data.get("from_references", ()))})


def _read_decision(doc: _Table, defaults: dict[str, Any]) -> Decision:
    t = doc.table("decision")
    t.check_keys(set(), {"fusion", "weights", "threshold", "review_margin", *TREE_DEFAULTS})
    fusion = t.text("fusion", "zsum")
    if fusion not in FUSIONS:
        raise t.fail(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")
    weights_table = t.table("weights")
    unknown_roles = set(weights_table.data) - set(ROLES)
    if unknown_roles:
        raise weights_table.fail(f"unknown role(s) {sorted(unknown_roles)}; roles are {ROLES}")
    weights = {role: weights_table.number(role, 1.0) for role in ROLES}
    if any(w < 0 for w in weights.values()):
        raise weights_table.fail("weights must not be negative")
    margin = t.number("review_margin", 0.0)
    if margin < 0:
        raise t.fail("`review_margin` must not be negative")
    unset = tuple(name for name in ("threshold", "review_margin") if name not in t.data)
    return Decision(
        fusion,
        weights,
        t.number("threshold", 0.0),
        margin,
        unset,
        combine=_combine(t, defaults.get("combine", "strictest")),
        confidence_margin=_confidence_margin(
            t, defaults.get("confidence_margin", DEFAULT_CONFIDENCE_MARGIN)
        ),
    )


def _read_assessment(path: Path, rules_dir: Path, defaults: dict[str, Any]) -> Assessment:
    doc = _read_toml(path, rules_dir)
    doc.check_keys(
        {"key", "name", "criterion", "parent"},
        {"prompts", "references", "measurements", "decision", "preconditions", "local"},
    )
    key = doc.text("key")
    if key != path.stem:
        raise doc.fail(f"key {key!r} must match the file name ({path.stem}.toml)")
    assessment = Assessment(
        key=key,
        name=doc.text("name"),
        criterion=doc.text("criterion"),
        parent=doc.text("parent"),
        source=doc.file,
        prompts=_read_prompts(doc),
        references=_read_references(doc, key, rules_dir),
        measurements=_read_measurements(doc),
        decision=_read_decision(doc, defaults),
        preconditions=_read_preconditions(doc),
        local=_read_local(doc),
    )
    if assessment.local is not None and not assessment.references_of("positive"):
        raise doc.fail("[local] needs at least one positive reference image (references/"
                       f"{key}/positive/)")
    if not (assessment.prompts or assessment.references or assessment.measurements):
        raise doc.fail("assessment has no evidence: add prompts, reference images or measurements")
    return assessment


def compile_rules(rules_dir: Path) -> Ruleset:
    """Read and validate rules/; raises RulesError naming the file and the problem."""
    if not rules_dir.is_dir():
        raise RulesError(f"{rules_dir}: no rules/ folder; create one with `kb init`")
    tree = _read_tree(rules_dir)
    gates = _read_gates(tree)
    defaults = _read_defaults(tree)
    assessments: dict[str, Assessment] = {}
    for path in _assessment_files(rules_dir / ASSESSMENTS_DIR):
        assessment = _read_assessment(path, rules_dir, defaults)
        if assessment.key in gates:
            raise RulesError(f"rules/{assessment.source}: key {assessment.key!r} is also a gate")
        assessments[assessment.key] = assessment
    ruleset = Ruleset(root=_find_root(gates), gates=gates, assessments=assessments)
    check_structure(ruleset)
    return ruleset


def _assessment_files(folder: Path) -> list[Path]:
    """rules/assessments/*.toml; a file ending in .TOML (any case but lower) is refused by
    name rather than silently ignored, so that one spelling holds in git and on every file
    system, and EA-5.toml and EA-5.TOML can never both claim EA-5.
    """
    if not folder.is_dir():
        return []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() == ".toml" and path.suffix != ".toml":
            raise RulesError(
                f"rules/{ASSESSMENTS_DIR}/{path.name}: assessment files must end in "
                f"lower-case .toml; rename it to {path.stem}.toml"
            )
    return sorted(folder.glob("*.toml"))


def _find_root(gates: dict[str, Gate]) -> str:
    roots = [g.key for g in gates.values() if g.parent is None]
    if len(roots) != 1:
        found = ", ".join(roots) or "none"
        raise RulesError(
            f"rules/{TREE_FILE}: exactly one gate must have no parent (the root); found {found}"
        )
    return roots[0]


def dependency_graph(ruleset: Ruleset) -> nx.DiGraph:
    """Edges point from what must be judged first to what depends on it.

    A parent depends on its children; a node with a precondition depends on the node it
    names, and so does everything under it (skipping a gate skips its subtree).
    """
    graph = nx.DiGraph()
    nodes = {**ruleset.gates, **ruleset.assessments}
    graph.add_nodes_from(nodes)
    for key, node in nodes.items():
        if node.parent is not None:
            graph.add_edge(key, node.parent)
    hierarchy = graph.copy()
    for key, node in nodes.items():
        for pre in node.preconditions:
            for target in {key} | nx.ancestors(hierarchy, key):
                graph.add_edge(pre.node, target)
    return graph


def check_structure(ruleset: Ruleset) -> None:
    """Every key resolves, gates have valid arity and nothing depends on itself."""
    keys = set(ruleset.gates) | set(ruleset.assessments)
    for node in [*ruleset.gates.values(), *ruleset.assessments.values()]:
        where = node.source if isinstance(node, Assessment) else TREE_FILE
        label = f"{'assessment' if isinstance(node, Assessment) else 'gate'} {node.key!r}"
        if node.parent is not None and node.parent not in ruleset.gates:
            raise RulesError(
                f"rules/{where}: {label} has parent {node.parent!r}, which is not a gate"
            )
        for pre in node.preconditions:
            if pre.node not in keys:
                raise RulesError(
                    f"rules/{where}: {label} has a precondition on unknown node {pre.node!r}"
                )
            if pre.node == node.key:
                raise RulesError(f"rules/{where}: {label} has a precondition on itself")
    for gate in ruleset.gates.values():
        n = len(ruleset.children(gate.key))
        if n == 0 and gate.key != ruleset.root:  # a new workspace's root waits for its first
            raise RulesError(
                f"rules/{TREE_FILE}: gate {gate.key!r} has no children; give it at least one "
                "assessment or gate (`parent = \"" + gate.key + "\"`) or remove it"
            )
        if gate.rule == "k_of_n" and gate.k is not None and gate.k > n:
            raise RulesError(
                f"rules/{TREE_FILE}: gate {gate.key!r} needs k={gate.k} of only {n} children"
            )
    graph = dependency_graph(ruleset)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    path = " -> ".join([edge[0] for edge in cycle] + [cycle[-1][1]])
    raise RulesError(f"rules/: the tree has a cycle: {path}")
