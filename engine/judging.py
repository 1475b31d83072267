"""Judging a chunk of micrographs from their vectors: the work both executors share.

`kb qualify` splits into what needs the knowledge base (planning a run, the embedding cache,
storing) and what does not: embedding, measuring and walking the tree for each image. This
module is the second part. It never opens a database, so the in-process executor runs it
beside the cache and a Ray worker runs it on a node that cannot see the database at all;
given the same vectors both give the same results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.appearance import vectors_of
from engine.assess import judge_assessment, measurement_evidence, not_a_phase_map
from engine.encoders.roles import ModelSet
from engine.evidence import (
    OUTSIDE,
    ChunkVectors,
    RoleEvidence,
    RolePlan,
    appearance_modalities,
    evidence_of,
)
from engine.local_evidence import LocalPlan, local_evidence
from engine.metrology.overlay import measure_with_overlay
from engine.metrology.quantities import NotASegmentationMap
from engine.results import (
    Applicability,
    ItemSimilarity,
    NodeResult,
    QualificationResult,
    SampleFailure,
    VLREvidence,
)
from engine.samples import Sample, load_sample
from engine.scoring import zscore
from engine.tree import held_for_review, walk
from kb.config import RGB, VECTOR_ROLES
from kb.embeddings import IMAGE
from kb.errors import VLKBError
from kb.image_store import thumbnail_png
from kb.rules import Assessment, Ruleset

if TYPE_CHECKING:  # the backends import torch; a worker loads them through ModelSet
    from engine.encoders.backends import Encoder


@dataclass
class RunPlan:
    """Everything judging needs for a whole run, fixed by the driver before the first image:
    the ruleset with this run's thresholds, each role's items and statistics, the fields every
    result shares and where each threshold came from. Plain data, so it can travel to workers.
    """

    ruleset: Ruleset
    setup: dict[tuple[str, str], RolePlan]
    base: QualificationResult
    um_per_px: float
    legend: dict[str, RGB] | None  # None: no measurement rules, nothing to measure
    sources: dict[str, str]
    local: dict[str, LocalPlan] = field(default_factory=dict)  # by assessment key


@dataclass(frozen=True)
class ImageFacts:
    """What the knowledge base keeps of a judged sample: its size, format and thumbnail."""

    sha256: str
    width: int
    height: int
    format: str
    thumbnail_png: bytes

    @classmethod
    def of(cls, sample: Sample) -> ImageFacts:
        image = sample.image
        return cls(sample.sha256, image.width, image.height, sample.format, thumbnail_png(image))


@dataclass
class Judged:
    """One judged sample ready to store: its result, its image facts and the vectors embedded
    for it that the cache does not hold yet (empty when they came from the cache)."""

    result: QualificationResult
    image: ImageFacts
    shown: str  # the file as the caller named it, for messages
    vectors: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class SampleDeltas:
    """Pass one of a batch-normalised run: one readable file's net similarity per
    (assessment, role) with items."""

    deltas: dict[tuple[str, str], float]


VectorSource = Callable[[Sequence[Sample]], ChunkVectors]  # a chunk's samples -> their vectors


def load_files(paths: Sequence[Path]) -> list[Sample | SampleFailure]:
    """Each file decoded, or one failure line saying what is wrong with it; in input order."""
    loaded: list[Sample | SampleFailure] = []
    for path in paths:
        try:
            loaded.append(load_sample(path))
        except VLKBError as exc:
            loaded.append(SampleFailure(str(path), str(exc)))
    return loaded


def judge_files(
    plan: RunPlan, models: ModelSet, paths: Sequence[Path], vectors_of: VectorSource,
    keep_vectors: bool,
) -> list[SampleFailure | Judged]:
    """A chunk of files judged, in input order. keep_vectors: hand each sample's vectors on
    for the driver to cache (a worker embedded them; the cache path already has them)."""
    loaded = load_files(paths)
    samples = [s for s in loaded if isinstance(s, Sample)]
    vectors = vectors_of(samples) if samples else {}
    results = iter(judge_chunk(plan, models, samples, vectors))
    judged: list[SampleFailure | Judged] = []
    for path, item in zip(paths, loaded, strict=True):
        if isinstance(item, SampleFailure):
            judged.append(item)
            continue
        own = {key: found[item.sha256] for key, found in vectors.items()} if keep_vectors else {}
        judged.append(Judged(next(results), ImageFacts.of(item), str(path), own))
    return judged


def deltas_of_files(
    plan: RunPlan, models: ModelSet, paths: Sequence[Path], vectors_of: VectorSource
) -> list[SampleFailure | SampleDeltas]:
    """Pass one of --normalize batch for a chunk of files, in input order."""
    loaded = load_files(paths)
    samples = [s for s in loaded if isinstance(s, Sample)]
    vectors = vectors_of(samples) if samples else {}
    evidence = evidence_of(plan.ruleset, models, samples, plan.setup, vectors)
    index = {id(s): i for i, s in enumerate(samples)}
    return [
        item if isinstance(item, SampleFailure) else SampleDeltas({
            key: float(ev.deltas[index[id(item)]])
            for key, ev in evidence.items() if ev.items is not None
        })
        for item in loaded
    ]


def embed_batches(
    encoder: Encoder, samples: Sequence[Sample], modality: str, shas: Sequence[str]
) -> dict[str, np.ndarray]:
    """Vectors of these samples (by SHA-256) in the encoder's own batches, as float32 as the
    cache stores them: the same batches give the same vectors in either executor."""
    by_sha = {s.sha256: s for s in samples}
    vectors: dict[str, np.ndarray] = {}
    for start in range(0, len(shas), encoder.spec.batch_size):
        batch = shas[start : start + encoder.spec.batch_size]
        fresh = vectors_of(encoder, modality, [by_sha[sha].image for sha in batch])
        vectors.update(
            (sha, np.asarray(v, dtype=np.float32)) for sha, v in zip(batch, fresh, strict=True)
        )
    return vectors


def wanted_vectors(models: ModelSet, plan: RunPlan) -> dict[tuple[str, str], Encoder]:
    """(model fingerprint, modality) -> encoder, for every vector a chunk's images need: each
    bound role's embeddings, and its appearance where a range is measured for it."""
    wanted: dict[tuple[str, str], Encoder] = {}
    for role in models.bound_roles():
        encoder = models.encoder(role)
        for modality in (IMAGE, *appearance_modalities(plan.setup, role)):
            wanted.setdefault((encoder.fingerprint, modality), encoder)
    return wanted


def embed_chunk(
    models: ModelSet, samples: Sequence[Sample], plan: RunPlan
) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """Every vector a chunk needs, embedded here (a worker has no cache to ask)."""
    shas = list(dict.fromkeys(s.sha256 for s in samples))
    return {
        (fingerprint, modality): embed_batches(encoder, samples, modality, shas)
        for (fingerprint, modality), encoder in wanted_vectors(models, plan).items()
    }


def judge_chunk(
    plan: RunPlan, models: ModelSet, samples: Sequence[Sample], vectors: ChunkVectors
) -> list[QualificationResult]:
    """Each sample of a chunk judged: evidence from its vectors, measurements, the tree."""
    evidence = evidence_of(plan.ruleset, models, samples, plan.setup, vectors)
    return [judge_sample(plan, models, sample, index, evidence)
            for index, sample in enumerate(samples)]


def judge_sample(
    plan: RunPlan,
    models: ModelSet,
    sample: Sample,
    index: int,
    evidence: dict[tuple[str, str], RoleEvidence],
) -> QualificationResult:
    """Walk the tree for one image of a chunk.

    A sample that is not a phase map, in a workspace with measurement rules, gets those
    assessments not_assessed with the reason and an overall review.
    """
    quantities: dict[str, float] = {}
    unmeasurable: dict[str, str] = {}
    notes: dict[str, str] = {}
    overlay: dict | None = None  # what was measured, where: the report draws it from the record
    not_a_map: str | None = None
    if plan.legend is not None:
        try:
            measured, drawn = measure_with_overlay(sample.image, plan.legend, plan.um_per_px)
            quantities, unmeasurable = dict(measured.quantities), dict(measured.unmeasurable)
            notes = dict(measured.notes)
            overlay = drawn.to_dict()
        except NotASegmentationMap as exc:
            not_a_map = str(exc)
    held: set[str] = set()
    grid: list = []  # the sample's patch features, computed once for every local assessment

    def local(a: Assessment) -> VLREvidence:
        if models.spec("local") is None:
            return VLREvidence("local", None, None, note=_unbound_note("local"))
        encoder = models.encoder("local")
        if not grid:
            grid.append(encoder.patch_grids([sample.image])[0])
        image_role = evidence.get((a.key, "image"))
        looks = (image_role.applicability[index]
                 if image_role is not None and image_role.applicability is not None else None)
        assert a.local is not None
        return local_evidence(plan.local[a.key], encoder, sample, grid[0], looks, a.local.fuse)

    def judge(a: Assessment) -> NodeResult:
        vlr = [_sample_evidence(a.key, role, index, evidence, models)
               for role in VECTOR_ROLES if a.items_of(role)]
        if a.local is not None and (a.key in plan.local or models.spec("local") is None):
            vlr.append(local(a))
        if not_a_map is not None and a.measurements:
            held.add(a.key)
            return not_a_phase_map(a, vlr, not_a_map)
        return judge_assessment(a, vlr, measurement_evidence(a, quantities, unmeasurable, notes))

    nodes = [_with_threshold_source(n, plan.sources) for n in walk(plan.ruleset, judge)]
    if not_a_map is not None:
        nodes = held_for_review(plan.ruleset, nodes, held, f"the sample is {not_a_map}")
    return replace(
        plan.base,
        nodes=nodes,
        sample_path=str(sample.path.resolve()),
        sample_sha256=sample.sha256,
        verdict=nodes[0].verdict,
        conversion=sample.conversion,
        overlay=overlay,
        sample_size=sample.image.size,
    )


def _with_threshold_source(node: NodeResult, sources: Mapping[str, str]) -> NodeResult:
    if node.decision_rule is None or node.key not in sources or node.kind != "assessment":
        return node
    return replace(node, decision_rule={**node.decision_rule,
                                        "threshold_source": sources[node.key]})


def _sample_evidence(
    key: str,
    role: str,
    index: int,
    evidence: dict[tuple[str, str], RoleEvidence],
    models: ModelSet,
) -> VLREvidence:
    spec = models.spec(role)
    if spec is None:
        return VLREvidence(role, None, None, note=_unbound_note(role))
    fingerprint = models.encoder(role).fingerprint
    ev = evidence[(key, role)]
    if ev.items is None:
        return VLREvidence(role, spec.name, fingerprint, note=ev.note)
    delta = float(ev.deltas[index])
    set_ = ev.items
    items = tuple(
        ItemSimilarity(p, label, sha, float(sim))
        for p, label, sha, sim in zip(
            set_.polarities, set_.labels, set_.shas, ev.similarities[index], strict=True
        )
    )
    looks = ev.applicability[index] if ev.applicability is not None else None
    if ev.norm is None:
        return VLREvidence(role, spec.name, fingerprint, delta=delta, items=items, note=ev.note,
                           applicability=looks)
    outside = looks is not None and not looks.within
    return VLREvidence(
        role,
        spec.name,
        fingerprint,
        delta=delta,
        z=None if outside else float(zscore(delta, ev.norm)),  # outside: not assessed
        mu=ev.norm.mu,
        sigma=ev.norm.sigma,
        normalization=ev.norm.source,
        items=items,
        note=_outside_note(looks) if outside else None,
        applicability=looks,
    )


def _outside_note(looks: Applicability) -> str:
    return (
        f"{OUTSIDE}: the sample lies {looks.ratio:.1f} times the references' spread from the "
        f"nearest one ({looks.nearest}), beyond the limit of {looks.limit:g}"
    )


def _unbound_note(role: str) -> str:
    """Why a role gave no evidence: a text role needs a vision-language model."""
    if role == "text":
        return ("text prompts need a vision-language model (such as CLIP, from a local folder "
                "or the Hugging Face cache) and role 'text' is not bound to one in kb.toml "
                "[roles]; `kb models` shows how to bind one")
    return (f"role {role!r} is not bound to a model in kb.toml [roles]; "
            "`kb models` shows how to bind one")
