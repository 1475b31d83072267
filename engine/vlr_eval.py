"""How well an encoder's vision-language evidence agrees with the labels of generated micrographs.

For a fresh generated set and a workspace's assessments (prompts with all their variants, and
reference images), per assessment: the balanced accuracy of the sign of the text delta
(image vs prompt means), of the image delta (image vs reference means) and of the hybrid (the
sum of both deltas' z-scores over the set, the article's batch fusion); and the text balanced
accuracy with prompts the model never saw in training (engine.captions.ROBUSTNESS_PROMPTS).
This needs no knowledge base: it is the model's own report card, written to its model card.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from engine.captions import ASSESSMENTS, ROBUSTNESS_PROMPTS
from engine.metrology import measure_labels
from engine.scoring import mean_direction, net_similarity
from engine.synth import BeadSpec, label_sample, paint, render_bead, sample_specs
from kb.config import DEFAULT_LEGEND

UM_PER_PX = 10.0
ROLES = ("text", "image", "hybrid", "robust_text")


@dataclass(frozen=True)
class GeneratedSet:
    """Micrographs drawn by engine.synth and their labels (accept / reject per assessment)."""

    seed: int
    images: list[Image.Image]
    labels: list[dict[str, str]]

    def accepted(self, key: str) -> np.ndarray:
        return np.array([row[key] == "accept" for row in self.labels])


def generate_set(n: int, seed: int, um_per_px: float = UM_PER_PX) -> GeneratedSet:
    """The same images `kb synth OUTDIR --n n --seed seed` writes (PNG, no degradation)."""
    images, labels = [], []
    for index, spec in enumerate(sample_specs(n, seed)):
        label_map = render_bead(spec, um_per_px, seed=seed * 100_003 + index)
        images.append(paint(label_map, DEFAULT_LEGEND))
        labels.append(label_sample(measure_labels(label_map, um_per_px).quantities))
    return GeneratedSet(seed, images, labels)


def render_resized(
    spec: BeadSpec, seed: int, size: tuple[int, int], resample: int, um_per_px: float = UM_PER_PX
) -> tuple[np.ndarray, dict[str, str], dict[str, float]]:
    """One training sample: (3, height, width) uint8 as the encoder's image processor resizes
    it (PIL, before rescaling and normalisation), its labels and its true quantities.
    Torch-free, for worker processes; tests check it against the processor itself.
    """
    label_map = render_bead(spec, um_per_px, seed=seed)
    quantities = measure_labels(label_map, um_per_px).quantities
    image = paint(label_map, DEFAULT_LEGEND).resize((size[1], size[0]), resample=resample)
    pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()
    return pixels, label_sample(quantities), dict(quantities)


@dataclass(frozen=True)
class Evidence:
    """An assessment's positive and negative prompts and reference images."""

    prompts: tuple[list[str], list[str]]
    references: tuple[list[Path], list[Path]]


def workspace_evidence(rules_dir: Path) -> dict[str, Evidence]:
    """Prompts (every variant) and reference images of each rules/assessments/*.toml."""
    evidence = {}
    rules_dir = Path(rules_dir)
    for path in sorted((rules_dir / "assessments").glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        key = data["key"]
        prompts = data.get("prompts", {})
        positive, negative = list(prompts.get("positive", [])), list(prompts.get("negative", []))
        for variant in prompts.get("variants", {}).values():
            positive += variant.get("positive", [])
            negative += variant.get("negative", [])
        globs = data.get("references", {})
        references = tuple(
            sorted(
                p
                for pattern in globs.get(polarity, [f"references/{key}/{polarity}/*.png"])
                for p in rules_dir.glob(pattern)
            )
            for polarity in ("positive", "negative")
        )
        evidence[key] = Evidence((positive, negative), references)  # type: ignore[arg-type]
    return evidence


def balanced_accuracy(predicted: np.ndarray, truth: np.ndarray) -> float | None:
    """Mean of the accept and reject recalls; None when the set lacks one of the classes."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    if truth.all() or not truth.any():
        return None
    return float((predicted[truth].mean() + (~predicted[~truth]).mean()) / 2.0)


def zscores(values: np.ndarray) -> np.ndarray:
    """Over the set, population standard deviation (the article's batch normalisation)."""
    sigma = float(values.std())
    return np.zeros_like(values) if sigma == 0 else (values - values.mean()) / sigma


@dataclass
class Report:
    """Per assessment and role: balanced accuracy; plus the set's size and accept counts."""

    seed: int
    n: int
    accepts: dict[str, int] = field(default_factory=dict)
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)
    subset: str = "all"

    @classmethod
    def from_dict(cls, data: Mapping) -> Report:
        return cls(
            seed=int(data["seed"]), n=int(data["n"]), accepts=dict(data["accepts"]),
            scores=dict(data["balanced_accuracy"]), subset=str(data.get("subset", "all")),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed, "n": self.n, "subset": self.subset,
            "accepts": self.accepts, "balanced_accuracy": self.scores,
        }

    def markdown(self) -> str:
        head = "| EA | accept / n | text | image | hybrid | robust text | robust - text |"
        lines = [head, "| --- | --- | --- | --- | --- | --- | --- |"]
        for key, row in self.scores.items():
            gap = (
                None if row["robust_text"] is None or row["text"] is None
                else row["robust_text"] - row["text"]
            )
            cells = [_cell(row[r]) for r in ROLES] + [_cell(gap, signed=True)]
            lines.append(f"| {key} | {self.accepts[key]} / {self.n} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _cell(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def evaluate(
    encoder,
    data: GeneratedSet,
    evidence: Mapping[str, Evidence],
    robust_prompts: Mapping[str, Mapping[str, Sequence[str]]] = ROBUSTNESS_PROMPTS,
    image_embeddings: np.ndarray | None = None,
    keep: np.ndarray | None = None,
    subset: str = "all",
) -> Report:
    """Balanced accuracy of each role's verdict sign on data (optionally only rows in keep)."""
    z_all = encoder.embed_images(data.images) if image_embeddings is None else image_embeddings
    keep = np.ones(len(data.images), bool) if keep is None else np.asarray(keep, bool)
    z = z_all[keep]
    report = Report(seed=data.seed, n=int(keep.sum()), subset=subset)
    for key in ASSESSMENTS:
        if key not in evidence:
            continue
        truth = data.accepted(key)[keep]
        report.accepts[key] = int(truth.sum())
        ev = evidence[key]
        deltas = {
            "text": _delta(z, *(encoder.embed_texts(texts) for texts in ev.prompts)),
            "image": _delta(z, *(encoder.embed_images(_open(p)) for p in ev.references)),
            "robust_text": _delta(
                z,
                encoder.embed_texts(list(robust_prompts[key]["positive"])),
                encoder.embed_texts(list(robust_prompts[key]["negative"])),
            ),
        }
        if deltas["text"] is not None and deltas["image"] is not None:
            deltas["hybrid"] = zscores(deltas["text"]) + zscores(deltas["image"])
        report.scores[key] = {
            role: None if deltas.get(role) is None else balanced_accuracy(deltas[role] >= 0, truth)
            for role in ROLES
        }
    return report


def _delta(z: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> np.ndarray | None:
    if len(positives) == 0 or len(negatives) == 0:
        return None
    return net_similarity(z, mean_direction(positives), mean_direction(negatives))


def _open(paths: Sequence[Path]) -> list[Image.Image]:
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def main(argv: Sequence[str] | None = None) -> None:
    """python -m engine.vlr_eval SOURCE [--backend dual] [--n 200] [--seed 4242] [--rules rules]

    Scores any configured model (dual, clip or flava) on a fresh generated set and prints the
    balanced-accuracy table of the model card.
    """
    import argparse

    from engine.encoders import load_encoder
    from kb.config import ModelSpec

    parser = argparse.ArgumentParser(prog="python -m engine.vlr_eval")
    parser.add_argument("source", help="model directory or hub id")
    parser.add_argument("--backend", default="dual")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--rules", type=Path, default=Path("rules"))
    args = parser.parse_args(argv)
    encoder = load_encoder(ModelSpec(name="evaluated", backend=args.backend, source=args.source))
    data = generate_set(args.n, args.seed)
    embeddings = encoder.embed_images(data.images)
    evidence = workspace_evidence(args.rules)
    print(evaluate(encoder, data, evidence, image_embeddings=embeddings).markdown())
    bead = data.accepted("EA-3")
    print(f"\nOnly EA-3 accepted ({int(bead.sum())} images):\n")
    print(evaluate(encoder, data, evidence, image_embeddings=embeddings, keep=bead).markdown())


if __name__ == "__main__":
    main()
