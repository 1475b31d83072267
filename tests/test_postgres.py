"""The knowledge base on PostgreSQL as well as SQLite, on this session's own real server:
the same commands and API, the append-only guarantees enforced by the database itself, one
intact chain under concurrent writer processes, and `kb migrate` from SQLite."""

from __future__ import annotations

import csv
import json
import multiprocessing
import shutil
import threading
from pathlib import Path

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import DBAPIError

from cli.web import create_app
from engine.history import verify_audit_log
from engine.session import VLKB
from kb.audit import (
    CALIBRATION,
    CHAIN_LOCK,
    MODELS,
    NORMALIZATION,
    ChainReport,
    chain_record,
    verify_chain,
)
from kb.config import Workspace
from kb.db import APPEND_ONLY_TABLES, BEGIN_ATTEMPTS, SCHEMA_VERSION
from kb.embeddings import cached_embeddings, store_embeddings
from kb.errors import DatabaseError
from kb.tables import Calibration, NormalizationStat
from tests import chain_writers
from tests.backends import raw
from tests.cli_runner import kb
from tests.pg_server import Server
from tests.workspaces import REPO, example_copy, use_database

EXAMPLES = REPO / "examples"
BACKENDS = ("sqlite", "postgresql")


def chain_report(url: str) -> ChainReport:
    store = chain_writers.open_kb(url)
    try:
        with store.reading() as session:
            return verify_chain(session)
    finally:
        store.close()


def example_on(root: Path, url: str) -> Workspace:
    """The repo's example workspace (measurements only) with its knowledge base at url."""
    example_copy(root)
    ws = use_database(root, url)
    code, _, err = kb("sync", "-w", root)
    assert code == 0, err
    return ws


def micrographs() -> list[Path]:
    return sorted(EXAMPLES.glob("*.png"))


def expected() -> dict[str, str]:
    with (EXAMPLES / "labels.csv").open(newline="", encoding="utf-8") as handle:
        return {row["image"]: row["overall"] for row in csv.DictReader(handle)}


def verified(root: Path) -> dict:
    code, out, err = kb("audit", "verify", "--json", "-w", root)
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"], report["problem"]
    return report


def comparable(document: dict) -> dict:
    """A stored document without what differs between two runs: time, ID, file location."""
    return {k: v for k, v in document.items() if k not in ("created_at", "id", "sample")}


# --- the same commands on both backends ------------------------------------------------------


def test_qualify_history_show_and_feedback_through_the_cli_agree_on_both_backends(
    tmp_path: Path, postgres: Server
):
    documents = {}
    for backend in BACKENDS:
        url = (f"sqlite:///{tmp_path / 'kb.sqlite'}" if backend == "sqlite"
               else postgres.new_database())
        root = tmp_path / backend
        example_on(root, url)
        code, out, err = kb("qualify", *micrographs(), "--json", "-w", root)
        assert code == 0, err
        stored = json.loads(out)["qualifications"]
        assert {Path(q["sample"]["path"]).name: q["verdict"] for q in stored} == expected()
        first = stored[0]["id"]
        code, _, err = kb("feedback", first, "EA-1", "--verdict", "accept",
                          "--comment", "agreed on review", "--expert", "auditor", "-w", root)
        assert code == 0, err
        code, out, err = kb("show", first, "--json", "-w", root)
        assert code == 0, err
        assert json.loads(out)["feedback"][0]["expert"] == "auditor"
        code, out, err = kb("history", "--json", "-w", root)
        assert code == 0, err
        assert len(json.loads(out)["qualifications"]) == len(stored)
        report = verified(root)
        assert report["qualifications"] == len(stored) and report["feedback"] == 1
        documents[backend] = [comparable(q) for q in stored]
    assert documents["postgresql"] == documents["sqlite"]


def test_kb_serve_answers_the_api_on_postgresql(tmp_path: Path, postgres: Server):
    ws = example_on(tmp_path / "ws", postgres.new_database())
    labels = expected()
    with TestClient(create_app(ws)) as client:
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in micrographs()]
        response = client.post("/api/qualify", files=files)
        assert response.status_code == 200, response.text
        stored = response.json()["qualifications"]
        assert {q["sample"]["path"].removeprefix("upload:"): q["verdict"] for q in stored} == labels
        listed = client.get("/api/qualifications")
        assert listed.status_code == 200, listed.text
        one = client.post(f"/api/qualifications/{stored[0]['id']}/feedback",
                          json={"node": "EA-1", "verdict": "accept", "comment": "seen",
                                "expert": "auditor"})
        assert one.status_code == 201, one.text
        shown = client.get(f"/api/qualifications/{stored[0]['id']}")
        assert shown.json()["feedback"][0]["comment"] == "seen"
    report = verify_audit_log(VLKB(ws))
    assert report.ok, report.problem
    assert dict(report.counts)["qualification"] == len(labels)


def test_an_unreachable_server_is_one_line_without_the_password(tmp_path: Path):
    example_copy(tmp_path / "ws")
    use_database(tmp_path / "ws", "postgresql+psycopg://vlkb:s3cret@127.0.0.1:1/vlkb")
    code, out, err = kb("history", "-w", tmp_path / "ws")
    assert code == 1 and out == ""
    assert err.startswith("error: knowledge base postgresql+psycopg://vlkb:***@127.0.0.1:1/vlkb")
    assert "s3cret" not in err and "running" in err and len(err.strip().splitlines()) == 1


# --- the database itself keeps the audit log append-only ----------------------------------


def seed_every_kind(url: str) -> None:
    """A row in each append-only table: ruleset, qualification with nodes, feedback,
    calibration and normalisation statistic, all in the chain."""
    chain_writers.seed(url)
    store = chain_writers.open_kb(url)
    try:
        chain_writers.add_feedback(store, chain_writers.add_qualification(store, "a"), "expert")
        with store.transaction() as s:
            calibration = Calibration(ruleset_id=1, images=2, source="cal")
            s.add(calibration)
            s.flush()
            chain_record(s, CALIBRATION, calibration)
            stat = NormalizationStat(ruleset_id=1, assessment_key="EA-1", role="image",
                                     model_fingerprint="f", source="calibration", mu=0.0,
                                     sigma=1.0, count=2)
            s.add(stat)
            s.flush()
            chain_record(s, NORMALIZATION, stat)
    finally:
        store.close()


def refused(url: str, statement: str) -> str:
    with pytest.raises(DBAPIError) as caught:
        raw(url, statement)
    return str(caught.value.orig)


@pytest.mark.parametrize("table", APPEND_ONLY_TABLES)
def test_the_database_refuses_to_change_or_delete_an_audited_record(database_url, table):
    seed_every_kind(database_url)
    column = "seq" if table == "audit_chain" else "id"
    assert f"{table} is append-only" in refused(
        database_url, f"UPDATE {table} SET {column} = {column} + 1000"
    )
    assert f"{table} is append-only" in refused(database_url, f"DELETE FROM {table}")
    if database_url.startswith("postgresql"):
        assert f"{table} is append-only" in refused(database_url, f"TRUNCATE {table} CASCADE")
    report = chain_report(database_url)
    assert report.ok, report.problem
    assert report.checked == len(MODELS)  # one record of each kind


def test_the_database_lets_an_image_only_gain_its_original_bytes(database_url):
    chain_writers.seed(database_url)
    bytes_literal = "X'0102'" if database_url.startswith("sqlite") else "'\\x0102'::bytea"
    raw(database_url, f"UPDATE image SET data = {bytes_literal}")
    for statement in ("UPDATE image SET width = 5", "UPDATE image SET data = NULL",
                      "DELETE FROM image"):
        assert "image is append-only" in refused(database_url, statement)
    assert raw(database_url, "SELECT width, data IS NOT NULL FROM image") == [(4, True)]


# --- concurrent writers ----------------------------------------------------------------------


def test_three_writer_processes_extend_one_intact_chain(database_url):
    chain_writers.seed(database_url)
    each, names = 12, ("w1", "w2", "w3")
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(len(names))
    workers = [
        context.Process(target=chain_writers.write_many, args=(database_url, name, each, start))
        for name in names
    ]
    for worker in workers:
        worker.start()
    # An auditor verifying while they write sees one consistent chain each time.
    store = chain_writers.open_kb(database_url)
    during = []
    try:
        while any(w.is_alive() for w in workers):
            with store.reading() as session:
                during.append(verify_chain(session))
    finally:
        store.close()
    for worker in workers:
        worker.join(timeout=300)
    assert [w.exitcode for w in workers] == [0] * len(names)
    assert [r.problem for r in during if not r.ok] == []
    report = chain_report(database_url)
    assert report.ok, report.problem
    counts = dict(report.counts)
    assert counts["qualification"] == counts["feedback"] == each * len(names)
    assert report.checked == 1 + 2 * each * len(names)
    operators = raw(database_url, "SELECT operator FROM qualification ORDER BY id")
    assert {o for (o,) in operators} == {f"{n}-{i}" for n in names for i in range(each)}


def holding_the_chain_lock(url: str) -> psycopg.Connection:
    """Another client of the server holding the audit chain's advisory lock."""
    holder = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                             autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (CHAIN_LOCK,))
    return holder


def test_a_writer_kept_waiting_for_the_chain_stores_nothing_and_says_why(postgres: Server):
    url = postgres.new_database()
    chain_writers.seed(url)
    holder = holding_the_chain_lock(url)
    store = chain_writers.open_kb(url, timeout=0.2)
    try:
        with pytest.raises(DatabaseError) as caught:
            chain_writers.add_qualification(store, "late")
    finally:
        store.close()
        holder.close()
    message = str(caught.value)
    assert "lock timeout" in message and "run it again" in message
    assert len(message.splitlines()) == 1
    assert raw(url, "SELECT count(*) FROM qualification") == [(0,)]
    assert chain_report(url).ok


def test_a_writer_takes_the_chain_lock_again_after_a_timeout(postgres: Server):
    url = postgres.new_database()
    chain_writers.seed(url)
    holder = holding_the_chain_lock(url)
    timeout_s = 0.5
    assert BEGIN_ATTEMPTS >= 3  # released during the second or third attempt, not the first
    release = threading.Timer(2 * timeout_s, holder.close)
    release.start()
    store = chain_writers.open_kb(url, timeout=timeout_s)
    try:
        chain_writers.add_qualification(store, "patient")
    finally:
        store.close()
        release.join()
    assert raw(url, "SELECT operator FROM qualification") == [("patient",)]
    assert chain_report(url).ok


def test_processes_opening_a_new_database_at_once_create_it_once(database_url):
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    openers = [
        context.Process(target=chain_writers.open_once, args=(database_url, start))
        for _ in range(3)
    ]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join(timeout=300)
    assert [o.exitcode for o in openers] == [0, 0, 0]
    assert raw(database_url, "SELECT version FROM schema_info") == [(SCHEMA_VERSION,)]


# --- kb migrate --------------------------------------------------------------------------------


@pytest.fixture
def sqlite_workspace(tmp_path: Path) -> Path:
    """The example on SQLite with every example qualified and one feedback."""
    root = tmp_path / "source"
    example_copy(root)
    code, out, err = kb("qualify", *micrographs(), "--json", "-w", root)
    assert code == 0, err
    first = json.loads(out)["qualifications"][0]["id"]
    code, _, err = kb("feedback", first, "EA-1", "--verdict", "accept",
                      "--comment", "agreed", "--expert", "auditor", "-w", root)
    assert code == 0, err
    return root


def test_migrate_copies_sqlite_into_postgresql_with_the_same_chain_head(
    sqlite_workspace: Path, postgres: Server, tmp_path: Path
):
    before = verified(sqlite_workspace)
    target = postgres.new_database()
    code, out, err = kb("migrate", "--to", target, "--json", "-w", sqlite_workspace)
    assert code == 0, err
    done = json.loads(out)
    assert done["head"] == before["head"] and done["records"] == before["checked"]
    assert done["rows"]["qualification"] == before["qualifications"]
    moved = tmp_path / "moved"
    shutil.copytree(sqlite_workspace, moved)
    (moved / "kb.sqlite").unlink()
    use_database(moved, target)
    after = verified(moved)
    assert (after["head"], after["checked"]) == (before["head"], before["checked"])
    # New rows get fresh IDs after the copied ones: a new ruleset version, then a qualification.
    rule = moved / "rules" / "assessments" / "EA-1.toml"
    text = rule.read_text(encoding="utf-8")
    rule.write_text(text.replace('name = "', 'name = "Renamed ', 1), encoding="utf-8")
    code, _, err = kb("sync", "-w", moved)
    assert code == 0, err
    code, out, err = kb("qualify", micrographs()[0], "--json", "-w", moved)
    assert code == 0, err
    assert json.loads(out)["qualifications"][0]["id"] == before["qualifications"] + 1
    assert verified(moved)["checked"] == before["checked"] + 2


def test_migrate_refuses_a_target_that_is_not_empty(sqlite_workspace: Path, postgres: Server):
    target = postgres.new_database()
    assert kb("migrate", "--to", target, "-w", sqlite_workspace)[0] == 0
    head = raw(target, "SELECT record_hash FROM audit_chain ORDER BY seq DESC LIMIT 1")
    code, out, err = kb("migrate", "--to", target, "-w", sqlite_workspace)
    assert code == 1 and out == ""
    assert "is not empty" in err and len(err.strip().splitlines()) == 1
    assert raw(target, "SELECT record_hash FROM audit_chain ORDER BY seq DESC LIMIT 1") == head


def test_migrate_copies_nothing_from_a_broken_chain(sqlite_workspace: Path, postgres: Server):
    source = f"sqlite:///{sqlite_workspace / 'kb.sqlite'}"
    raw(source, "DROP TRIGGER qualification_no_update",
        "UPDATE qualification SET operator = 'someone else' WHERE id = 1")
    target = postgres.new_database()
    code, _, err = kb("migrate", "--to", target, "-w", sqlite_workspace)
    assert code == 1
    assert "does not verify before copying" in err and "qualification 1" in err
    assert raw(target, "SELECT count(*) FROM qualification") == [(0,)]
    assert raw(target, "SELECT count(*) FROM audit_chain") == [(0,)]


def test_migrate_keeps_a_keyed_chain_keyed(
    tmp_path: Path, postgres: Server, monkeypatch: pytest.MonkeyPatch
):
    source = tmp_path / "source"
    example_copy(source)
    monkeypatch.setenv("KB_AUDIT_KEY", "the auditor keeps this secret")
    code, out, err = kb("qualify", *micrographs()[:2], "--json", "-w", source)
    assert code == 0, err
    target = postgres.new_database()
    assert kb("migrate", "--to", target, "-w", source)[0] == 0
    moved = tmp_path / "moved"
    shutil.copytree(source, moved)
    use_database(moved, target)
    assert verified(moved)["macs"]["checked"] == 2
    monkeypatch.setenv("KB_AUDIT_KEY", "not the auditor's key at all")
    code, _, err = kb("audit", "verify", "-w", moved)
    assert code == 1 and "MAC" in err


def test_embedding_cache_round_trip_is_exact_float32(database_url):
    store = chain_writers.open_kb(database_url)
    vector = np.random.default_rng(0).normal(size=16).astype(np.float32)
    try:
        with store.transaction() as s:
            store_embeddings(s, "fp", "image", {"s1": vector})
            store_embeddings(s, "fp", "image", {"s1": vector})  # the second store is a no-op
        with store.reading() as s:
            found = cached_embeddings(s, "fp", "image", ["s1", "s2"])
    finally:
        store.close()
    assert list(found) == ["s1"] and np.array_equal(found["s1"], vector)
