"""`kb qualify`: judge micrographs against the current ruleset and append them to the audit log.

Each image is decoded and embedded once per model; prompt and reference embeddings come from
the KB cache; deltas are standardised over the batch or with stored statistics; the tree is
walked per image; every qualification is stored in a transaction of its own so one bad file
never loses the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from sqlmodel import Session

from engine.assess import judge_assessment, measurement_evidence
from engine.embedding import embed_images
from engine.evidence import EvidenceSet, evidence_set, stored_normalization
from engine.images import Sample, load_sample
from engine.metrology import QUANTITIES, NotASegmentationMap, measure_image
from engine.models import ModelSet
from engine.reporting import output_dir, write_run_reports
from engine.results import (
    ItemSimilarity,
    NodeResult,
    QualificationResult,
    SampleFailure,
    VLREvidence,
)
from engine.scoring import Normalization, population_stats, zscore
from engine.sync import compile_workspace, prepare_embeddings
from engine.tree import walk
from kb.audit import NodeRecord, append_qualification, os_user
from kb.config import ROLES, Workspace
from kb.errors import RulesError, VLKBError
from kb.images import store_image
from kb.rules import Assessment, Ruleset
from kb.rulesets import latest_version, ruleset_of, software_version
from kb.store import KnowledgeBase
from kb.tables import RulesetVersion, utcnow

NORMALIZATIONS = ("batch", "calibrated")


@dataclass(frozen=True)
class QualifyOptions:
    normalize: str = "calibrated"
    um_per_px: float | None = None  # overrides the workspace default for this run
    operator: str | None = None
    report: bool = False  # write each stored qualification's HTML report (and a run index)


@dataclass
class QualifyOutcome:
    results: list[QualificationResult] = field(default_factory=list)
    failures: list[SampleFailure] = field(default_factory=list)
    index: str | None = None  # the run's index.html, for a reported run of 2+ samples
    report_errors: list[str] = field(default_factory=list)  # reports that could not be written


def current_ruleset(session: Session, workspace: Workspace) -> tuple[RulesetVersion, Ruleset]:
    """The latest synced version, refusing to judge while rules/ holds unsynced edits."""
    compiled = compile_workspace(workspace)
    row = latest_version(session)
    if row is None:
        raise RulesError("no ruleset has been synced yet; run `kb sync` first")
    if row.content_hash != compiled.content_hash:
        raise RulesError(
            f"rules/ has changed since ruleset version {row.version} was synced; "
            "run `kb sync` so verdicts point at the rules as they are now"
        )
    return row, ruleset_of(row)


@dataclass
class _RoleEvidence:
    """Everything computed for one assessment and one role over the whole batch."""

    items: EvidenceSet | None
    deltas: np.ndarray
    similarities: np.ndarray
    norm: Normalization | None
    note: str | None


def qualify_paths(
    workspace: Workspace,
    paths: Sequence[Path],
    options: QualifyOptions = QualifyOptions(),
    kb: KnowledgeBase | None = None,
    models: ModelSet | None = None,
) -> QualifyOutcome:
    """Qualify files; unreadable ones are reported as failures and the rest still judged."""
    if options.normalize not in NORMALIZATIONS:
        raise VLKBError(f"unknown normalisation {options.normalize!r}; use one of {NORMALIZATIONS}")
    if options.report:
        output_dir(workspace)  # refuse a bad output folder before anything is stored
    outcome = QualifyOutcome()
    samples: list[Sample] = []
    for path in paths:
        try:
            samples.append(load_sample(Path(path)))
        except VLKBError as exc:
            outcome.failures.append(SampleFailure(str(path), str(exc)))
    kb = kb or KnowledgeBase.open(workspace)
    models = models or ModelSet(workspace.config)
    with kb.transaction() as session:
        row, ruleset = current_ruleset(session, workspace)
        prepare_embeddings(session, row, ruleset, models)
        evidence = _vlr_evidence(session, row, ruleset, models, samples, options.normalize)
    um_per_px = options.um_per_px or workspace.config.um_per_px
    needs_metrology = any(a.measurements for a in ruleset.assessments.values())
    base = QualificationResult(
        sample_path="",
        sample_sha256="",
        verdict="",
        ruleset_version=row.version,
        ruleset_hash=row.content_hash,
        git_commit=row.git_commit,
        models=models.uses(),
        normalization=options.normalize,
        nodes=[],
        software_version=software_version(),
        operator=options.operator or os_user(),
        um_per_px=um_per_px,
    )
    for index, sample in enumerate(samples):
        quantities, unmeasurable = (
            _measure(sample, workspace, um_per_px) if needs_metrology else ({}, {})
        )

        def judge(a: Assessment, i: int = index, q=quantities, u=unmeasurable) -> NodeResult:
            vlr = [
                _sample_evidence(a.key, role, i, evidence, models)
                for role in ROLES
                if a.items_of(role)
            ]
            return judge_assessment(a, vlr, measurement_evidence(a, q, u))

        nodes = walk(ruleset, judge)
        result = replace(
            base,
            nodes=nodes,
            sample_path=str(sample.path.resolve()),
            sample_sha256=sample.sha256,
            verdict=nodes[0].verdict,
            conversion=sample.conversion,
        )
        try:
            _store(kb, row, result, sample)
        except VLKBError as exc:
            outcome.failures.append(SampleFailure(str(sample.path), str(exc)))
            continue
        outcome.results.append(result)
    if options.report:
        _write_reports(workspace, outcome)
    return outcome


def _write_reports(workspace: Workspace, outcome: QualifyOutcome) -> None:
    """Render every stored qualification from the KB, exactly as `kb report ID` would."""
    written = write_run_reports(workspace, [r.id for r in outcome.results if r.id is not None])
    for result in outcome.results:
        path = written.paths.get(result.id) if result.id is not None else None
        result.report = str(path) if path else None
    outcome.index = str(written.index) if written.index else None
    outcome.report_errors.extend(written.errors)


def _vlr_evidence(
    session: Session,
    row: RulesetVersion,
    ruleset: Ruleset,
    models: ModelSet,
    samples: Sequence[Sample],
    normalize: str,
) -> dict[tuple[str, str], _RoleEvidence]:
    """Deltas, similarities and normalisation for every (assessment, bound role) over the batch."""
    assert row.id is not None
    found: dict[tuple[str, str], _RoleEvidence] = {}
    if not samples:
        return found
    for role in models.bound_roles():
        encoder = models.encoder(role)
        vectors = embed_images(session, encoder, {s.sha256: (lambda s=s: s.image) for s in samples})
        matrix = np.stack([vectors[s.sha256] for s in samples]).astype(np.float64)
        for a in ruleset.assessments.values():
            if not a.items_of(role):
                continue
            items = evidence_set(session, a, role, encoder)
            if items is None:
                empty = np.zeros(0)
                found[(a.key, role)] = _RoleEvidence(None, empty, empty, None, a.one_sided(role))
                continue
            deltas = items.deltas(matrix)
            norm, note = None, None
            if normalize == "batch":
                if len(samples) < 2:
                    note = "batch normalisation needs at least 2 images; use --normalize calibrated"
                else:
                    norm = population_stats(deltas, f"batch (n={len(samples)})")
            else:
                norm = stored_normalization(session, row.id, a.key, role, encoder.fingerprint)
                if norm is None:
                    note = (
                        "no calibration statistics for this model (too few reference images);"
                        " run `kb calibrate` or use --normalize batch"
                    )
            found[(a.key, role)] = _RoleEvidence(
                items, deltas, items.similarities(matrix), norm, note
            )
    return found


def _sample_evidence(
    key: str,
    role: str,
    index: int,
    evidence: dict[tuple[str, str], _RoleEvidence],
    models: ModelSet,
) -> VLREvidence:
    spec = models.spec(role)
    if spec is None:
        return VLREvidence(
            role,
            None,
            None,
            note=f"role {role!r} is not bound to a model in "
            "kb.toml ([roles]); `kb models` shows how to bind one",
        )
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
    if ev.norm is None:
        return VLREvidence(role, spec.name, fingerprint, delta=delta, items=items, note=ev.note)
    z = float(zscore(delta, ev.norm))
    return VLREvidence(
        role,
        spec.name,
        fingerprint,
        delta=delta,
        z=z,
        mu=ev.norm.mu,
        sigma=ev.norm.sigma,
        normalization=ev.norm.source,
        items=items,
    )


def _measure(
    sample: Sample, workspace: Workspace, um_per_px: float
) -> tuple[dict[str, float], dict[str, str]]:
    try:
        m = measure_image(sample.image, workspace.config.legend, um_per_px)
    except NotASegmentationMap as exc:
        return {}, dict.fromkeys(QUANTITIES, str(exc))
    return dict(m.quantities), dict(m.unmeasurable)


def _store(
    kb: KnowledgeBase, row: RulesetVersion, result: QualificationResult, sample: Sample
) -> None:
    """Append one qualification atomically; its time is in the stored document, its ID after."""
    assert row.id is not None
    moment = utcnow()
    result.created_at = moment.isoformat()
    with kb.transaction() as session:
        store_image(session, sample.sha256, sample.image, sample.format)
        record = append_qualification(
            session,
            sample_path=result.sample_path,
            sample_sha256=result.sample_sha256,
            ruleset_id=row.id,
            verdict=result.verdict,
            normalization=result.normalization,
            operator=result.operator,
            software_version=result.software_version,
            document=result.document(),
            created_at=moment,
            nodes=[
                NodeRecord(n.key, n.kind, n.parent, n.verdict, n.score, n.threshold, n.rationale)
                for n in result.nodes
            ],
        )
        result.id = record.id
