"""The models a workspace binds to roles, each loaded at most once per command."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.results import ModelUse
from kb.config import ROLES, VECTOR_ROLES, ModelSpec, WorkspaceConfig
from kb.errors import ModelLoadError

if TYPE_CHECKING:  # the backends import torch: only a command that embeds pays for it
    from engine.encoders.base import Encoder
    from engine.local_evidence import LocalPlan


class ModelSet:
    """Lazy access to the encoder behind each role; a model bound to two roles loads once."""

    def __init__(self, config: WorkspaceConfig) -> None:
        self._config = config
        self._loaded: dict[str, Encoder] = {}
        self._fingerprints: dict[str, str] = {}
        # Fitted local banks (engine.local_evidence), kept as long as the models that made
        # them, so a server judging one upload at a time fits each bank once.
        self.local_plans: dict[tuple, LocalPlan] = {}

    def spec(self, role: str) -> ModelSpec | None:
        return self._config.model_for_role(role)

    def is_loaded(self, role: str) -> bool:
        """Whether the model behind this role is in memory already (a server shows this)."""
        spec = self.spec(role)
        return spec is not None and spec.name in self._loaded

    def bound_roles(self) -> list[str]:
        """The bound roles whose evidence is embeddings (text, image); `local` is apart."""
        return [role for role in VECTOR_ROLES if self.spec(role) is not None]

    def all_bound_roles(self) -> list[str]:
        """Every bound role, `local` included."""
        return [role for role in ROLES if self.spec(role) is not None]

    def encoder(self, role: str) -> Encoder:
        spec = self.spec(role)
        if spec is None:
            raise KeyError(f"role {role!r} is not bound to a model")
        if spec.name not in self._loaded:
            from engine.encoders.backends import load_encoder

            self._loaded[spec.name] = load_encoder(spec)
        return self._loaded[spec.name]

    def encoders(self) -> list[Encoder]:
        """Every distinct encoder of the bound roles, loading them now."""
        return list(
            {
                self.encoder(role).spec.name: self.encoder(role)
                for role in self.all_bound_roles()
            }.values()
        )

    def fingerprint(self, role: str) -> str:
        """The fingerprint of the model behind this role, without loading it (torch-free)."""
        spec = self.spec(role)
        if spec is None:
            raise KeyError(f"role {role!r} is not bound to a model")
        if spec.name in self._loaded:
            return self._loaded[spec.name].fingerprint
        if spec.name not in self._fingerprints:
            from engine.encoders.backends import resolve_model_dir
            from engine.encoders.fingerprint import model_fingerprint

            try:
                folder = resolve_model_dir(spec.source)
            except ModelLoadError:  # not on disk: loading downloads it, or says why it cannot
                return self.encoder(role).fingerprint
            self._fingerprints[spec.name] = model_fingerprint(folder)
        return self._fingerprints[spec.name]

    def uses(self) -> list[ModelUse]:
        """Which model plays each bound role, by fingerprint; models are not loaded for it."""
        return [
            ModelUse(
                role=role,
                name=spec.name,
                backend=spec.backend,
                source=spec.source,
                fingerprint=self.fingerprint(role),
            )
            for role in self.all_bound_roles()
            for spec in [self.spec(role)]
            if spec is not None  # always: bound_roles are the roles with a spec
        ]
