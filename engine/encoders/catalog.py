"""What `kb models` reports: each configured model, its roles and whether it loads offline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.encoders.backends import BACKENDS, offline_status
from engine.encoders.fingerprint import model_fingerprint
from kb.config import ROLES, Workspace


@dataclass(frozen=True)
class ModelStatus:
    name: str
    backend: str
    source: str
    roles: list[str]
    available: bool
    detail: str  # the local directory, or why the weights are not available and how to get them
    fingerprint: str | None
    unbound_roles: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "backend": self.backend,
            "source": self.source,
            "roles": self.roles,
            "offline": self.available,
            "detail": self.detail,
            "fingerprint": self.fingerprint,
        }


def model_statuses(workspace: Workspace, verify: bool = False) -> list[ModelStatus]:
    """Checks the files only: nothing is loaded and the network is never touched.

    verify: rehash every weight file instead of trusting the kept fingerprint.
    """
    config = workspace.config
    unbound = [role for role in ROLES if config.roles.get(role) is None]
    statuses = []
    for spec in config.models.values():
        roles = [role for role in ROLES if config.roles.get(role) == spec.name]
        if spec.backend not in BACKENDS:
            available, detail = False, f"unknown backend {spec.backend!r}; use one of {BACKENDS}"
        else:
            available, detail = offline_status(spec)
        fingerprint = None
        if available:
            fingerprint = model_fingerprint(Path(detail), verify)
        statuses.append(
            ModelStatus(
                spec.name, spec.backend, spec.source, roles, available, detail, fingerprint, unbound
            )
        )
    return statuses


def unbound_role_notes(unbound: list[str]) -> list[str]:
    """What an unbound role costs and how to bind it, one line per role."""
    notes = {
        "text": (
            "role 'text' is unbound, so text-prompt evidence is not assessed: prompts need a "
            "vision-language model such as CLIP, loaded from a local folder or the Hugging Face "
            'cache; to add it, make one load offline and set [roles] text = "clip" in kb.toml'
        ),
        "image": (
            "role 'image' is unbound, so reference images are not used; to add them, run "
            '`kb models install efficientnet-lite0` and set [roles] image = "NAME" of a '
            '[models.NAME] with backend = "cnn" and source = "vlkb:efficientnet-lite0"'
        ),
    }
    return [notes.get(role, f"role {role!r} is unbound") for role in unbound]
