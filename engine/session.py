"""One open workspace: its configuration, its knowledge base and its models, held together.

The CLI opens one for a command and the web app one for its lifetime; every engine entry point
takes it, so a model loads once and the database handle is closed when the holder is done
(`with VLKB.open(path) as vlkb: ...`). Nothing here judges or queries: it only holds.
"""

from __future__ import annotations

import os
from types import TracebackType

from engine.encoders.roles import ModelSet
from kb.config import Workspace
from kb.store import KnowledgeBase


class VLKB:
    """A workspace with its knowledge base open and its models loaded on first use."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.kb = KnowledgeBase.open(workspace)
        self.models = ModelSet(workspace.config)

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None) -> VLKB:
        """The workspace at (or above) `root`, the current folder by default."""
        return cls(Workspace.open(root))

    def close(self) -> None:
        """Release the database (models go with the object); safe to call twice."""
        self.kb.close()

    def __enter__(self) -> VLKB:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
