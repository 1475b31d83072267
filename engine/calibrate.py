"""`kb calibrate`: normalisation statistics (and, with labels, thresholds) from your own data.

A calibration is a new immutable version tied to the current ruleset: mu and sigma of every
assessment's net similarity per bound role over the calibration images, and with expert
labels the fused-score threshold that best separates them. `--normalize calibrated` then
judges each image alone against the latest calibration, and every qualification records
which calibration it used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from sqlmodel import Session

from engine.appearance import Legend, measured_legend
from engine.encoders.roles import ModelSet
from engine.evaluation.labels import read_labels
from engine.evaluation.metrics import balanced_accuracy_at, best_threshold
from engine.evidence import chunk_evidence, plan_roles, stored_normalization
from engine.inputs import image_files
from engine.results import SampleFailure
from engine.samples import Sample, load_sample
from engine.scoring import Normalization, fuse, population_stats, zscore
from engine.session import VLKB
from engine.sync import current_ruleset, prepare_embeddings
from kb.errors import VLKBError
from kb.rules import Assessment, Ruleset
from kb.statistics import add_calibration, add_stat, next_calibration_version
from kb.tables import Calibration, NormalizationStat


@dataclass(frozen=True)
class RoleStats:
    assessment: str
    role: str
    model: str
    mu: float
    sigma: float
    count: int


@dataclass(frozen=True)
class ThresholdChoice:
    """An assessment's threshold before and after, with the balanced accuracy of each."""

    assessment: str
    before: float
    after: float
    balanced_accuracy_before: float | None
    balanced_accuracy_after: float | None


@dataclass
class CalibrationResult:
    version: int
    ruleset_version: int
    images: int
    stats: list[RoleStats] = field(default_factory=list)
    thresholds: list[ThresholdChoice] = field(default_factory=list)
    failures: list[SampleFailure] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "calibration": self.version,
            "ruleset_version": self.ruleset_version,
            "images": self.images,
            "stats": [s.__dict__ for s in self.stats],
            "thresholds": [t.__dict__ for t in self.thresholds],
            "failures": [f.to_dict() for f in self.failures],
        }


def calibrated_thresholds(calibration: Calibration | None) -> dict[str, float]:
    return json.loads(calibration.thresholds_json) if calibration is not None else {}


def with_threshold(assessment: Assessment, threshold: float | None) -> Assessment:
    """The assessment judged against a calibrated threshold instead of the rules' one."""
    if threshold is None:
        return assessment
    return replace(assessment, decision=replace(assessment.decision, threshold=threshold))


def calibrate_folder(
    vlkb: VLKB, directory: Path, labels_path: Path | None = None
) -> CalibrationResult:
    """Store a new calibration from the images of a folder (and pick thresholds with labels)."""
    paths = image_files(directory)
    workspace, kb, models = vlkb.workspace, vlkb.kb, vlkb.models
    if not models.bound_roles():
        raise VLKBError(
            "no vision-language role is bound in kb.toml, so there is nothing to calibrate: "
            "measurement limits are the expert's and are never tuned"
        )
    samples, failures = _load(paths)
    if len(samples) < 2:
        raise VLKBError(f"{directory}: calibration needs at least 2 readable images")
    with kb.transaction() as session:
        row, ruleset = current_ruleset(session, workspace)
        assert row.id is not None
        labels = (
            read_labels(labels_path, list(ruleset.assessments), paths)
            if labels_path is not None
            else None
        )
        prepare_embeddings(session, row, ruleset, models)
        legend = measured_legend(ruleset, workspace.config.legend)
        deltas = _deltas(session, row.id, ruleset, models, samples, legend)
        previous = {
            key: stored_normalization(session, row.id, key[0], key[1],
                                      models.encoder(key[1]).fingerprint)
            for key in deltas
        }
        version = next_calibration_version(session)  # fixed before storing: the hash covers it
        result = CalibrationResult(version, row.version, len(samples), failures=failures)
        new_stats: dict[tuple[str, str], Normalization] = {}
        for (key, role), values in deltas.items():
            stats = population_stats(values, f"calibration v{version}")
            if stats.sigma <= 0:
                continue  # every image gave the same delta: no spread to standardise by
            new_stats[(key, role)] = stats
            result.stats.append(RoleStats(key, role, models.spec(role).name,  # type: ignore[union-attr]
                                          stats.mu, stats.sigma, stats.count))
        if labels is not None:
            truth_of = {s.path.name: labels[s.path.name] for s in samples}
            for key, assessment in ruleset.assessments.items():
                choice = _choose_threshold(
                    assessment, deltas, previous, new_stats,
                    [truth_of[s.path.name][key] for s in samples],
                )
                if choice is not None:
                    result.thresholds.append(choice)
        add_calibration(session, Calibration(
            id=version,
            ruleset_id=row.id,
            images=len(samples),
            source=str(directory.resolve()),
            labels_sha256=hashlib.sha256(labels_path.read_bytes()).hexdigest()
            if labels_path is not None
            else None,
            thresholds_json=json.dumps(
                {t.assessment: t.after for t in result.thresholds}, sort_keys=True
            ),
        ))
        for (key, role), stats in new_stats.items():
            add_stat(session, NormalizationStat(
                ruleset_id=row.id, assessment_key=key, role=role,
                model_fingerprint=models.encoder(role).fingerprint, source="calibration",
                calibration_version=version, mu=stats.mu, sigma=stats.sigma,
                count=stats.count,
            ))
    return result


def _load(paths: Sequence[Path]) -> tuple[list[Sample], list[SampleFailure]]:
    samples, failures = [], []
    for path in paths:
        try:
            samples.append(load_sample(path))
        except VLKBError as exc:
            failures.append(SampleFailure(str(path), str(exc)))
    return samples, failures


def _deltas(
    session: Session, ruleset_id: int, ruleset: Ruleset, models: ModelSet,
    samples: Sequence[Sample], legend: Legend | None,
) -> dict[tuple[str, str], np.ndarray]:
    """Net similarity of every calibration image per (assessment, bound role) with items."""
    plans = plan_roles(session, ruleset_id, ruleset, models, "batch", legend)
    evidence = chunk_evidence(session, ruleset, models, samples, plans)
    return {key: ev.deltas for key, ev in evidence.items() if ev.items is not None}


def _choose_threshold(
    assessment: Assessment,
    deltas: dict[tuple[str, str], np.ndarray],
    previous: dict[tuple[str, str], Normalization | None],
    new_stats: dict[tuple[str, str], Normalization],
    truth: list[str],
) -> ThresholdChoice | None:
    """The fused-score threshold with the best balanced accuracy on the labelled images."""
    roles = [role for (key, role) in new_stats if key == assessment.key]
    if not roles or len(set(truth)) < 2:
        return None
    decision = assessment.decision
    after_scores = _fused(assessment, roles, deltas, new_stats)
    old = {(assessment.key, r): previous.get((assessment.key, r)) for r in roles}
    before_scores = (
        _fused(assessment, roles, deltas, old)  # type: ignore[arg-type]
        if all(v is not None for v in old.values())
        else None
    )
    chosen = best_threshold(after_scores, truth, decision.threshold)
    return ThresholdChoice(
        assessment=assessment.key,
        before=decision.threshold,
        after=chosen,
        balanced_accuracy_before=balanced_accuracy_at(before_scores, truth, decision.threshold)
        if before_scores is not None
        else None,
        balanced_accuracy_after=balanced_accuracy_at(after_scores, truth, chosen),
    )


def _fused(
    assessment: Assessment,
    roles: list[str],
    deltas: dict[tuple[str, str], np.ndarray],
    norms: dict[tuple[str, str], Normalization],
) -> np.ndarray:
    z = {role: zscore(deltas[(assessment.key, role)], norms[(assessment.key, role)])
         for role in roles}
    count = len(next(iter(z.values())))
    decision = assessment.decision
    return np.array([
        fuse({role: float(z[role][i]) for role in roles}, decision.fusion, decision.weights)
        for i in range(count)
    ])
