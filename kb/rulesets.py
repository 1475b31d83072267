"""Ruleset versions in the knowledge base: store a compiled Ruleset once, diff two versions."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path

from sqlmodel import Session, col, select

from kb.audit import RULESET, chain_record, check_recorded
from kb.errors import DatabaseError, RulesError
from kb.image_store import store_image_file
from kb.rules import Ruleset
from kb.tables import AssessmentRow, PromptRow, ReferenceRow, RulesetVersion


def software_version() -> str:
    return package_version("vlkb")


@dataclass(frozen=True)
class GitState:
    commit: str | None
    dirty: bool


def git_state(workspace_root: Path) -> GitState:
    """The commit of the workspace and whether rules/ has uncommitted edits (None outside git)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(workspace_root), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    if git("rev-parse", "--show-toplevel") is None:
        return GitState(None, False)
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", "rules")
    return GitState(commit, bool(status))


def latest_version(session: Session) -> RulesetVersion | None:
    return session.exec(
        select(RulesetVersion).order_by(col(RulesetVersion.version).desc()).limit(1)
    ).first()


def get_version(session: Session, number: int) -> RulesetVersion:
    row = session.exec(select(RulesetVersion).where(RulesetVersion.version == number)).first()
    if row is None:
        raise RulesError(f"no ruleset version {number}; `kb sync` creates versions")
    return row


def ruleset_of(row: RulesetVersion) -> Ruleset:
    return Ruleset.from_dict(json.loads(row.snapshot_json))


def verified_ruleset(session: Session, row: RulesetVersion) -> Ruleset:
    """The snapshot the engine judges with, refused if it is not the one that was synced:
    it must hash to its content hash and match its audit-chain entry."""
    try:
        data = json.loads(row.snapshot_json)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    except ValueError:
        canonical = None
    if canonical is None or hashlib.sha256(canonical.encode("utf-8")).hexdigest() != (
        row.content_hash
    ):
        raise DatabaseError(
            f"ruleset version {row.version}: its stored snapshot does not hash to its content "
            "hash (edited after it was synced); it is not used: run `kb audit verify`"
        )
    check_recorded(session, RULESET, row)
    return Ruleset.from_dict(data)


def store_ruleset(
    session: Session, ruleset: Ruleset, rules_dir: Path, git: GitState
) -> RulesetVersion:
    """Write a new immutable version with its assessments, prompts and reference images."""
    previous = latest_version(session)
    row = RulesetVersion(
        version=(previous.version + 1) if previous else 1,
        content_hash=ruleset.content_hash,
        git_commit=git.commit,
        git_dirty=git.dirty,
        software_version=software_version(),
        snapshot_json=json.dumps(ruleset.to_dict(), sort_keys=True),
    )
    session.add(row)
    session.flush()
    assert row.id is not None
    chain_record(session, RULESET, row)
    for a in ruleset.assessments.values():
        session.add(
            AssessmentRow(
                ruleset_id=row.id, key=a.key, name=a.name, criterion=a.criterion, parent=a.parent
            )
        )
        for p in a.prompts:
            session.add(
                PromptRow(
                    ruleset_id=row.id,
                    assessment_key=a.key,
                    polarity=p.polarity,
                    variant=p.variant,
                    text=p.text,
                    sha256=p.sha256,
                )
            )
        for r in a.references:
            store_image_file(session, rules_dir / r.path, r.sha256, keep_bytes=True)
            session.add(
                ReferenceRow(
                    ruleset_id=row.id,
                    assessment_key=a.key,
                    polarity=r.polarity,
                    path=r.path,
                    sha256=r.sha256,
                )
            )
    session.flush()
    return row


@dataclass
class RulesetDiff:
    """What changed between two rulesets, in words an expert recognises."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: dict[str, list[str]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def lines(self) -> list[str]:
        out = [f"+ {key}" for key in self.added] + [f"- {key}" for key in self.removed]
        for key, details in sorted(self.changed.items()):
            out += [f"~ {key}: {d}" for d in details]
        return out

    def to_dict(self) -> dict[str, object]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed}


def diff_rulesets(old: Ruleset | None, new: Ruleset) -> RulesetDiff:
    """Added / removed / changed gates and assessments, down to single prompts and references."""
    diff = RulesetDiff()
    old_nodes = _nodes(old) if old else {}
    new_nodes = _nodes(new)
    diff.added = sorted(set(new_nodes) - set(old_nodes))
    diff.removed = sorted(set(old_nodes) - set(new_nodes))
    for key in sorted(set(old_nodes) & set(new_nodes)):
        details = _node_changes(old_nodes[key], new_nodes[key])
        if details:
            diff.changed[key] = details
    return diff


def _nodes(ruleset: Ruleset) -> dict[str, dict]:
    data = ruleset.to_dict()
    return {
        **{f"gate {k}": v for k, v in data["gates"].items()},
        **{f"assessment {k}": v for k, v in data["assessments"].items()},
    }


def _node_changes(old: dict, new: dict) -> list[str]:
    details = []
    for name in sorted(set(old) | set(new)):
        if name == "source" or old.get(name) == new.get(name):
            continue
        if name == "prompts":
            details += _set_changes(
                "prompt", old[name], new[name], lambda p: f"{p['polarity']} {p['text']!r}"
            )
        elif name == "references":
            details += _set_changes(
                "reference",
                old[name],
                new[name],
                lambda r: f"{r['polarity']} {r['path']} ({r['sha256'][:12]})",
            )
        else:
            details.append(f"{name} changed: {old.get(name)!r} -> {new.get(name)!r}")
    return details


def _set_changes(kind: str, old: list, new: list, label) -> list[str]:
    before, after = {label(x) for x in old}, {label(x) for x in new}
    return [f"added {kind} {x}" for x in sorted(after - before)] + [
        f"removed {kind} {x}" for x in sorted(before - after)
    ]
