"""Opening the knowledge base: engine creation, schema versioning and readable DB errors."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlmodel import Session, SQLModel, create_engine

from kb import tables
from kb.audit import chain_unchained_records, lock_chain
from kb.errors import DatabaseError

# 2: expert feedback and the cross-kind audit chain (migrated from 1)
# 3: rulesets, calibrations and normalisation statistics in the chain, record IDs and kinds
#    hashed, a per-entry format and an optional MAC; the image table guarded (from 1 or 2)
# 4: the local_bank cache of fitted local-evidence banks (a new table, nothing else moves)
SCHEMA_VERSION = 4
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
# PostgreSQL: the SQLSTATEs after which taking the chain lock again may succeed
# (serialization_failure, deadlock_detected, lock_not_available: lock_timeout ran out).
RETRYABLE = ("40001", "40P01", "55P03")
PG_APPEND_ONLY = (
    "CREATE OR REPLACE FUNCTION vlkb_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$"
)
PG_IMAGE_GUARD = (
    "CREATE OR REPLACE FUNCTION vlkb_image_guard() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN "
    "IF TG_OP = 'UPDATE' AND OLD.data IS NULL AND NEW.data IS NOT NULL "
    "AND NEW.sha256 = OLD.sha256 AND NEW.width = OLD.width AND NEW.height = OLD.height "
    "AND NEW.format = OLD.format AND NEW.thumbnail_png = OLD.thumbnail_png "
    "AND NEW.created_at IS NOT DISTINCT FROM OLD.created_at THEN RETURN NEW; END IF; "
    "IF TG_OP = 'UPDATE' THEN "
    "RAISE EXCEPTION 'image is append-only: only missing original bytes may be added'; "
    "END IF; "
    "RAISE EXCEPTION 'image is append-only'; END $$"
)


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
    """The same engine, its transactions starting with BEGIN IMMEDIATE (SQLite) or the audit
    chain's advisory lock (PostgreSQL, taken by `transaction`)."""
    return engine.execution_options(**{IMMEDIATE: True})


def reader(engine: Engine) -> Engine:
    """The engine for reading transactions: on PostgreSQL REPEATABLE READ, so a reader (say
    `kb audit verify` beside running writers) sees one snapshot from its first statement to
    its last, as an SQLite read transaction does; a read-only transaction never fails there."""
    if is_postgres(engine):
        return engine.execution_options(isolation_level="REPEATABLE READ")
    return engine


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def shown(url: str) -> str:
    """A database URL as messages show it: never with its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def driver_url(url: str) -> str:
    """postgresql:// and postgres:// mean the psycopg (3) driver, the one VLKB installs."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


# File systems on which SQLite's file lock cannot be trusted between processes (SQLite's own
# advice: "use a client/server database instead" there).
NETWORK_FILE_SYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre",
    "gpfs", "davfs", "fuse.sshfs", "fuse.glusterfs", "fuse.rclone", "fuse.s3fs",
})


MOUNTS = Path("/proc/self/mounts")


def shared_by_processes(url: str, mounts: Path = MOUNTS) -> str | None:
    """Why several processes (`kb serve --workers N`) cannot write this knowledge base
    safely, or None. PostgreSQL serialises them on its advisory lock; SQLite on its file lock
    (BEGIN IMMEDIATE), which holds across processes only for one file on a local disk."""
    url = driver_url(url)
    if url.startswith("postgresql"):
        return None
    try:
        database = make_url(url).database
    except ArgumentError:
        return None  # open_engine says what is wrong with it
    if not database or database == ":memory:" or "mode=memory" in url:
        return ("the knowledge base is an in-memory SQLite database, one per process: each "
                "worker would keep its own audit log")
    kind = file_system_of(Path(database.removeprefix("file:")), mounts)
    if kind in NETWORK_FILE_SYSTEMS:
        return (f"the SQLite file {database} lies on a network file system ({kind}), where "
                "its lock does not hold between processes")
    return None


def file_system_of(path: Path, mounts: Path = MOUNTS) -> str | None:
    """The type of the file system holding path, from a mount table (Linux's own by default);
    None when there is none to read."""
    try:
        table = mounts.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    target = str(path.resolve())
    best, kind = "", None
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


RESTORE_HINT = (
    "restore it from a backup copy, or recover what is readable with "
    "`sqlite3 kb.sqlite .recover | sqlite3 restored.sqlite` and point database.url at that"
)


def _describe(url: str, exc: Exception) -> str:
    message = (str(getattr(exc, "orig", exc)).strip().splitlines() or [type(exc).__name__])[0]
    lowered = message.lower()
    url = shown(url)
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
    elif "append-only" in lowered:
        hint = "audited records are never changed or deleted; append a new record instead"
    elif "connection" in lowered or "does not exist" in lowered:
        hint = "check that the PostgreSQL server is running, reachable and has that database"
    elif "lock timeout" in lowered or "deadlock" in lowered or "serializ" in lowered:
        hint = "other processes kept the audit chain locked; run it again"
    else:
        hint = "check database.url in kb.toml"
    return f"knowledge base {url}: {message} ({hint})"


def open_engine(url: str, busy_timeout_s: float = 10.0) -> Engine:
    """Create the engine, the tables on first use, and refuse a newer schema.

    SQLite and PostgreSQL are supported. PostgreSQL sessions run in READ COMMITTED (so a
    writer that has waited for the chain lock reads the head the last writer committed) with
    UTC times (so stored times hash the same on every client) and lock_timeout set to the
    busy timeout.
    """
    url = driver_url(url)
    is_sqlite = url.startswith("sqlite")
    if not (is_sqlite or url.startswith("postgresql")):
        raise DatabaseError(
            f"knowledge base {shown(url)}: only SQLite (sqlite:///FILE) and PostgreSQL "
            "(postgresql+psycopg://USER@HOST:PORT/DB) are supported; check database.url"
        )
    try:
        if is_sqlite:
            engine = create_engine(url, connect_args={"timeout": busy_timeout_s})
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _begin)
        else:
            timeout_ms = max(1, int(busy_timeout_s * 1000))
            engine = create_engine(
                url,
                isolation_level="READ COMMITTED",
                pool_pre_ping=True,
                connect_args={"options": f"-c timezone=UTC -c lock_timeout={timeout_ms}"},
            )
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(f"knowledge base {shown(url)}: {exc} (check database.url)") from exc
    try:
        _ensure_schema(engine, url, is_sqlite)
    except (OperationalError, SADatabaseError) as exc:
        engine.dispose()
        raise DatabaseError(_describe(url, exc)) from exc
    except DatabaseError:
        engine.dispose()
        raise
    return engine


def _schema_version(session: Session) -> int | None:
    if not inspect(session.connection()).has_table("schema_info"):
        return None
    info = session.get(tables.SchemaInfo, 1)
    return info.version if info is not None else None


def _ensure_schema(engine: Engine, url: str, is_sqlite: bool) -> None:
    """Create a new database, migrate an older one additively, refuse a newer one."""
    with Session(engine) as session:
        version = _schema_version(session)
    _refuse_newer(url, version)
    if version == SCHEMA_VERSION:
        return
    if version is not None and is_sqlite:
        problem = integrity_problem(engine)
        if problem is not None:
            raise DatabaseError(damaged(url, problem))
    # Every step is idempotent and the version is written last, so a migration cut short
    # simply runs again on the next open. The whole of it is one transaction (DDL is
    # transactional in both databases) holding the write lock, so processes opening a new
    # database at once (kb serve --workers N) create it once.
    with transaction(writer(engine), url) as session:
        version = _schema_version(session)  # another process may have just created it
        _refuse_newer(url, version)
        if version == SCHEMA_VERSION:
            return
        SQLModel.metadata.create_all(session.connection())
        _add_chain_columns(session)
        _guard(session, is_sqlite)
        if version is not None:
            if version < 2:
                _chain_existing_qualifications(session)
            chain_unchained_records(session)
        row = session.get(tables.SchemaInfo, 1)
        if row is None:
            row = tables.SchemaInfo(version=SCHEMA_VERSION)
        row.version = SCHEMA_VERSION
        session.add(row)


def _refuse_newer(url: str, version: int | None) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise DatabaseError(
            f"knowledge base {shown(url)} has schema version {version}, newer than this "
            f"VLKB understands ({SCHEMA_VERSION}); upgrade VLKB to open it"
        )


def _guard(session: Session, is_sqlite: bool) -> None:
    """Triggers that make the database itself refuse to change or delete audited records
    (and images, except gaining their original bytes); idempotent."""

    def run(statement: str) -> None:
        session.exec(text(statement))  # type: ignore[call-overload]

    if is_sqlite:
        for statement in IMAGE_GUARD:
            run(statement)
        for table in APPEND_ONLY_TABLES:
            for action in ("UPDATE", "DELETE"):
                run(
                    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{action.lower()} "
                    f"BEFORE {action} ON {table} BEGIN "
                    f"SELECT RAISE(ABORT, '{table} is append-only'); END"
                )
        return
    run(PG_APPEND_ONLY)
    run(PG_IMAGE_GUARD)
    guarded = [(table, "vlkb_append_only") for table in APPEND_ONLY_TABLES]
    for table, function in [*guarded, ("image", "vlkb_image_guard")]:
        run(
            f"CREATE OR REPLACE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {function}()"
        )
        run(
            f"CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION vlkb_append_only()"
        )


def _add_chain_columns(session: Session) -> None:
    """Schema 2 -> 3: the entry format (1 for what was written before) and the MAC column."""
    present = {c["name"] for c in inspect(session.connection()).get_columns("audit_chain")}
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


def _locked_session(engine: Engine) -> Session:
    """A session for a PostgreSQL write, holding the audit chain's lock from its first
    statement to its commit; taking the lock is retried when it failed for a reason that
    may pass (a serialisation failure, a deadlock, lock_timeout)."""
    for attempt in range(BEGIN_ATTEMPTS):
        session = Session(engine, expire_on_commit=False)
        try:
            lock_chain(session)
            return session
        except OperationalError as exc:
            session.rollback()
            session.close()
            code = getattr(exc.orig, "sqlstate", None)
            if attempt + 1 == BEGIN_ATTEMPTS or code not in RETRYABLE:
                raise
    raise AssertionError("unreachable")


@contextmanager
def transaction(engine: Engine, url: str) -> Iterator[Session]:
    """A session committed on success and rolled back on any error, with readable DB errors.

    A writer's session (`writer(engine)`) holds the write lock from its start: SQLite's
    BEGIN IMMEDIATE, PostgreSQL's advisory lock on the audit chain."""
    try:
        if is_postgres(engine) and engine.get_execution_options().get(IMMEDIATE):
            session = _locked_session(engine)
        else:
            session = Session(engine, expire_on_commit=False)
    except (OperationalError, SADatabaseError) as exc:
        raise DatabaseError(_describe(url, exc)) from exc
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
