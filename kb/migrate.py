"""Copying a knowledge base into an empty one (`kb migrate --to URL`): SQLite to PostgreSQL
when a plant outgrows one file.

All or nothing: the source chain must verify first; every row is copied with its IDs in one
transaction on the target, the copy's chain is verified inside that transaction and must end
at the same head, and only then is it committed. A target that holds any record is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Integer, Table, func, select, text
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from kb.audit import AUDIT_KEY, ChainReport, verify_chain
from kb.db import is_postgres, open_engine, shown, transaction, writer
from kb.errors import DatabaseError
from kb.store import KnowledgeBase

BATCH = 500  # rows per INSERT: bounded memory whatever the size of the images
NOT_COPIED = frozenset({"schema_info"})  # the target writes its own when it is created


@dataclass(frozen=True)
class Migration:
    """What was copied, and the chain head both copies verified to."""

    source: str
    target: str
    rows: tuple[tuple[str, int], ...]
    records: int  # audit chain entries verified on both sides
    head: str


def data_tables() -> list[Table]:
    """Every table that holds records, parents before the tables that refer to them."""
    return [t for t in SQLModel.metadata.sorted_tables if t.name not in NOT_COPIED]


def _refuse_unless_empty(connection: Connection, url: str) -> None:
    for table in data_tables():
        count = connection.execute(select(func.count()).select_from(table)).scalar_one()
        if count:
            raise DatabaseError(
                f"knowledge base {shown(url)} is not empty ({table.name} holds {count} "
                "row(s)); migrate only into an empty database, so no chain is mixed with another"
            )


def _copy(source: Connection, target: Connection) -> list[tuple[str, int]]:
    copied = []
    for table in data_tables():
        result = source.execute(select(table).order_by(*table.primary_key.columns))
        total = 0
        while batch := result.mappings().fetchmany(BATCH):
            target.execute(table.insert(), [dict(row) for row in batch])
            total += len(batch)
        copied.append((table.name, total))
    return copied


def _continue_sequences(target: Connection) -> None:
    """PostgreSQL: rows copied with their IDs leave the ID sequences at 1; move each past the
    highest ID so the next insert does not collide."""
    for table in data_tables():
        for column in table.primary_key.columns:
            if isinstance(column.type, Integer):
                target.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                        f"COALESCE(MAX({column.name}), 0) + 1, false) FROM {table.name}"
                    )
                )


def _broken(url: str, report: ChainReport, when: str) -> DatabaseError:
    where = f"{report.first_bad} " if report.first_bad else ""
    return DatabaseError(
        f"knowledge base {shown(url)}: the audit chain does not verify {when} "
        f"({where}{report.problem}); nothing was migrated: run `kb audit verify`"
    )


def migrate(source: KnowledgeBase, target_url: str, busy_timeout_s: float = 10.0) -> Migration:
    """Copy `source` into the empty knowledge base at target_url, verified on both sides."""
    engine = open_engine(target_url, busy_timeout_s)
    try:
        with source.reading() as reading, transaction(writer(engine), target_url) as target:
            before = verify_chain(reading, source.audit_key)
            if not before.ok:
                raise _broken(source.url, before, "before copying")
            connection = target.connection()
            _refuse_unless_empty(connection, target_url)
            rows = _copy(reading.connection(), connection)
            if is_postgres(engine):
                _continue_sequences(connection)
            target.info[AUDIT_KEY] = source.audit_key
            after = verify_chain(target, source.audit_key)  # the copy, before it is committed
            if not after.ok:
                raise _broken(target_url, after, "after copying")
            if after.head != before.head or after.checked != before.checked:
                raise DatabaseError(
                    f"knowledge base {shown(target_url)}: the copy ends at chain head "
                    f"{after.head[:16]} after {after.checked} record(s), the source at "
                    f"{before.head[:16]} after {before.checked}; nothing was migrated"
                )
    finally:
        engine.dispose()
    return Migration(shown(source.url), shown(target_url), tuple(rows), after.checked,
                     after.head)
