"""Opening the knowledge base: engine creation, schema versioning and readable DB errors."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel, create_engine

from kb import tables
from kb.audit import chain_unchained_records
from kb.errors import DatabaseError

# 2: expert feedback and the cross-kind audit chain (migrated from 1)
# 3: rulesets, calibrations and normalisation statistics in the chain, record IDs and kinds
#    hashed, a per-entry format and an optional MAC; the image table guarded (from 1 or 2)
SCHEMA_VERSION = 3
APPEND_ONLY_TABLES = (
    "qualification",
    "node_verdict",
    "ruleset_version",
    "feedback",
    "audit_chain",
    "normalization_stat",
    "calibration",
)
# An image row may only gain the original bytes it lacked (a sample that became a reference).
IMAGE_GUARD = (
    "CREATE TRIGGER IF NOT EXISTS image_no_delete BEFORE DELETE ON image BEGIN "
    "SELECT RAISE(ABORT, 'image is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS image_only_gains_bytes BEFORE UPDATE ON image "
    "WHEN NOT (OLD.data IS NULL AND NEW.data IS NOT NULL AND NEW.sha256 = OLD.sha256 "
    "AND NEW.width = OLD.width AND NEW.height = OLD.height AND NEW.format = OLD.format "
    "AND NEW.thumbnail_png = OLD.thumbnail_png AND NEW.created_at IS OLD.created_at) "
    "BEGIN SELECT RAISE(ABORT, 'image is append-only: only missing original bytes may be "
    "added'); END",
)
CHAIN_COLUMNS = (  # added to audit_chain by the migration to schema 3
    ("format", "INTEGER NOT NULL DEFAULT 1"),
    ("mac", "VARCHAR"),
)
IMMEDIATE = "vlkb_immediate"  # execution option: this transaction writes, take the lock first
BEGIN_ATTEMPTS = 3  # each waits up to the busy timeout for the other writer to finish


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    # The driver must not open transactions on its own: _begin does, IMMEDIATE for writers.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin(connection: Connection) -> None:
    """Writers take SQLite's write lock before reading the chain head, so two processes can
    never both extend the same head; a busy lock is waited for, then retried a few times."""
    if not connection.get_execution_options().get(IMMEDIATE):
        connection.exec_driver_sql("BEGIN")
        return
    for attempt in range(BEGIN_ATTEMPTS):
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            return
        except OperationalError as exc:
            message = str(exc.orig).lower()
            if attempt + 1 == BEGIN_ATTEMPTS or not ("locked" in message or "busy" in message):
                raise


def writer(engine: Engine) -> Engine:
    """The same engine, its transactions starting with BEGIN IMMEDIATE (SQLite)."""
    return engine.execution_options(**{IMMEDIATE: True})


RESTORE_HINT = (
    "restore it from a backup copy, or recover what is readable with "
    "`sqlite3 kb.sqlite .recover | sqlite3 restored.sqlite` and point database.url at that"
)


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
    elif "malformed" in lowered:
        hint = "the file is damaged; " + RESTORE_HINT
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
        event.listen(engine, "begin", _begin)
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
    if version is not None and is_sqlite:
        problem = integrity_problem(engine)
        if problem is not None:
            raise DatabaseError(damaged(url, problem))
    # Every step is idempotent and the version is written last, so a migration cut short
    # simply runs again on the next open.
    SQLModel.metadata.create_all(engine)
    with Session(writer(engine)) as session:
        if is_sqlite:
            _add_chain_columns(session)
            for statement in IMAGE_GUARD:
                session.exec(text(statement))  # type: ignore[call-overload]
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
            if version < 2:
                _chain_existing_qualifications(session)
            chain_unchained_records(session)
        row = session.get(tables.SchemaInfo, 1)
        if row is None:
            row = tables.SchemaInfo(version=SCHEMA_VERSION)
        row.version = SCHEMA_VERSION
        session.add(row)
        session.commit()


def _add_chain_columns(session: Session) -> None:
    """Schema 2 -> 3: the entry format (1 for what was written before) and the MAC column."""
    present = {row[1] for row in session.exec(text("PRAGMA table_info(audit_chain)"))}  # type: ignore[call-overload]
    for name, kind in CHAIN_COLUMNS:
        if name not in present:
            session.exec(text(f"ALTER TABLE audit_chain ADD COLUMN {name} {kind}"))  # type: ignore[call-overload]


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


def integrity_problem(engine: Engine) -> str | None:
    """The first line of PRAGMA quick_check when the file is damaged, else None."""
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql("PRAGMA quick_check").fetchall()
    except (OperationalError, SADatabaseError) as exc:
        message = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        if "locked" in message.lower() or "busy" in message.lower():
            return None  # a busy file is not a damaged one; the write will wait or say so
        return message
    found = [str(row[0]) for row in rows]
    return None if found == ["ok"] else "; ".join(found[:3])


def damaged(url: str, problem: str) -> str:
    """The one line a writing command refuses with when the file fails its integrity check."""
    return (
        f"knowledge base {url} is damaged (PRAGMA quick_check: {problem}); writing to it is "
        f"refused so the damage cannot spread: {RESTORE_HINT}"
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
