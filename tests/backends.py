"""Tests on both knowledge-base backends: SQL run behind the tool's back, as someone with
database access could, and the append-only guards removed first, as an attacker would.

A test runs on SQLite and on this session's PostgreSQL when it asks for the `database_url`
fixture, directly or with `@both_backends`; the workspace fixtures of the knowledge-base,
audit, qualify and web tests then put their knowledge base there.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import text

from kb.config import Workspace
from kb.db import driver_url

both_backends = pytest.mark.usefixtures("database_url")

Statement = str | tuple[str, Mapping[str, object]]  # plain SQL, or text() with :named values


def url_of(root: Path) -> str:
    """The database URL a workspace's kb.toml names."""
    return Workspace.open(root).config.database_url


def is_postgres(url: str) -> bool:
    return url.startswith("postgresql")


def raw(url: str, *statements: Statement) -> list[tuple]:
    """Run SQL in one transaction and return the rows of the last statement."""
    engine = sqlalchemy.create_engine(driver_url(url))
    rows: list[tuple] = []
    try:
        with engine.begin() as connection:
            for statement in statements:
                if isinstance(statement, tuple):
                    result = connection.execute(text(statement[0]), dict(statement[1]))
                else:
                    result = connection.exec_driver_sql(statement)
                rows = [tuple(r) for r in result.fetchall()] if result.returns_rows else []
    finally:
        engine.dispose()
    return rows


Target = Path | str  # a workspace folder, or a database URL


def _url(target: Target) -> str:
    return url_of(target) if isinstance(target, Path) else target


def sql(target: Target, *statements: Statement) -> list[tuple]:
    """raw() on a workspace's knowledge base (or the one at a URL)."""
    return raw(_url(target), *statements)


def unguard(target: Target, *tables: str) -> None:
    """Drop every trigger of these tables, as an attacker with database access would first."""
    url = _url(target)
    for table in tables:
        if is_postgres(url):
            found = raw(url, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal "
                             f"AND tgrelid = '{table}'::regclass")
            statements = [f"DROP TRIGGER {name} ON {table}" for (name,) in found]
        else:
            found = raw(url, "SELECT name FROM sqlite_master WHERE type = 'trigger' "
                             f"AND tbl_name = '{table}'")
            statements = [f"DROP TRIGGER {name}" for (name,) in found]
        if statements:
            raw(url, *statements)


def without_foreign_keys(target: Target) -> str:
    """The statement that, run first, lets the rest of a raw() transaction break references."""
    if is_postgres(_url(target)):
        return "SET LOCAL session_replication_role = replica"
    return "PRAGMA foreign_keys = OFF"
