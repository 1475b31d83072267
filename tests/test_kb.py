"""The knowledge base itself: schema versions and the hash chain on SQLite and PostgreSQL,
and readable errors for SQLite files that are damaged, locked or read-only. (The append-only
triggers, the embedding cache and concurrent writers on both: tests/test_postgres.py.)"""

import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from kb import db
from kb.audit import NodeRecord, append_qualification, chain_record, verify_chain
from kb.errors import DatabaseError
from kb.image_store import store_image
from kb.store import KnowledgeBase
from kb.tables import RulesetVersion
from tests.backends import sql, unguard


@pytest.fixture
def kb_path(tmp_path: Path) -> Path:
    return tmp_path / "kb.sqlite"


def open_kb(where: Path | str, timeout: float = 0.2) -> KnowledgeBase:
    """The knowledge base in an SQLite file (a path) or at a URL."""
    url = f"sqlite:///{where}" if isinstance(where, Path) else where
    return KnowledgeBase(url, db.open_engine(url, timeout))


def add_record(kb: KnowledgeBase, verdict: str = "accept") -> int:
    with kb.transaction() as s:
        if s.get(RulesetVersion, 1) is None:
            ruleset = RulesetVersion(
                version=1, content_hash="h", software_version="t", snapshot_json="{}"
            )
            s.add(ruleset)
            s.flush()
            chain_record(s, "ruleset", ruleset)
        store_image(s, "a" * 64, Image.new("RGB", (4, 4)), "PNG")
        q = append_qualification(
            s,
            sample_path="/x.png",
            sample_sha256="a" * 64,
            ruleset_id=1,
            verdict=verdict,
            normalization="batch",
            operator="me",
            software_version="t",
            document={"verdict": verdict},
            nodes=[
                NodeRecord("root", "gate", None, verdict, None, None, "because"),
                NodeRecord("EA-1", "assessment", "root", verdict, 0.5, 0.0, "why"),
            ],
        )
        return q.id


def test_newer_schema_is_refused_with_a_clear_error(database_url):
    open_kb(database_url).close()
    sql(database_url, "UPDATE schema_info SET version = 99")
    with pytest.raises(DatabaseError, match="schema version 99, newer than this VLKB"):
        open_kb(database_url)


def test_not_a_database(tmp_path):
    path = tmp_path / "kb.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseError, match="not a database"):
        open_kb(path)


def test_chain_verifies_then_catches_an_edit_behind_the_tools_back(database_url):
    kb = open_kb(database_url)
    ids = [add_record(kb) for _ in range(3)]
    with kb.reading() as s:
        report = verify_chain(s)
    assert report.ok and dict(report.counts)["qualification"] == 3
    unguard(database_url, "node_verdict")  # a determined editor drops the guard first
    sql(database_url, ("UPDATE node_verdict SET verdict = 'accept', score = 9.9 "
                       "WHERE qualification_id = :id AND key = 'EA-1'", {"id": ids[1]}))
    with kb.reading() as s:
        report = verify_chain(s)
    kb.close()
    assert not report.ok and report.first_bad_id == ids[1]
    assert "edited" in report.problem


def test_chain_catches_a_deleted_record(database_url):
    kb = open_kb(database_url)
    ids = [add_record(kb) for _ in range(3)]
    unguard(database_url, "node_verdict", "qualification")
    sql(database_url, f"DELETE FROM node_verdict WHERE qualification_id = {ids[1]}",
        f"DELETE FROM qualification WHERE id = {ids[1]}")
    with kb.reading() as s:
        report = verify_chain(s)
    kb.close()
    assert report.first_bad == f"qualification {ids[1]}" and "deleted" in report.problem


def test_locked_database_gives_a_clear_error_and_writes_nothing(kb_path):
    kb = open_kb(kb_path)
    add_record(kb)
    blocker = sqlite3.connect(kb_path)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DatabaseError, match="locked"):
            add_record(kb)
    finally:
        blocker.rollback()
        blocker.close()
    with kb.transaction() as s:
        assert dict(verify_chain(s).counts)["qualification"] == 1


def test_read_only_database_via_uri_gives_a_clear_error(kb_path):
    """A database the process may only read (opened read-only here, as root ignores chmod)."""
    open_kb(kb_path).close()
    url = f"sqlite:///file:{kb_path}?mode=ro&uri=true"
    kb = KnowledgeBase(url, db.open_engine(url, 0.2))
    with pytest.raises(DatabaseError, match="readonly"):
        add_record(kb)


def test_the_image_table_allows_only_gaining_the_bytes_of_a_stored_image(kb_path):
    add_record(open_kb(kb_path))
    sha = "a" * 64
    with sqlite3.connect(kb_path) as con:
        con.execute("UPDATE image SET data = x'0102' WHERE sha256 = ?", (sha,))
    for statement in (
        "UPDATE image SET data = x'0304'",
        "UPDATE image SET thumbnail_png = x'00'",
        "UPDATE image SET width = 5",
        "DELETE FROM image",
    ):
        with sqlite3.connect(kb_path) as con, pytest.raises(sqlite3.IntegrityError):
            con.execute(statement)
