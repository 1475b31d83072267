"""The model card's evaluation: a dual-encoder checkpoint judged by `kb evaluate` itself.

A scratch workspace binds the `text` and `image` roles to the checkpoint and holds a copy of a
rules/ folder (prompts, references, limits, tree); a fresh labelled set is drawn by the
generator `kb synth` uses, and `evaluate_folder` qualifies and scores it exactly as
`kb evaluate` does (reference-calibrated z-scores, the rules' thresholds and review margins).
Further workspaces differ only in their prompts, replaced by plain-word paraphrases the model
never saw, to measure how far the text role's balanced accuracy moves with the wording.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.evaluation.folder import evaluate_folder
from engine.metrology.synthetic import criteria_of, write_dataset
from engine.session import VLKB
from engine.sync import sync_workspace
from engine.training.paraphrases import HELD_OUT, PARAPHRASES
from kb.config import Workspace
from kb.rules import compile_rules

Prompts = Mapping[str, Mapping[str, Sequence[str]]]
HYBRID_TARGET = 0.90
# The evaluation seed of the committed model's card: used for nothing else, ever.
CARD_SEED = 5151
ROBUSTNESS_TOLERANCE = 0.05
FIGURES = ("n", "balanced_accuracy", "review_rate", "auroc", "confusion")


@dataclass
class ModelEvaluation:
    """`kb evaluate` figures per assessment: the shipped prompts' modes, and `text` per
    paraphrase set; JSON-ready through to_dict and back through from_dict."""

    seed: int
    images: int
    accepts: dict[str, int] = field(default_factory=dict)  # labelled accept, among judged
    shipped: dict[str, dict[str, dict]] = field(default_factory=dict)
    paraphrased: dict[str, dict[str, dict]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed, "images": self.images, "accepts": self.accepts,
            "shipped": self.shipped, "paraphrased": self.paraphrased,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ModelEvaluation:
        return cls(int(data["seed"]), int(data["images"]), dict(data["accepts"]),
                   dict(data["shipped"]), dict(data["paraphrased"]))

    def balanced_accuracy(self, key: str, mode: str) -> float | None:
        return self.shipped.get(key, {}).get(mode, {}).get("balanced_accuracy")

    def paraphrase_gap(self, key: str, name: str = HELD_OUT) -> float | None:
        """Text balanced accuracy with the paraphrases minus with the shipped prompts."""
        shipped = self.balanced_accuracy(key, "text")
        other = self.paraphrased.get(name, {}).get(key, {}).get("balanced_accuracy")
        return None if shipped is None or other is None else other - shipped

    def missed_targets(self) -> list[str]:
        """Each target not met, in words; empty when all are."""
        missed = []
        for key in self.shipped:
            hybrid = self.balanced_accuracy(key, "hybrid")
            if hybrid is None or hybrid < HYBRID_TARGET:
                missed.append(f"{key} hybrid {_cell(hybrid)} < {HYBRID_TARGET:.2f}")
            gap = self.paraphrase_gap(key)
            if gap is None or gap < -ROBUSTNESS_TOLERANCE:
                missed.append(f"{key} paraphrased text {_cell(gap, signed=True)} below shipped")
        return missed

    def markdown(self) -> str:
        """The model card's table: balanced accuracy (review rate) per assessment and mode."""
        names = list(self.paraphrased)
        head = ["EA", "accept / judged", "text", "image", "hybrid", "final"]
        head += [f"{name} text" for name in names] + [f"{name} - text" for name in names]
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for key, modes in self.shipped.items():
            judged = modes.get("final", {}).get("n", 0)
            cells = [key, f"{self.accepts.get(key, 0)} / {judged}"]
            cells += [_figure(modes.get(mode)) for mode in ("text", "image", "hybrid", "final")]
            cells += [_figure(self.paraphrased[name].get(key)) for name in names]
            cells += [_cell(self.paraphrase_gap(key, name), signed=True) for name in names]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def ranking_markdown(self) -> str:
        """AUROC of the text role's z-score per prompt set: how well each wording ranks the
        images, whatever threshold the references put on it."""
        names = list(self.paraphrased)
        head = ["EA", "shipped text AUROC", *(f"{name} text AUROC" for name in names)]
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for key, modes in self.shipped.items():
            blocks = [modes.get("text"), *(self.paraphrased[n].get(key) for n in names)]
            cells = [_cell((block or {}).get("auroc")) for block in blocks]
            lines.append("| " + " | ".join([key, *cells]) + " |")
        return "\n".join(lines)


def _figure(block: Mapping | None) -> str:
    if not block or block.get("balanced_accuracy") is None:
        return "-"
    return f"{block['balanced_accuracy']:.3f} ({block['review_rate']:.0%})"


def _cell(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def evaluate_model(
    model_dir: Path,
    rules_dir: Path,
    workdir: Path,
    n: int = 200,
    seed: int = CARD_SEED,
    paraphrase_sets: Mapping[str, Prompts] = PARAPHRASES,
) -> ModelEvaluation:
    """Draw `n` fresh labelled micrographs with `seed` under workdir and `kb evaluate` the
    checkpoint on them with rules_dir's prompts, then with each paraphrase set's."""
    workdir = Path(workdir)
    images = workdir / "fresh"
    write_dataset(images, n, seed, criteria=criteria_of(compile_rules(Path(rules_dir))))
    labels = images / "labels.csv"
    result = ModelEvaluation(seed=seed, images=n)
    shipped = evaluate_folder(VLKB(scratch_workspace(workdir / "shipped", model_dir, rules_dir)),
                              images, labels)
    result.shipped = {
        key: {mode: _figures(block) for mode, block in modes.items()}
        for key, modes in shipped.assessments.items()
    }
    result.accepts = {
        key: sum(
            sample["labels"][key] == "accept"
            and sample["verdicts"][key]["final"]["verdict"] != "not_assessed"
            for sample in shipped.samples
        )
        for key in shipped.assessments
    }
    for name, prompts in paraphrase_sets.items():
        workspace = scratch_workspace(workdir / name, model_dir, rules_dir, prompts)
        paraphrased = evaluate_folder(VLKB(workspace), images, labels)
        result.paraphrased[name] = {
            key: _figures(modes["text"]) for key, modes in paraphrased.assessments.items()
            if "text" in modes
        }
    return result


def _figures(block: Mapping) -> dict:
    return {name: block[name] for name in FIGURES}


def scratch_workspace(
    root: Path, model_dir: Path, rules_dir: Path, prompts: Prompts | None = None
) -> Workspace:
    """A synced workspace: both roles bound to the checkpoint, a copy of rules_dir, and
    optionally every assessment's prompts (all variants) replaced by `prompts`."""
    root.mkdir(parents=True)
    source = json.dumps(str(Path(model_dir).resolve()))
    (root / "kb.toml").write_text(
        "[models.evaluated]\n"
        'backend = "dual"\n'
        f"source = {source}\n\n"
        "[roles]\n"
        'text = "evaluated"\n'
        'image = "evaluated"\n',
        encoding="utf-8",
    )
    shutil.copytree(rules_dir, root / "rules")
    if prompts is not None:
        for path in sorted((root / "rules" / "assessments").glob("*.toml")):
            key = _assessment_key(path)
            if key in prompts:
                path.write_text(with_prompts(path.read_text(encoding="utf-8"), prompts[key]),
                                encoding="utf-8")
    workspace = Workspace.open(root)
    sync_workspace(VLKB(workspace))
    return workspace


def _assessment_key(path: Path) -> str:
    return str(tomllib.loads(path.read_text(encoding="utf-8"))["key"])


def with_prompts(text: str, prompts: Mapping[str, Sequence[str]]) -> str:
    """The assessment TOML with its [prompts] table and variants replaced; all else as is."""
    table = ["[prompts]"] + [
        f"{polarity} = " + json.dumps(list(prompts[polarity]), ensure_ascii=False)
        for polarity in ("positive", "negative")
    ] + [""]
    kept, inside = [], False
    for line in text.splitlines():
        header = line.strip().startswith("[")
        if header:
            name = line.strip().strip("[]").strip()
            if name == "prompts" or name.startswith("prompts."):
                if not inside and name == "prompts":
                    kept += table
                inside = True
                continue
            inside = False
        if not inside:
            kept.append(line)
    return "\n".join(kept) + "\n"
