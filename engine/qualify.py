"""`kb qualify`: judge micrographs against the current ruleset and append them to the audit log.

Each image is decoded and embedded once per model; prompt and reference embeddings come from
the KB cache; deltas are standardised over the batch or with stored statistics; the tree is
walked per image; the qualifications of a chunk are stored in one transaction, and if that
fails one by one, so one bad file never loses the others.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from sqlmodel import Session

from engine.appearance import measured_legend
from engine.calibrate import calibrated_thresholds, with_threshold
from engine.encoders.roles import ModelSet
from engine.evidence import RolePlan, plan_roles
from engine.few_shot import ReferenceThreshold, reference_thresholds
from engine.judging import (
    Judged,
    RunPlan,
    SampleDeltas,
    deltas_of_files,
    embed_batches,
    judge_files,
    wanted_vectors,
)
from engine.local_evidence import plan_local
from engine.report_files import output_dir, write_run_reports
from engine.results import QualificationResult, SampleFailure
from engine.samples import Sample, read_image_bytes
from engine.scoring import population_stats
from engine.session import VLKB
from engine.sync import current_ruleset, prepare_embeddings
from kb.audit import NodeRecord, append_qualification, check_writable, is_blank, os_user
from kb.config import ROLES, check_pixel_size_option
from kb.embeddings import cached_embeddings, store_embeddings
from kb.errors import AuditKeyError, DatabaseError, ImageError, OptionError, VLKBError
from kb.history import documents_under_ruleset
from kb.image_store import add_image
from kb.rules import Decision, Ruleset
from kb.rulesets import software_version
from kb.statistics import latest_calibration
from kb.store import KnowledgeBase
from kb.tables import RulesetVersion, utcnow
from kb.vocabulary import EXECUTORS, FUSIONS, NORMALIZATIONS, PURPOSES

if TYPE_CHECKING:  # the backends import torch; ModelSet loads them when a role is used
    from engine.encoders.backends import Encoder

# Where a qualification's operator name came from: recorded beside it, so an auditor can tell
# a person who named themselves from the account a process happened to run as.
OPERATOR_SOURCES = ("cli-option", "request", "signed-in", "os-user")
CHUNK = 32  # files decoded and embedded together; memory stays flat however many there are
MIN_BATCH = 10  # fewer images than this give batch z-scores no one should rely on


class Progress(Protocol):
    """Told how far a run has got: a stage name, files done and files in that stage."""

    def __call__(self, stage: str, done: int, total: int) -> None: ...


@dataclass(frozen=True)
class QualifyOptions:
    normalize: str = "calibrated"
    um_per_px: float | None = None  # overrides the workspace default for this run
    operator: str | None = None
    operator_source: str = "cli-option"  # where operator came from, when it is given
    report: bool = False  # write each stored qualification's HTML report (and a run index)
    skip_existing: bool = False  # skip files already judged under the same conditions
    decision: DecisionOverride | None = None  # this request's fusion / threshold, not the rules'
    executor: ExecutorOptions = field(default_factory=lambda: ExecutorOptions())
    purpose: str = "qualification"  # evaluation: recorded as a kb evaluate run
    store: bool = True  # False: judge only, append nothing to the audit log (evaluate --no-store)

    def __post_init__(self) -> None:
        """Every option checked here, once, whoever built it (the CLI, the web, a script)."""
        if self.normalize not in NORMALIZATIONS:
            raise VLKBError(
                f"unknown normalisation {self.normalize!r}; use one of {', '.join(NORMALIZATIONS)}"
            )
        if self.um_per_px is not None:
            check_pixel_size_option(self.um_per_px)
        if self.operator_source not in OPERATOR_SOURCES:
            raise VLKBError(
                f"unknown operator source {self.operator_source!r}; "
                f"use one of {', '.join(OPERATOR_SOURCES)}"
            )
        if self.purpose not in PURPOSES:
            raise VLKBError(
                f"unknown purpose {self.purpose!r}; use one of {', '.join(PURPOSES)}"
            )
        if self.report and not self.store:
            raise VLKBError("reports are rendered from stored records: --report needs storing")

    def who(self) -> tuple[str, str]:
        """(operator, where the name came from): the given name, else the OS user, said so."""
        if not is_blank(self.operator):
            return (self.operator or "").strip(), self.operator_source
        return os_user(), "os-user"


@dataclass(frozen=True)
class ExecutorOptions:
    """Where the embedding and judging run: in this process (the default, no Ray needed) or
    on Ray workers (`ray`: a cluster at `address`, else a local one; `workers` actors, else
    one per CPU of the cluster). The results are the same either way; the driver stores."""

    kind: str = "in-process"
    address: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise OptionError("executor", f"{self.kind!r} is unknown; use one of "
                              f"{', '.join(EXECUTORS)}")
        if self.workers is not None and self.workers < 1:
            raise OptionError("workers", f"must be at least 1, got {self.workers}")
        if self.kind != "ray":
            for option, value in (("ray_address", self.address), ("workers", self.workers)):
                if value is not None:
                    raise OptionError(option, "is an option of the Ray executor: add "
                                      "--executor ray")


@dataclass(frozen=True)
class DecisionOverride:
    """Fusion and thresholds for one run only (the web page's controls); rules/ is unchanged.

    Every field left None keeps the assessment's own (or calibrated) value. The override is
    recorded in each stored qualification, so the audit trail says what was changed.
    """

    fusion: str | None = None
    weights: dict[str, float] | None = None
    threshold: float | None = None
    review_margin: float | None = None

    def __post_init__(self) -> None:
        if self.fusion is not None and self.fusion not in FUSIONS:
            raise VLKBError(f"unknown fusion {self.fusion!r}; use one of {', '.join(FUSIONS)}")
        if self.weights is not None:
            unknown = sorted(set(self.weights) - set(ROLES))
            if unknown:
                raise VLKBError(f"unknown role(s) in weights: {', '.join(unknown)}; "
                                f"roles are {', '.join(ROLES)}")
            if any(w < 0 for w in self.weights.values()) or not any(self.weights.values()):
                raise VLKBError("weights must not be negative and must not all be zero")
        numbers = {"threshold": self.threshold, "review margin": self.review_margin,
                   **{f"weight of {role}": w for role, w in (self.weights or {}).items()}}
        for name, value in numbers.items():
            if value is not None and not math.isfinite(value):
                raise VLKBError(f"the {name} must be a finite number, got {value!r}")
        if self.review_margin is not None and self.review_margin < 0:
            raise VLKBError("the review margin must not be negative")

    def apply(self, decision: Decision) -> Decision:
        weights = {**decision.weights, **self.weights} if self.weights else decision.weights
        return replace(
            decision,
            fusion=self.fusion or decision.fusion,
            weights=weights,
            threshold=decision.threshold if self.threshold is None else self.threshold,
            review_margin=(
                decision.review_margin if self.review_margin is None else self.review_margin
            ),
        )

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def of_run(
        cls,
        fusion: str | None,
        weights: Mapping[str, float] | None,
        threshold: float | None,
        review_margin: float | None,
    ) -> DecisionOverride | None:
        """This run's override, or None when none of its four values was given."""
        if fusion is None and not weights and threshold is None and review_margin is None:
            return None
        return cls(fusion, dict(weights) if weights else None, threshold, review_margin)


def role_weights(pairs: Sequence[str]) -> dict[str, float]:
    """`ROLE=NUMBER` items (the CLI's --weight, the web's weight=) as role weights."""
    parsed: dict[str, float] = {}
    for item in pairs:
        role, _, value = item.partition("=")
        try:
            parsed[role.strip()] = float(value)
        except ValueError:
            raise OptionError("weight", f"{item!r}: write ROLE=NUMBER, e.g. image=2") from None
    return parsed


@dataclass
class QualifyOutcome:
    results: list[QualificationResult] = field(default_factory=list)
    failures: list[SampleFailure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # paths judged before (--skip-existing)
    stored: int = 0
    index: str | None = None  # the run's index.html, for a reported run of 2+ samples
    report_errors: list[str] = field(default_factory=list)  # reports that could not be written
    warnings: list[str] = field(default_factory=list)  # judged, but a person should know why


class Executor(Protocol):
    """Who embeds and judges: both executors stream one item per file, in input order; the
    caller (the driver) is the only one that writes to the knowledge base."""

    def deltas(
        self, plan: RunPlan, paths: Sequence[Path]
    ) -> Iterator[SampleFailure | SampleDeltas]:
        """Pass one of --normalize batch."""
        ...

    def judged(
        self, plan: RunPlan, paths: Sequence[Path]
    ) -> Iterator[SampleFailure | Judged]:
        """Each file judged (or why it could not be)."""
        ...


def qualify_paths(
    vlkb: VLKB,
    paths: Sequence[Path],
    options: QualifyOptions | None = None,
    *,
    progress: Progress | None = None,
    on_result: Callable[[QualificationResult], None] | None = None,
    keep_results: bool = True,
    sample_names: Mapping[Path, str] | None = None,
) -> QualifyOutcome:
    """Qualify files chunk by chunk; unreadable ones are reported and the rest still judged.

    on_result sees each stored qualification as soon as it is stored; keep_results=False
    keeps only their count, so a run over thousands of files holds none of them in memory.
    sample_names: what to record as a file's sample path instead of its resolved path (a web
    upload lives in a temporary file; its record keeps the name it was uploaded under).
    """
    options = options or QualifyOptions()
    if options.report:
        output_dir(vlkb.workspace)  # refuse a bad output folder before anything is stored
    progress = progress or (lambda stage, done, total: None)
    outcome = QualifyOutcome()
    chosen = executor_for(vlkb, options.executor)  # a missing Ray is refused before anything
    row, plan, judged_before = _plan_run(vlkb, options)
    with chosen as executor:
        pending = _without_judged(paths, judged_before, outcome)
        outcome.warnings += _warnings(plan.setup, options.normalize, len(pending))
        skip: frozenset[int] = frozenset()
        if options.normalize == "batch":
            skip = _batch_normalization(executor, plan, pending, outcome, progress)
        done = 0
        ready: list[Judged] = []
        for position, item in enumerate(executor.judged(plan, pending)):
            if position in skip:
                continue  # failed in pass one, reported there, not in its statistics
            done += 1
            progress("judging", done, len(pending) - len(skip))
            if isinstance(item, SampleFailure):
                outcome.failures.append(item)
                continue
            if sample_names and Path(item.shown) in sample_names:
                item.result.sample_path = sample_names[Path(item.shown)]
            if not options.store:
                _keep(item.result, outcome, keep_results, on_result)
                continue
            ready.append(item)
            if len(ready) == CHUNK:
                _store_ready(vlkb.kb, row, ready, outcome, keep_results, on_result)
                ready = []
        _store_ready(vlkb.kb, row, ready, outcome, keep_results, on_result)
    if options.report:
        _write_reports(vlkb, outcome)
    return outcome


def executor_for(vlkb: VLKB, options: ExecutorOptions) -> AbstractContextManager[Executor]:
    """The executor a run asked for; Ray is imported only when it is the one."""
    if options.kind == "ray":
        from engine.ray_executor import RayExecutor

        return RayExecutor(vlkb.workspace, options)
    return nullcontext(InProcess(vlkb.kb, vlkb.models))


def _plan_run(
    vlkb: VLKB, options: QualifyOptions
) -> tuple[RulesetVersion, RunPlan, frozenset[str]]:
    """The run's ruleset, statistics and thresholds, fixed once in one transaction (which
    also embeds prompts and references the cache lacks), and the files judged before."""
    workspace, kb, models = vlkb.workspace, vlkb.kb, vlkb.models
    um_per_px = workspace.config.pixel_size(options.um_per_px)
    operator, operator_source = options.who()
    models.encoders()  # load before taking the write lock: other writers need not wait for it
    with kb.transaction() as session:
        check_writable(session)  # a keyed chain without its key: refuse before judging
        row, ruleset = current_ruleset(session, workspace)
        assert row.id is not None
        prepare_embeddings(session, row, ruleset, models)
        calibration = (
            latest_calibration(session, row.id) if options.normalize == "calibrated" else None
        )
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
            operator=operator,
            operator_source=operator_source,
            purpose=options.purpose,
            um_per_px=um_per_px,
            calibration=calibration.id if calibration is not None else None,
            decision=options.decision.to_dict() if options.decision else None,
        )
        judged_before = (
            qualified_shas(session, row.id, base) if options.skip_existing else frozenset()
        )
        legend = measured_legend(ruleset, workspace.config.legend)
        setup = plan_roles(session, row.id, ruleset, models, options.normalize, legend)
        wants_local = any(a.local is not None for a in ruleset.assessments.values())
        local = (plan_local(session, ruleset, models.encoder("local"), models.local_plans)
                 if wants_local and models.spec("local") is not None else {})
        thresholds = calibrated_thresholds(calibration)
        from_references = {
            key: choice
            for key, choice in reference_thresholds(session, ruleset, models, setup).items()
            if key not in thresholds
        } if options.normalize == "calibrated" else {}
    ruleset = _with_reference_thresholds(_with_thresholds(ruleset, thresholds), from_references)
    if options.decision is not None:
        ruleset = _with_decision(ruleset, options.decision)
    sources = _threshold_sources(
        ruleset, thresholds, base.calibration, options.decision, from_references
    )
    plan = RunPlan(ruleset, setup, base, um_per_px, legend, sources, local)
    return row, plan, judged_before


class InProcess:
    """The default executor: this process embeds through the knowledge base's cache (so each
    image is embedded once per model, ever) and judges, chunk by chunk."""

    def __init__(self, kb: KnowledgeBase, models: ModelSet) -> None:
        self.kb = kb
        self.models = models

    def deltas(
        self, plan: RunPlan, paths: Sequence[Path]
    ) -> Iterator[SampleFailure | SampleDeltas]:
        for chunk in chunks(paths):
            yield from deltas_of_files(plan, self.models, chunk, lambda s: self._vectors(s, plan))

    def judged(
        self, plan: RunPlan, paths: Sequence[Path]
    ) -> Iterator[SampleFailure | Judged]:
        for chunk in chunks(paths):
            yield from judge_files(plan, self.models, chunk, lambda s: self._vectors(s, plan),
                                   keep_vectors=False)

    def _vectors(
        self, samples: Sequence[Sample], plan: RunPlan
    ) -> dict[tuple[str, str], dict[str, np.ndarray]]:
        """The chunk's vectors as the cache holds them (float32), embedding what it lacks."""
        wanted = wanted_vectors(self.models, plan)
        self._embed_unlocked(samples, wanted)
        shas = [s.sha256 for s in samples]
        with self.kb.reading() as session:
            return {
                (fingerprint, modality): cached_embeddings(session, fingerprint, modality, shas)
                for fingerprint, modality in wanted
            }

    def _embed_unlocked(
        self, samples: Sequence[Sample], wanted: Mapping[tuple[str, str], Encoder]
    ) -> None:
        """Fill the embedding cache for a chunk with no lock held while the model runs, so a
        long chunk never keeps another writer (a server beside this run) waiting; only the
        insert takes the write lock."""
        shas = list(dict.fromkeys(s.sha256 for s in samples))
        for (fingerprint, modality), encoder in wanted.items():
            with self.kb.reading() as session:
                cached = cached_embeddings(session, fingerprint, modality, shas)
            missing = [sha for sha in shas if sha not in cached]
            if not missing:
                continue
            vectors = embed_batches(encoder, samples, modality, missing)
            with self.kb.transaction() as session:
                store_embeddings(session, fingerprint, modality, vectors)


def qualified_shas(session: Session, ruleset_id: int, run: QualificationResult) -> frozenset[str]:
    """Samples already judged under this ruleset, normalisation, calibration, models and scale."""
    wanted = _conditions(run.document())
    return frozenset(
        sha for sha, stored in documents_under_ruleset(session, ruleset_id)
        if _conditions(stored) == wanted
    )


def _conditions(document: dict) -> tuple:
    return (
        document.get("normalization"),
        document.get("calibration"),
        document.get("um_per_px"),
        json.dumps(document.get("decision_override"), sort_keys=True),
        tuple(sorted((m.get("role"), m.get("fingerprint")) for m in document.get("models", []))),
    )


def _without_judged(
    paths: Sequence[Path], judged: frozenset[str], outcome: QualifyOutcome
) -> list[Path]:
    if not judged:
        return [Path(p) for p in paths]
    pending = []
    for path in map(Path, paths):
        try:
            sha = hashlib.sha256(read_image_bytes(path)).hexdigest()
        except ImageError:
            sha = None  # load_sample will say what is wrong with it
        if sha in judged:
            outcome.skipped.append(str(path))
        else:
            pending.append(path)
    return pending


def chunks(paths: Sequence[Path]) -> Iterator[Sequence[Path]]:
    """Files in chunks of CHUNK: decoded and embedded together, so memory stays flat."""
    for start in range(0, len(paths), CHUNK):
        yield paths[start : start + CHUNK]


def _warnings(
    setup: Mapping[tuple[str, str], RolePlan], normalize: str, images: int
) -> list[str]:
    """What will make this run's vision-language evidence missing or shaky, said up front."""
    warnings = [
        f"{key} {role} evidence is not assessed: {plan.note}"
        for (key, role), plan in sorted(setup.items())
        if plan.note is not None
    ]
    if normalize == "batch" and 0 < images < MIN_BATCH:
        warnings.append(
            f"--normalize batch standardises each score by this run's own {images} image(s); "
            f"fewer than {MIN_BATCH} give unstable z-scores: use calibrated normalisation "
            "(references or `kb calibrate`) for small runs"
        )
    return warnings


def _with_thresholds(ruleset: Ruleset, thresholds: dict[str, float]) -> Ruleset:
    if not thresholds:
        return ruleset
    assessments = {
        key: with_threshold(a, thresholds.get(key)) for key, a in ruleset.assessments.items()
    }
    return replace(ruleset, assessments=assessments)


def _with_reference_thresholds(
    ruleset: Ruleset, chosen: Mapping[str, ReferenceThreshold]
) -> Ruleset:
    """Assessments whose rules leave the threshold (and band) to their references."""
    if not chosen:
        return ruleset
    assessments = dict(ruleset.assessments)
    for key, choice in chosen.items():
        decision = replace(assessments[key].decision, threshold=choice.threshold)
        if choice.review_margin is not None:
            decision = replace(decision, review_margin=choice.review_margin)
        assessments[key] = replace(assessments[key], decision=decision)
    return replace(ruleset, assessments=assessments)


def _with_decision(ruleset: Ruleset, override: DecisionOverride) -> Ruleset:
    assessments = {
        key: replace(a, decision=override.apply(a.decision))
        for key, a in ruleset.assessments.items()
    }
    return replace(ruleset, assessments=assessments)


def _threshold_sources(
    ruleset: Ruleset,
    calibrated: Mapping[str, float],
    calibration: int | None,
    override: DecisionOverride | None,
    from_references: Mapping[str, ReferenceThreshold],
) -> dict[str, str]:
    """Where each assessment's threshold came from: the rules, a calibration, the references'
    leave-one-out scores, or this run."""
    sources = {}
    for key in ruleset.assessments:
        if override is not None and override.threshold is not None:
            sources[key] = "run override"
        elif key in calibrated:
            sources[key] = f"calibration {calibration}"
        elif key in from_references:
            sources[key] = from_references[key].source
        else:
            sources[key] = "rules"
    return sources


def _batch_normalization(
    executor: Executor,
    plan: RunPlan,
    paths: Sequence[Path],
    outcome: QualifyOutcome,
    progress: Progress,
) -> frozenset[int]:
    """First pass of a batch run: every delta, for statistics over all images of the run.

    Returns the positions of the files that failed. The second pass goes over the same list,
    so every chunk holds the same images as here (and so the same vectors), and leaves those
    out.
    """
    deltas: dict[tuple[str, str], list[float]] = {key: [] for key in plan.setup}
    failed: set[int] = set()
    for position, item in enumerate(executor.deltas(plan, paths)):
        if isinstance(item, SampleFailure):
            outcome.failures.append(item)
            failed.add(position)
        else:
            for key, delta in item.deltas.items():
                deltas[key].append(delta)
        progress("embedding", position + 1, len(paths))
    for key, values in deltas.items():
        if plan.setup[key].items is None:
            continue
        if len(values) < 2:
            plan.setup[key].note = (
                "batch normalisation needs at least 2 images; use --normalize calibrated"
            )
        else:
            plan.setup[key].norm = population_stats(
                np.asarray(values, dtype=np.float64), f"batch (n={len(values)})"
            )
    return frozenset(failed)


def _write_reports(vlkb: VLKB, outcome: QualifyOutcome) -> None:
    """Render every stored qualification from the KB, exactly as `kb report ID` would."""
    written = write_run_reports(vlkb, [r.id for r in outcome.results if r.id is not None])
    for result in outcome.results:
        path = written.paths.get(result.id) if result.id is not None else None
        result.report = str(path) if path else None
    outcome.index = str(written.index) if written.index else None
    outcome.report_errors.extend(written.errors)


def _store_ready(
    kb: KnowledgeBase,
    row: RulesetVersion,
    ready: Sequence[Judged],
    outcome: QualifyOutcome,
    keep_results: bool,
    on_result: Callable[[QualificationResult], None] | None,
) -> None:
    """Store a chunk of judged files in one transaction; if that fails, store them one by one,
    so the file at fault is reported and the others are kept."""
    if not ready:
        return
    try:
        store_chunk(kb, row, ready)
        stored = list(ready)
    except AuditKeyError:
        raise  # the key is wrong for every file alike: refuse the run
    except (VLKBError, OSError):
        stored = []
        for item in ready:
            try:
                store_chunk(kb, row, [item])
            except AuditKeyError:
                raise
            except (VLKBError, OSError) as exc:  # locked, read-only, disk full...
                item.result.id = None
                cause = "database" if isinstance(exc, DatabaseError | OSError) else "input"
                outcome.failures.append(
                    SampleFailure(item.shown, f"{item.shown}: not stored: {exc}", cause)
                )
                continue
            stored.append(item)
    for item in stored:
        outcome.stored += 1
        _keep(item.result, outcome, keep_results, on_result)


def _keep(
    result: QualificationResult,
    outcome: QualifyOutcome,
    keep_results: bool,
    on_result: Callable[[QualificationResult], None] | None,
) -> None:
    if keep_results:
        outcome.results.append(result)
    if on_result is not None:
        on_result(result)


def store_chunk(kb: KnowledgeBase, row: RulesetVersion, chunk: Sequence[Judged]) -> None:
    """Append qualifications atomically, in order, with their images and the vectors embedded
    for them: one transaction and one hold of the chain head for the whole chunk. Each time is
    in its stored document, each ID set after."""
    assert row.id is not None
    with kb.transaction() as session:
        for judged in chunk:
            _add_qualification(session, row.id, judged)


def _add_qualification(session: Session, ruleset_id: int, judged: Judged) -> None:
    result, image = judged.result, judged.image
    moment = utcnow()
    result.created_at = moment.isoformat()
    for (fingerprint, modality), vector in judged.vectors.items():
        store_embeddings(session, fingerprint, modality, {image.sha256: vector})
    stored = add_image(session, image.sha256, image.width, image.height, image.format,
                       image.thumbnail_png)
    result.thumbnail_sha256 = hashlib.sha256(stored.thumbnail_png).hexdigest()
    record = append_qualification(
        session,
        sample_path=result.sample_path,
        sample_sha256=result.sample_sha256,
        ruleset_id=ruleset_id,
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
