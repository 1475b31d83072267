"""`kb evaluate`: how far to trust a workspace, measured against expert labels.

The images are qualified exactly as `kb qualify` does (and stored in the audit log like any
qualification), then each assessment's verdicts are compared with the labels once per kind
of evidence: each vision-language role alone, their fusion, the measurement rules, and the
tree's final verdict.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from engine.evaluation.labels import folder_labels, labels_drawn_from_rules, read_labels
from engine.evaluation.metrics import agreement, aupro, pixel_auroc
from engine.inputs import image_files
from engine.qualify import QualifyOptions, qualify_paths
from engine.results import MeasurementEvidence, NodeResult, QualificationResult, VLREvidence
from engine.scoring import decide
from engine.session import VLKB
from engine.sync import compile_workspace
from kb.errors import VLKBError
from kb.vocabulary import strictest

MODES = ("text", "image", "local", "hybrid", "measurement", "final")


@dataclass
class Evaluation:
    """Metrics per assessment and evidence mode, plus `overall` and the macro F1."""

    assessments: dict[str, dict[str, dict[str, object]]]
    overall: dict[str, object]
    macro_f1: float | None
    images: int
    top_k: int
    ruleset_version: int | None
    normalization: str
    samples: list[dict[str, object]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # assessment key -> its name
    # assessment key -> the threshold and review band its fused score was judged against
    decisions: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # assessments whose labels were drawn from the same limits as their measurement rules
    labels_from_rules: list[str] = field(default_factory=list)
    stored: bool = True  # whether the run's records are in the audit log (purpose evaluation)

    def to_dict(self) -> dict[str, object]:
        return {
            "images": self.images,
            "top_k": self.top_k,
            "ruleset_version": self.ruleset_version,
            "normalization": self.normalization,
            "assessments": self.assessments,
            "overall": self.overall,
            "macro_f1": self.macro_f1,
            "samples": self.samples,
            "failures": self.failures,
            "names": self.names,
            "decisions": self.decisions,
            "labels_from_rules": self.labels_from_rules,
            "stored": self.stored,
        }


@dataclass(frozen=True)
class ClassFolders:
    """Labels from the dataset's layout: DIR/CLASS/image, accepted for `key` when CLASS is
    one of `accept`."""

    key: str
    accept: tuple[str, ...]


def evaluate_folder(
    vlkb: VLKB,
    directory: Path,
    labels_path: Path | None = None,
    options: QualifyOptions | None = None,
    top_k: int = 5,
    classes: ClassFolders | None = None,
    masks_dir: Path | None = None,
) -> Evaluation:
    """Qualify every image of the folder and score the verdicts against the labels: a CSV
    (labels_path) or the class subfolders the images sit in (classes), one of the two."""
    if (labels_path is None) == (classes is None):
        raise VLKBError("give the labels either as a CSV (--labels FILE) or by class "
                        "subfolder (--labels-from-folders KEY --accept NAME)")
    # Its records are tagged, so history can tell a measurement of VLKB from a part's verdict.
    options = replace(options or QualifyOptions(), purpose="evaluation")
    ruleset = compile_workspace(vlkb.workspace)
    keys = list(ruleset.assessments)
    if classes is not None:
        images, labels = folder_labels(directory, classes.key, classes.accept, keys)
        keys = [classes.key]
        names = {p: p.relative_to(directory).as_posix() for p in images}
    else:
        images = image_files(directory)
        labels = read_labels(labels_path, keys, images)  # type: ignore[arg-type]
        names = {p: p.name for p in images}
    if not images:
        raise VLKBError(f"{directory}: no images to evaluate")
    outcome = qualify_paths(vlkb, images, options)
    by_path = {str(p.resolve()): name for p, name in names.items()}  # as results record it
    evaluation = score_results(outcome.results, labels, keys, top_k, by_path)
    evaluation.failures = [f.to_dict() for f in outcome.failures]
    evaluation.stored = options.store
    if labels_path is not None:
        evaluation.labels_from_rules = labels_drawn_from_rules(labels_path, ruleset.assessments)
    if masks_dir is not None:
        add_pixel_metrics(evaluation, outcome.results, masks_dir, keys)
    return evaluation


def add_pixel_metrics(evaluation: Evaluation, results: Sequence[QualificationResult],
                      masks_dir: Path, keys: Sequence[str]) -> None:
    """pixel_auroc and aupro in each assessment's `local` block, from the stored anomaly
    maps (scaled to each mask's size) against masks_dir/<key>/<image stem>.png."""
    if not masks_dir.is_dir():
        raise VLKBError(f"{masks_dir}: no such folder of masks (kb synth --masks writes one)")
    for key in keys:
        folder = masks_dir / key
        if not folder.is_dir():
            continue
        masks, maps = [], []
        for result in results:
            evidence = next((e for e in _node(result, key).evidence
                             if isinstance(e, VLREvidence) and e.role == "local"), None)
            path = folder / f"{Path(result.sample_path).stem}.png"
            if evidence is None or evidence.map is None:
                continue
            if not path.is_file():
                raise VLKBError(f"{path}: no mask for {Path(result.sample_path).name}")
            mask = read_mask(path)
            masks.append(mask)
            maps.append(decode_map(evidence.map, (mask.shape[1], mask.shape[0])))
        if not masks:
            continue
        block = evaluation.assessments.setdefault(key, {}).setdefault("local", {})
        block["pixel_auroc"] = pixel_auroc(masks, maps)
        block["aupro"] = aupro(masks, maps)
        block["masks"] = len(masks)


def read_mask(path: Path) -> np.ndarray:
    """(height, width) bool: non-zero = defect; one readable line if it is not an image."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L")) > 0
    except (OSError, ValueError) as exc:
        raise VLKBError(f"{path}: not a readable mask image ({exc})") from exc


def decode_map(uri: str, size: tuple[int, int]) -> np.ndarray:
    """A stored anomaly map (PNG data URI) as floats at `size` (width, height)."""
    data = base64.b64decode(uri.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as image:
        grey = image.convert("F").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.float64)


def score_results(
    results: Sequence[QualificationResult],
    labels: dict[str, dict[str, str]],
    keys: Sequence[str],
    top_k: int = 5,
    names: Mapping[str, str] | None = None,
) -> Evaluation:
    """Metrics from qualification results: the same verdicts the audit log holds.

    names: the label key of each sample path (default: its file name).
    """
    def name_of(result: QualificationResult) -> str:
        return (names or {}).get(result.sample_path) or Path(result.sample_path).name

    named = [(r, labels[name_of(r)]) for r in results]
    per_assessment: dict[str, dict[str, dict[str, object]]] = {}
    samples = [
        {"image": name_of(r), "qualification_id": r.id, "labels": row, "verdicts": {}}
        for r, row in named
    ]
    for key in keys:
        truth = [row[key] for _, row in named]
        blocks = {}
        for mode in MODES:
            judged = [mode_verdict(_node(r, key), mode) for r, _ in named]
            if all(j is None or j[0] == "not_assessed" for j in judged):
                continue  # this assessment has no evidence of that kind
            verdicts = [j[0] if j else "review" for j in judged]
            scores = [j[1] if j else None for j in judged]
            blocks[mode] = agreement(truth, verdicts, scores, top_k)
            for sample, verdict, score in zip(samples, verdicts, scores, strict=True):
                sample["verdicts"].setdefault(key, {})[mode] = {  # type: ignore[union-attr]
                    "verdict": verdict, "score": score
                }
        per_assessment[key] = blocks
    overall = {}
    if named and all("overall" in row for _, row in named):
        truth = [row["overall"] for _, row in named]
        overall = {"final": agreement(truth, [r.nodes[0].verdict for r, _ in named], None, top_k)}
    f1s = [b["final"]["f1"] for b in per_assessment.values() if b.get("final", {}).get("f1")]
    return Evaluation(
        assessments=per_assessment,
        overall=overall,
        macro_f1=sum(f1s) / len(f1s) if f1s else None,  # type: ignore[arg-type]
        images=len(results),
        top_k=top_k,
        ruleset_version=results[0].ruleset_version if results else None,
        normalization=results[0].normalization if results else "",
        samples=samples,
        names={key: _node(results[0], key).name for key in keys} if results else {},
        decisions={key: _decision(results, key) for key in keys},
    )


def _decision(results: Sequence[QualificationResult], key: str) -> dict[str, float | None]:
    """The threshold and band the first sample with a fused score was judged against."""
    for result in results:
        node = _node(result, key)
        if node.threshold is not None:
            return {"threshold": node.threshold, "review_margin": node.review_margin}
    return {"threshold": None, "review_margin": None}


def _node(result: QualificationResult, key: str) -> NodeResult:
    return next(n for n in result.nodes if n.key == key)


def mode_verdict(node: NodeResult, mode: str) -> tuple[str, float | None] | None:
    """The verdict one kind of evidence alone gives, with its continuous score if any.

    None when the assessment has no evidence of that kind; a skipped node stays skipped.
    """
    if node.verdict == "not_assessed":
        return ("not_assessed", None)
    if mode == "final":
        return (node.verdict, node.score)
    if mode == "measurement":
        rules = [e for e in node.evidence if isinstance(e, MeasurementEvidence)]
        if not rules:
            return None
        return (strictest(e.verdict for e in rules), None)
    if node.threshold is None:
        return None
    margin = node.review_margin or 0.0
    if mode == "hybrid":
        if node.score is None:
            return None
        return (decide(node.score, node.threshold, margin), node.score)
    role = next((e for e in node.evidence if isinstance(e, VLREvidence) and e.role == mode), None)
    if role is None or role.z is None:
        return None
    return (decide(role.z, node.threshold, margin), role.z)
