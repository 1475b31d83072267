"""The knowledge base handle: one engine per workspace, sessions as transactions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlmodel import Session

from kb.audit import AUDIT_KEY
from kb.audit_key import audit_key
from kb.config import Workspace
from kb.db import damaged, integrity_problem, open_engine, reader, transaction, writer
from kb.errors import DatabaseError


@dataclass
class KnowledgeBase:
    url: str
    engine: Engine
    audit_key: bytes | None = None  # MACs new chain entries; from the workspace, never the DB
    _intact: bool = field(default=False, repr=False)

    @classmethod
    def open(cls, workspace: Workspace) -> KnowledgeBase:
        url = workspace.config.database_url
        key = audit_key(workspace)
        return cls(url=url, engine=open_engine(url, workspace.config.busy_timeout_s),
                   audit_key=key)

    def check_intact(self) -> None:
        """Refuse to write to a file that fails SQLite's quick_check (once per handle)."""
        if self._intact or not self.url.startswith("sqlite"):
            return
        problem = integrity_problem(self.engine)
        if problem is not None:
            raise DatabaseError(damaged(self.url, problem))
        self._intact = True

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write: all inside succeeds together or not at all, holding the write lock from
        the start, so the chain head it reads is still the head when it appends."""
        self.check_intact()
        with transaction(writer(self.engine), self.url) as session:
            session.info[AUDIT_KEY] = self.audit_key
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read: one consistent snapshot, never locking out writers; works on a damaged
        file as far as it can."""
        with transaction(reader(self.engine), self.url) as session:
            session.info[AUDIT_KEY] = self.audit_key
            yield session

    def close(self) -> None:
        self.engine.dispose()
