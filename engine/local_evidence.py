"""The `local` role in a run: each opted-in assessment's bank, fitted once from its positive
references, and one sample's evidence from it (map, regions, z-score, rationale).

Fitting reads the reference images from the knowledge base and stores the bank there (the
local-bank cache), so later runs read it in one query; scoring needs only the fitted model
and the sample, so the judging of a chunk stays free of the database.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlmodel import Session

from engine.evidence import reference_image_loader
from engine.local import LocalModel, LocalSettings, Region, fit, map_png, score
from engine.results import Applicability, VLREvidence
from engine.samples import Sample
from engine.scoring import Normalization, zscore
from kb.local_banks import StoredBank, cached_bank, store_bank
from kb.rules import Assessment, Ruleset

if TYPE_CHECKING:
    from engine.encoders.base import Encoder


@dataclass
class LocalPlan:
    """One assessment's local model, or why it has none."""

    model: LocalModel | None
    note: str | None


def settings_of(assessment: Assessment) -> LocalSettings:
    rule = assessment.local
    assert rule is not None
    return LocalSettings(rule.quantile, rule.top_k, rule.coreset)


def plan_local(session: Session, ruleset: Ruleset, encoder: Encoder,
               fitted: dict[tuple, LocalPlan] | None = None) -> dict[str, LocalPlan]:
    """A bank per assessment with [local] enabled: kept in `fitted` (across the runs of one
    process), else read from the knowledge base, else fitted and stored there (each
    reference's patches computed once, shared by assessments that share it). Every level is
    keyed by the model, the settings and the references' hashes: same inputs, same bank."""
    fitted = {} if fitted is None else fitted
    grids: dict[str, np.ndarray] = {}
    sizes: dict[str, tuple[int, int]] = {}
    plans: dict[str, LocalPlan] = {}
    for a in ruleset.assessments.values():
        if a.local is None:
            continue
        refs = a.references_of("positive")
        settings = settings_of(a)
        key = (encoder.fingerprint, settings, tuple(r.sha256 for r in refs))
        if key in fitted:
            plans[a.key] = fitted[key]
            continue
        digest = bank_key(settings, [r.sha256 for r in refs])
        stored = cached_bank(session, encoder.fingerprint, digest)
        if stored is not None:
            model = _from_stored(stored, settings)
        else:
            for r in refs:
                if r.sha256 not in grids:
                    image = reference_image_loader(session, r.sha256)()
                    grids[r.sha256] = encoder.patch_grids([image])[0]
                    sizes[r.sha256] = image.size
            model = fit([grids[r.sha256] for r in refs], [sizes[r.sha256] for r in refs],
                        settings)
            store_bank(session, encoder.fingerprint, digest, _to_stored(model))
        note = None if model.norm is not None else (
            "local evidence needs at least two positive reference images that differ, "
            "to standardise its score leave-one-out")
        plans[a.key] = fitted[key] = LocalPlan(model, note)
    return plans


def bank_key(settings: LocalSettings, reference_shas: list[str]) -> str:
    """SHA-256 over what shapes a bank besides the model: its settings and its references
    in their order (the order decides the coreset's ties)."""
    text = json.dumps({"settings": asdict(settings), "references": reference_shas},
                      sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _to_stored(model: LocalModel) -> StoredBank:
    norm = model.norm
    return StoredBank(
        model.bank,
        norm.mu if norm else None, norm.sigma if norm else None, norm.count if norm else None,
        float(model.threshold) if np.isfinite(model.threshold) else None,
    )


def _from_stored(stored: StoredBank, settings: LocalSettings) -> LocalModel:
    norm = None
    if stored.mu is not None and stored.sigma is not None and stored.count is not None:
        norm = Normalization(stored.mu, stored.sigma, "references", stored.count)
    threshold = float("inf") if stored.threshold is None else stored.threshold
    return LocalModel(stored.bank, settings, norm, threshold)


def local_evidence(
    plan: LocalPlan, encoder: Encoder, sample: Sample, grid: np.ndarray,
    looks: Applicability | None, counted: bool = True,
) -> VLREvidence:
    """The local evidence of one sample: z of -score (positive = like the good references),
    not assessed when the sample lies outside the references' range."""
    spec, fingerprint = encoder.spec, encoder.fingerprint
    if plan.model is None:
        return VLREvidence("local", spec.name, fingerprint, note=plan.note)
    model = plan.model
    found = score(model, grid, sample.image.size)
    scale = max(model.threshold * 2.0, float(found.anomaly.max()), 1e-9) \
        if np.isfinite(model.threshold) else max(float(found.anomaly.max()), 1e-9)
    regions = tuple(r.to_dict() for r in found.regions)
    rationale = _rationale(found.regions[0] if found.regions else None, found.anomaly)
    outside = looks is not None and not looks.within
    norm = model.norm
    return VLREvidence(
        "local", spec.name, fingerprint,
        delta=found.delta,
        z=None if norm is None or outside else float(zscore(found.delta, norm)),
        mu=norm.mu if norm else None, sigma=norm.sigma if norm else None,
        normalization=f"references (leave-one-out, n={norm.count})" if norm else None,
        note=plan.note if norm is None else (
            "outside the range of the references" if outside else None),
        applicability=looks,
        regions=regions,
        map=map_png(found.anomaly, scale),
        rationale=rationale,
        counted=counted,
    )


def _rationale(region: Region | None, anomaly: np.ndarray) -> str:
    if region is None:
        row, col = np.unravel_index(int(np.argmax(anomaly)), anomaly.shape)
        return (f"no part departs from the good references more than they do themselves; "
                f"the strongest point is at {col}, {row}")
    return (f"strongest departure from the good references at {region.x}, {region.y}, "
            f"size {region.width} x {region.height}")
