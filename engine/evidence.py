"""Vision-language evidence of an assessment: embedded prompt and reference sets, their
net similarity to samples, and the statistics that standardise it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from sqlmodel import Session

from engine.appearance import Legend, model_appearance
from engine.appearance import distances as appearance_distances
from engine.encoders.cache import embed_images, embed_prompts
from engine.encoders.roles import ModelSet
from engine.results import Applicability
from engine.samples import Sample
from engine.scoring import (
    Normalization,
    leave_one_out_deltas,
    mean_direction,
    net_similarity,
    population_stats,
)
from kb.embeddings import IMAGE
from kb.image_store import stored_image
from kb.rules import Assessment, Ruleset
from kb.statistics import add_stat, reference_stat, stored_stat
from kb.tables import NormalizationStat

if TYPE_CHECKING:  # torch is imported by the command that loads a model, not by this module
    from engine.encoders.base import Encoder


@dataclass(frozen=True)
class EvidenceSet:
    """The embedded positive and negative items of one assessment for one role."""

    role: str
    labels: tuple[str, ...]
    shas: tuple[str, ...]  # content address of each prompt text or reference image
    polarities: tuple[str, ...]
    vectors: np.ndarray  # (items, dim), rows L2-normalised

    def _of(self, polarity: str) -> np.ndarray:
        return self.vectors[[p == polarity for p in self.polarities]]

    @property
    def positives(self) -> np.ndarray:
        return self._of("positive")

    @property
    def negatives(self) -> np.ndarray:
        return self._of("negative")

    def deltas(self, samples: np.ndarray) -> np.ndarray:
        """Net similarity of each sample row to this set."""
        return net_similarity(
            samples, mean_direction(self.positives), mean_direction(self.negatives)
        )

    def similarities(self, samples: np.ndarray) -> np.ndarray:
        """Cosine of each sample (rows) to each item (columns)."""
        return np.atleast_2d(samples) @ self.vectors.T


def reference_image_loader(session: Session, sha256: str):
    """Reference images come from the KB's stored bytes, exactly as the ruleset version saw them."""

    def load() -> Image.Image:
        record = stored_image(session, sha256)
        if record is None or record.data is None:
            raise LookupError(f"reference image {sha256[:12]} is not stored in the knowledge base")
        with Image.open(io.BytesIO(record.data)) as image:
            return image.convert("RGB")

    return load


def evidence_set(
    session: Session, assessment: Assessment, role: str, encoder: Encoder
) -> EvidenceSet | None:
    """Embed (through the cache) what this role compares against; None if it cannot score yet."""
    if not assessment.items_of(role) or assessment.one_sided(role):
        return None
    if role == "text":
        vectors = embed_prompts(session, encoder, assessment.prompts)
        labels = tuple(p.text for p in assessment.prompts)
        shas = tuple(p.sha256 for p in assessment.prompts)
        polarities = tuple(p.polarity for p in assessment.prompts)
    else:
        refs = assessment.references
        by_sha = embed_images(
            session, encoder, {r.sha256: reference_image_loader(session, r.sha256) for r in refs}
        )
        vectors = np.stack([by_sha[r.sha256] for r in refs])
        labels = tuple(r.path for r in refs)
        shas = tuple(r.sha256 for r in refs)
        polarities = tuple(r.polarity for r in refs)
    return EvidenceSet(role, labels, shas, polarities, np.asarray(vectors, dtype=np.float64))


def reference_deltas(
    session: Session, assessment: Assessment, role: str, encoder: Encoder, items: EvidenceSet
) -> np.ndarray:
    """Deltas of the assessment's own reference images, the basis of reference calibration.

    For the image role a reference is left out of its own mean (leave-one-out); for the text
    role the references are simply scored against the prompts.
    """
    if role == "image":
        return leave_one_out_deltas(items.positives, items.negatives)
    if not assessment.references:
        return np.zeros(0)
    refs = assessment.references
    by_sha = embed_images(
        session, encoder, {r.sha256: reference_image_loader(session, r.sha256) for r in refs}
    )
    return items.deltas(np.stack([by_sha[r.sha256] for r in refs]))


def ensure_reference_stats(
    session: Session,
    ruleset_id: int,
    assessment: Assessment,
    role: str,
    encoder: Encoder,
    items: EvidenceSet,
) -> NormalizationStat | None:
    """Store mu and sigma from the references once per ruleset, assessment, role and model."""
    existing = reference_stat(session, ruleset_id, assessment.key, role, encoder.fingerprint)
    if existing is not None:
        return existing
    deltas = reference_deltas(session, assessment, role, encoder, items)
    if deltas.size < 2:
        return None
    stats = population_stats(deltas, "references")
    if stats.sigma <= 0:
        return None
    return add_stat(
        session,
        NormalizationStat(
            ruleset_id=ruleset_id,
            assessment_key=assessment.key,
            role=role,
            model_fingerprint=encoder.fingerprint,
            source="references",
            mu=stats.mu,
            sigma=stats.sigma,
            count=stats.count,
        ),
    )


def stored_normalization(
    session: Session, ruleset_id: int, assessment_key: str, role: str, fingerprint: str
) -> Normalization | None:
    """The newest calibration for this assessment, role and model; else the reference one."""
    chosen = stored_stat(session, ruleset_id, assessment_key, role, fingerprint)
    if chosen is None:
        return None
    source = (
        f"calibration v{chosen.calibration_version}"
        if chosen.source == "calibration"
        else f"references (leave-one-out, n={chosen.count})"
    )
    return Normalization(chosen.mu, chosen.sigma, source, chosen.count)


# A sample is outside the range of the references when its appearance lies farther from the
# nearest reference than this many times the references' largest leave-one-out
# nearest-neighbour distance. Chosen on the shipped model (docs/rules.md, "Applicability";
# bench/applicability.py): fresh `kb synth` maps reach 2.3, noisy JPEG exports read in the
# legend 1.8 and the example micrographs 0.5, while a photograph, a uniform grey image and a
# Voronoi grain map in other colours lie at 30 or more.
APPLICABILITY_LIMIT = 10.0
OUTSIDE = "outside the range of the references"


@dataclass(frozen=True)
class ReferenceRange:
    """The appearance of the workspace's reference images under one model.

    Each assessment has a handful of references, some nearly alike, so their own spread is
    no measure of what the model has seen; the references of every assessment together are.
    """

    labels: tuple[str, ...]  # one path per distinct reference image
    vectors: np.ndarray  # (references, channels), as engine.appearance.vectors_of gives them
    spread: float  # largest leave-one-out nearest-neighbour distance
    modality: str  # how appearance is read (engine.appearance): raw, or in the legend

    def applicability(self, samples: np.ndarray) -> list[Applicability]:
        """How far each sample row lies from its nearest reference, against the spread."""
        distances = appearance_distances(samples, self.vectors, self.modality)
        nearest = distances.argmin(axis=1)
        return [
            Applicability(
                distance=float(distances[i, j]),
                nearest=self.labels[j],
                spread=self.spread,
                ratio=float(distances[i, j] / self.spread),
                limit=APPLICABILITY_LIMIT,
                references=len(self.labels),
            )
            for i, j in enumerate(nearest)
        ]


def reference_range(
    session: Session, ruleset: Ruleset, encoder: Encoder, legend: Legend | None
) -> ReferenceRange | None:
    """The references' appearance under this model; read in the legend where the workspace
    measures phase maps and the model was trained over acquisition variation, so that noise
    and JPEG count as unfamiliar exactly for a model that never saw them. None with fewer
    than 2 distinct references (or all identical): then applicability is not measured."""
    by_sha: dict[str, str] = {}
    for a in ruleset.assessments.values():
        for r in a.references:
            by_sha.setdefault(r.sha256, r.path)
    if len(by_sha) < 2:
        return None
    loaders = {sha: reference_image_loader(session, sha) for sha in by_sha}
    modality = model_appearance(encoder, legend)
    found = embed_images(session, encoder, loaders, modality=modality)
    shas = sorted(by_sha, key=by_sha.__getitem__)
    vectors = np.stack([found[sha] for sha in shas]).astype(np.float64)
    spread = float(leave_one_out_nearest(vectors, modality).max())
    if spread <= 0:
        return None
    return ReferenceRange(tuple(by_sha[sha] for sha in shas), vectors, spread, modality)


def leave_one_out_nearest(vectors: np.ndarray, modality: str) -> np.ndarray:
    """Appearance distance of each row to its nearest other row."""
    distances = appearance_distances(vectors, vectors, modality)
    np.fill_diagonal(distances, np.inf)
    return np.clip(distances.min(axis=1), 0.0, None)


@dataclass
class RolePlan:
    """What one assessment and one role need for a whole run: its items and normalisation."""

    items: EvidenceSet | None
    norm: Normalization | None
    note: str | None
    range: ReferenceRange | None = None  # what the role's model was calibrated on


@dataclass
class RoleEvidence:
    """Everything computed for one assessment and one role over one chunk of images."""

    items: EvidenceSet | None
    deltas: np.ndarray
    similarities: np.ndarray
    norm: Normalization | None
    note: str | None
    applicability: list[Applicability] | None = None  # per sample; None: not measured


def plan_roles(
    session: Session, ruleset_id: int, ruleset: Ruleset, models: ModelSet, normalize: str,
    legend: Legend | None,
) -> dict[tuple[str, str], RolePlan]:
    """Evidence items and, for `calibrated`, the stored statistics of every bound role;
    `legend`: the phase maps' legend where the workspace measures (appearance is read in it)."""
    setup: dict[tuple[str, str], RolePlan] = {}
    for role in models.bound_roles():
        encoder = models.encoder(role)
        ranges = reference_range(session, ruleset, encoder, legend)
        for a in ruleset.assessments.values():
            if not a.items_of(role):
                continue
            items = evidence_set(session, a, role, encoder)
            if items is None:
                setup[(a.key, role)] = RolePlan(None, None, a.one_sided(role))
            elif normalize == "batch":
                setup[(a.key, role)] = RolePlan(items, None, None, ranges)  # after pass one
            else:
                norm = stored_normalization(session, ruleset_id, a.key, role, encoder.fingerprint)
                note = None if norm is not None else (
                    "no calibration statistics for this model (too few reference images);"
                    " run `kb calibrate` or use --normalize batch"
                )
                setup[(a.key, role)] = RolePlan(items, norm, note, ranges)
    return setup


# An image's vectors by model fingerprint and modality (IMAGE or an appearance), then SHA-256.
ChunkVectors = Mapping[tuple[str, str], Mapping[str, np.ndarray]]


def appearance_modalities(setup: Mapping[tuple[str, str], RolePlan], role: str) -> list[str]:
    """The appearance a chunk's images need for this role: one where a range is measured."""
    return sorted({
        plan.range.modality
        for (_, plan_role), plan in setup.items()
        if plan_role == role and plan.items is not None and plan.range is not None
    })


def chunk_evidence(
    session: Session,
    ruleset: Ruleset,
    models: ModelSet,
    samples: Sequence[Sample],
    setup: dict[tuple[str, str], RolePlan],
) -> dict[tuple[str, str], RoleEvidence]:
    """Deltas and similarities of a chunk of images for every (assessment, bound role), the
    vectors through the embedding cache."""
    if not samples:
        return {}
    vectors: dict[tuple[str, str], Mapping[str, np.ndarray]] = {}
    loaders = {s.sha256: (lambda s=s: s.image) for s in samples}
    for role in models.bound_roles():
        encoder = models.encoder(role)
        vectors[(encoder.fingerprint, IMAGE)] = embed_images(session, encoder, loaders)
        for modality in appearance_modalities(setup, role):
            vectors[(encoder.fingerprint, modality)] = embed_images(
                session, encoder, loaders, modality=modality
            )
    return evidence_of(ruleset, models, samples, setup, vectors)


def evidence_of(
    ruleset: Ruleset,
    models: ModelSet,
    samples: Sequence[Sample],
    setup: Mapping[tuple[str, str], RolePlan],
    vectors: ChunkVectors,
) -> dict[tuple[str, str], RoleEvidence]:
    """Deltas and similarities of a chunk from its vectors alone (no database): what a Ray
    worker computes from the vectors it embedded, and the cache path from the cached ones."""
    found: dict[tuple[str, str], RoleEvidence] = {}
    if not samples:
        return found
    for role in models.bound_roles():
        fingerprint = models.encoder(role).fingerprint
        embedded = vectors[(fingerprint, IMAGE)]
        matrix = np.stack([embedded[s.sha256] for s in samples]).astype(np.float64)
        looks: dict[int, list[Applicability]] = {}  # per reference range (one per model)
        for a in ruleset.assessments.values():
            if (a.key, role) not in setup:
                continue
            plan = setup[(a.key, role)]
            if plan.items is None:
                empty = np.zeros(0)
                found[(a.key, role)] = RoleEvidence(None, empty, empty, None, plan.note)
                continue
            if plan.range is not None and id(plan.range) not in looks:
                appearance = vectors[(fingerprint, plan.range.modality)]
                rows = np.stack([appearance[s.sha256] for s in samples]).astype(np.float64)
                looks[id(plan.range)] = plan.range.applicability(rows)
            found[(a.key, role)] = RoleEvidence(
                plan.items,
                plan.items.deltas(matrix),
                plan.items.similarities(matrix),
                plan.norm,
                plan.note,
                looks.get(id(plan.range)) if plan.range is not None else None,
            )
    return found
