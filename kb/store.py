"""The knowledge base handle: one engine per workspace, sessions as transactions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Session

from kb.config import Workspace
from kb.db import open_engine, transaction


@dataclass
class KnowledgeBase:
    url: str
    engine: Engine

    @classmethod
    def open(cls, workspace: Workspace) -> KnowledgeBase:
        url = workspace.config.database_url
        return cls(url=url, engine=open_engine(url, workspace.config.busy_timeout_s))

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """All writes inside succeed together or not at all."""
        with transaction(self.engine, self.url) as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()
