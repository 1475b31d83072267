"""Opening the knowledge base: engine creation, schema versioning and readable DB errors."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel, create_engine

from kb import tables
from kb.errors import DatabaseError

SCHEMA_VERSION = 2  # 2: expert feedback and the cross-kind audit chain (migrated from 1)
APPEND_ONLY_TABLES = (
    "qualification",
    "node_verdict",
    "ruleset_version",
    "feedback",
    "audit_chain",
)


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _describe(url: str, exc: Exception) -> str:
    message = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    lowered = message.lower()
    if "prev_hash" in lowered:
        hint = "another process appended to the audit log at the same moment; run it again"
    elif "locked" in lowered or "busy" in lowered:
        hint = "another process is writing to it; retry when it has finished"
    elif "readonly" in lowered or "read-only" in lowered:
        hint = "make the database file and its folder writable"
    elif "unable to open" in lowered:
        hint = "check that the folder exists and is writable"
    elif "not a database" in lowered:
        hint = "the file is not an SQLite database; point database.url in kb.toml elsewhere"
    else:
        hint = "check database.url in kb.toml"
    return f"knowledge base {url}: {message} ({hint})"


def open_engine(url: str, busy_timeout_s: float = 10.0) -> Engine:
    """Create the engine, the tables on first use, and refuse a newer schema."""
    is_sqlite = url.startswith("sqlite")
    connect_args = {"timeout": busy_timeout_s} if is_sqlite else {}
    engine = create_engine(url, connect_args=connect_args)
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        _ensure_schema(engine, url, is_sqlite)
    except (OperationalError, SADatabaseError) as exc:
        engine.dispose()
        raise DatabaseError(_describe(url, exc)) from exc
    except DatabaseError:
        engine.dispose()
        raise
    return engine


def _ensure_schema(engine: Engine, url: str, is_sqlite: bool) -> None:
    """Create a new database, migrate an older one additively, refuse a newer one."""
    with Session(engine) as session:
        info = None
        if engine.dialect.has_table(session.connection(), "schema_info"):
            info = session.get(tables.SchemaInfo, 1)
        version = info.version if info is not None else None
    if version is not None and version > SCHEMA_VERSION:
        raise DatabaseError(
            f"knowledge base {url} has schema version {version}, newer than this "
            f"VLKB understands ({SCHEMA_VERSION}); upgrade VLKB to open it"
        )
    if version == SCHEMA_VERSION:
        return
    # Every step is idempotent and the version is written last, so a migration cut short
    # (SQLite commits DDL statement by statement) simply runs again on the next open.
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        if is_sqlite:
            for table in APPEND_ONLY_TABLES:
                for action in ("UPDATE", "DELETE"):
                    session.exec(
                        text(  # type: ignore[call-overload]
                            f"CREATE TRIGGER IF NOT EXISTS {table}_no_{action.lower()} "
                            f"BEFORE {action} ON {table} BEGIN "
                            f"SELECT RAISE(ABORT, '{table} is append-only'); END"
                        )
                    )
        if version is not None:
            _chain_existing_qualifications(session)
        row = session.get(tables.SchemaInfo, 1)
        if row is None:
            row = tables.SchemaInfo(version=SCHEMA_VERSION)
        row.version = SCHEMA_VERSION
        session.add(row)
        session.commit()


def _chain_existing_qualifications(session: Session) -> None:
    """Schema 1 -> 2: enter the qualifications already stored into the cross-kind audit chain."""
    session.exec(
        text(  # type: ignore[call-overload]
            "INSERT INTO audit_chain (kind, record_id, prev_hash, record_hash) "
            "SELECT 'qualification', id, prev_hash, record_hash FROM qualification "
            "WHERE id NOT IN (SELECT record_id FROM audit_chain WHERE kind = 'qualification') "
            "ORDER BY id"
        )
    )


@contextmanager
def transaction(engine: Engine, url: str) -> Iterator[Session]:
    """A session committed on success and rolled back on any error, with readable DB errors."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except (OperationalError, SADatabaseError) as exc:
        session.rollback()
        raise DatabaseError(_describe(url, exc)) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
