"""`kb sync`: compile rules/, store a new ruleset version if it changed, and embed its
prompts and references with the bound models so qualification finds them cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import Session

from engine.encoders.roles import ModelSet
from engine.evidence import ensure_reference_stats, evidence_set
from engine.metrology.quantities import QUANTITIES
from engine.results import ModelUse
from engine.session import VLKB
from kb.config import Workspace
from kb.errors import ModelLoadError, RulesError
from kb.rules import Ruleset, compile_rules
from kb.rulesets import (
    RulesetDiff,
    diff_rulesets,
    git_state,
    latest_version,
    store_ruleset,
    verified_ruleset,
)
from kb.statistics import reference_stat
from kb.tables import RulesetVersion


def check_measurements(ruleset: Ruleset) -> None:
    """Measurement rules must name a quantity metrology knows, in the unit it reports."""
    for a in ruleset.assessments.values():
        for rule in a.measurements:
            if rule.quantity not in QUANTITIES:
                known = ", ".join(QUANTITIES)
                raise RulesError(
                    f"rules/{a.source}: unknown quantity {rule.quantity!r}; "
                    f"known quantities: {known}"
                )
            unit = QUANTITIES[rule.quantity]
            if rule.unit != unit:
                raise RulesError(
                    f"rules/{a.source}: {rule.quantity} is measured in {unit!r}, "
                    f"not {rule.unit!r}; give the limit in {unit}"
                )


def compile_workspace(workspace: Workspace) -> Ruleset:
    """Compile and validate everything the engine will rely on."""
    ruleset = compile_rules(workspace.rules_dir)
    check_measurements(ruleset)
    return ruleset


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
    return row, verified_ruleset(session, row)


@dataclass
class SyncResult:
    version: int
    content_hash: str
    created: bool
    diff: RulesetDiff
    git_commit: str | None
    models: list[ModelUse] = field(default_factory=list)
    uncalibrated: list[str] = field(default_factory=list)  # "EA-1 text: why"

    def to_dict(self) -> dict[str, object]:
        return {
            "version": self.version,
            "hash": self.content_hash,
            "created": self.created,
            "changes": self.diff.to_dict(),
            "git_commit": self.git_commit,
            "models": [m.to_dict() for m in self.models],
            "uncalibrated": self.uncalibrated,
        }


def prepare_embeddings(
    session: Session, row: RulesetVersion, ruleset: Ruleset, models: ModelSet
) -> list[str]:
    """Embed prompts and references and store reference statistics; say what stays uncalibrated.

    Where the statistics of an assessment and role are stored already for this model, its
    embeddings are too: nothing is loaded, so re-syncing unchanged rules costs no model.
    """
    assert row.id is not None
    missing = []
    for role in models.bound_roles():
        for a in ruleset.assessments.values():
            if not a.items_of(role):
                continue
            if a.one_sided(role):
                missing.append(f"{a.key} {role}: {a.one_sided(role)}")
                continue
            if reference_stat(session, row.id, a.key, role, models.fingerprint(role)):
                continue
            encoder = models.encoder(role)
            items = evidence_set(session, a, role, encoder)
            assert items is not None
            if ensure_reference_stats(session, row.id, a, role, encoder, items) is None:
                missing.append(
                    f"{a.key} {role}: too few reference images to calibrate z-scores from them "
                    "(need 2 of one polarity and 1 of the other, with some spread); "
                    "use --normalize batch or `kb calibrate`"
                )
    return missing


def sync_workspace(vlkb: VLKB) -> SyncResult:
    """All or nothing: on any error (rules, images, models, database) nothing is written."""
    workspace, kb, models = vlkb.workspace, vlkb.kb, vlkb.models
    ruleset = compile_workspace(workspace)
    with kb.transaction() as session:
        latest = latest_version(session)
        previous = verified_ruleset(session, latest) if latest is not None else None
        if latest is not None and latest.content_hash == ruleset.content_hash:
            row, created, diff = latest, False, RulesetDiff()
        else:
            git = git_state(workspace.root)
            row = store_ruleset(session, ruleset, workspace.rules_dir, git)
            created, diff = True, diff_rulesets(previous, ruleset)
        uncalibrated = prepare_embeddings(session, row, ruleset, models)
        return SyncResult(
            version=row.version,
            content_hash=row.content_hash,
            created=created,
            diff=diff,
            git_commit=row.git_commit,
            models=models.uses(),
            uncalibrated=uncalibrated,
        )


def sync_or_undo(
    vlkb: VLKB,
    created: list[Path],
    expect_references: str | None = None,
) -> SyncResult:
    """Sync after files were written into rules/; remove them again if the sync fails, except
    when only a model could not load: the rules compiled, so the files are kept.

    With `expect_references` (an assessment key) the new files must also end up among that
    assessment's references, so a custom glob cannot silently ignore them.
    """
    try:
        if expect_references is not None and created:
            workspace = vlkb.workspace
            ruleset = compile_workspace(workspace)
            used = {r.path for r in ruleset.assessments[expect_references].references}
            for path in created:
                rel = path.relative_to(workspace.rules_dir).as_posix()
                if rel not in used:
                    raise RulesError(
                        f"rules/{rel} is not matched by the reference globs of "
                        f"{expect_references}; add its folder to [references] in the assessment"
                    )
        return sync_workspace(vlkb)
    except ModelLoadError as exc:  # the files are sound: keep them, say what to do next
        written = ", ".join(p.relative_to(vlkb.workspace.root).as_posix() for p in created)
        raise ModelLoadError(
            f"{written or 'rules/'} written and kept, but not synced: {exc}. Bind a model "
            "that loads (see `kb models`), then run `kb sync`"
        ) from exc
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
