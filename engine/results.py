"""Plain result objects of a qualification; reports and the CLI render these, nothing else.

`to_dict` gives exactly the `kb qualify --json` shape of docs/json.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.metrology.names import quantity_name


@dataclass(frozen=True)
class ItemSimilarity:
    """How close the sample is to one prompt or one reference image."""

    polarity: str
    label: str  # prompt text or reference path
    sha256: str  # of the prompt text or of the reference image's bytes
    similarity: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "polarity": self.polarity,
            "label": self.label,
            "sha256": self.sha256,
            "similarity": self.similarity,
        }


@dataclass(frozen=True)
class Applicability:
    """How far the sample looks from the reference images a role's evidence was calibrated on.

    Distances are cosine distances between appearance features (engine/evidence.py): the
    sample's to its nearest reference, against the largest distance of a reference to its own
    nearest neighbour (leave-one-out). Beyond `limit` times that spread the model is judging
    something it was never shown like, and its evidence is not used.
    """

    distance: float  # sample to its nearest reference
    nearest: str  # that reference's path under rules/
    spread: float  # largest leave-one-out nearest-neighbour distance among the references
    ratio: float  # distance / spread
    limit: float  # the ratio beyond which the sample is outside the range of the references
    references: int  # distinct reference images the range was measured on

    @property
    def within(self) -> bool:
        return self.ratio <= self.limit

    def to_dict(self) -> dict[str, Any]:
        return {
            "distance": self.distance,
            "nearest": self.nearest,
            "spread": self.spread,
            "ratio": self.ratio,
            "limit": self.limit,
            "references": self.references,
            "within": self.within,
        }


@dataclass(frozen=True)
class VLREvidence:
    """Net similarity of the sample for one role, and how it was standardised."""

    role: str  # "text" or "image"
    model: str | None
    fingerprint: str | None
    delta: float | None = None
    z: float | None = None
    mu: float | None = None
    sigma: float | None = None
    normalization: str | None = None
    items: tuple[ItemSimilarity, ...] = ()
    note: str | None = None  # why the evidence could not be used, when it could not
    applicability: Applicability | None = None  # None: not measured (fewer than 2 references)
    # role `local` only: where the sample departs from the good references
    regions: tuple[dict[str, Any], ...] = ()  # {"x","y","width","height","score"}, strongest first
    map: str | None = None  # the anomaly map as a small greyscale PNG data URI
    rationale: str | None = None
    counted: bool = True  # False: shown and recorded, left out of the fused score ([local] fuse)

    @property
    def usable(self) -> bool:
        return self.z is not None

    @property
    def applicable(self) -> bool:
        """Shown to be like the references (not merely not shown to be unlike them)."""
        return self.applicability is not None and self.applicability.within

    def closest(self, polarity: str) -> ItemSimilarity | None:
        same = [i for i in self.items if i.polarity == polarity]
        return max(same, key=lambda i: i.similarity) if same else None

    def to_dict(self) -> dict[str, Any]:
        closest = {p: self.closest(p) for p in ("positive", "negative")}
        return {
            "role": self.role,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "delta": self.delta,
            "z": self.z,
            "mu": self.mu,
            "sigma": self.sigma,
            "normalization": self.normalization,
            "note": self.note,
            "status": "used" if self.usable else "not_assessed",
            "applicability": self.applicability.to_dict() if self.applicability else None,
            "closest_positive": closest["positive"].to_dict() if closest["positive"] else None,
            "closest_negative": closest["negative"].to_dict() if closest["negative"] else None,
            "items": [i.to_dict() for i in self.items],
            **({"regions": [dict(r) for r in self.regions], "map": self.map,
                "rationale": self.rationale, "counted": self.counted}
               if self.role == "local" else {}),
        }


@dataclass(frozen=True)
class MeasurementEvidence:
    """One measurement rule: measured value against its limit."""

    quantity: str
    value: float | None
    op: str
    limit: float
    unit: str
    uncertainty: float
    verdict: str
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": "measurement",
            "quantity": self.quantity,
            "name": quantity_name(self.quantity),
            "value": self.value,
            "op": self.op,
            "limit": self.limit,
            "unit": self.unit,
            "uncertainty": self.uncertainty,
            "verdict": self.verdict,
            "note": self.note,
        }


Evidence = VLREvidence | MeasurementEvidence


@dataclass(frozen=True)
class NodeResult:
    """The verdict of one gate or assessment for one sample, with the numbers behind it."""

    key: str
    kind: str  # "gate" or "assessment"
    parent: str | None
    name: str
    verdict: str
    rationale: str
    score: float | None = None
    threshold: float | None = None
    review_margin: float | None = None
    fusion: str | None = None
    criterion: str | None = None
    evidence: tuple[Evidence, ...] = ()
    measurements: dict[str, float] = field(default_factory=dict)
    reason: str | None = None  # why a node is not_assessed, in one phrase
    rule: str | None = None  # a gate's combination rule: all, any, k_of_n, consensus
    k: int | None = None  # accepting children a k_of_n gate needs
    quorum: float | None = None  # share of children a consensus gate needs
    decision_rule: dict[str, Any] | None = None  # the rule that produced the verdict
    combine: str | None = None  # an assessment's combination mode (kb.vocabulary.COMBINATIONS)
    decided_by: str | None = None  # what decided it (kb.vocabulary.DECIDERS); None: nothing

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "parent": self.parent,
            "name": self.name,
            "verdict": self.verdict,
            "reason": self.reason,
            "rule": self.rule,
            "k": self.k,
            "quorum": self.quorum,
            "score": self.score,
            "threshold": self.threshold,
            "review_margin": self.review_margin,
            "fusion": self.fusion,
            "criterion": self.criterion,
            "rationale": self.rationale,
            "evidence": [e.to_dict() for e in self.evidence],
            "measurements": dict(self.measurements),
            "decision_rule": self.decision_rule,
            "combine": self.combine,
            "decided_by": self.decided_by,
        }


@dataclass(frozen=True)
class ModelUse:
    """Which model played which role, pinned by fingerprint."""

    role: str
    name: str
    backend: str
    source: str
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "name": self.name,
            "backend": self.backend,
            "source": self.source,
            "fingerprint": self.fingerprint,
        }


@dataclass
class QualificationResult:
    """One sample judged against one ruleset version: what gets stored and printed."""

    sample_path: str
    sample_sha256: str
    verdict: str
    ruleset_version: int
    ruleset_hash: str
    git_commit: str | None
    models: list[ModelUse]
    normalization: str
    nodes: list[NodeResult]
    software_version: str
    operator: str
    um_per_px: float
    conversion: str | None = None
    calibration: int | None = None  # the calibration version of `calibrated` z-scores
    decision: dict[str, Any] | None = None  # a run's override of fusion / thresholds, if any
    operator_source: str = "os-user"  # cli-option, request, signed-in or os-user
    purpose: str = "qualification"  # or evaluation: a kb evaluate run (kb/vocabulary.py)
    id: int | None = None
    created_at: str | None = None
    report: str | None = None
    thumbnail_sha256: str | None = None  # of the stored thumbnail, so an edit of it shows
    overlay: dict[str, Any] | None = None  # engine/metrology/overlay.py; None: not measured
    sample_size: tuple[int, int] | None = None  # width and height in pixels, as decoded

    def document(self) -> dict[str, Any]:
        """The stored record: everything except the ID, which is only known after storing."""
        return {
            "created_at": self.created_at,
            "sample": {
                "path": self.sample_path,
                "sha256": self.sample_sha256,
                "conversion": self.conversion,
                "thumbnail_sha256": self.thumbnail_sha256,
                "width": self.sample_size[0] if self.sample_size else None,
                "height": self.sample_size[1] if self.sample_size else None,
            },
            "verdict": self.verdict,
            "ruleset": {
                "version": self.ruleset_version,
                "hash": self.ruleset_hash,
                "git_commit": self.git_commit,
            },
            "models": [m.to_dict() for m in self.models],
            "normalization": self.normalization,
            "calibration": self.calibration,
            "decision_override": self.decision,
            "um_per_px": self.um_per_px,
            "software_version": self.software_version,
            "operator": self.operator,
            "operator_source": self.operator_source,
            "purpose": self.purpose,
            "nodes": [n.to_dict() for n in self.nodes],
            "overlay": self.overlay,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            **self.document(),
            "report": self.report,
        }


@dataclass(frozen=True)
class SampleFailure:
    """A file that could not be judged or measured, and why, in one line."""

    path: str
    error: str
    cause: str = "input"  # or "database": the knowledge base, not the file, failed

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "error": self.error}
