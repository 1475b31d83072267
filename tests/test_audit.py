"""Reports and the audit trail through the real CLI: `qualify --report`, `report`, `show`,
`history`, `feedback` and `audit verify`, with tiny real models, on real SQLite files and
(every test that stores or tampers, @both_backends) this session's PostgreSQL."""

from __future__ import annotations

import getpass
import json
import re
import shutil
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

import reports
from engine.session import VLKB
from engine.sync import sync_workspace
from kb.db import SCHEMA_VERSION
from tests.backends import both_backends, is_postgres, sql, unguard, url_of, without_foreign_keys
from tests.cli_runner import kb
from tests.workspaces import micrograph, new_workspace, use_database, write_carbide_assessment

SCHEMA_2 = Path(__file__).resolve().parent / "data" / "kb-schema-2.sqlite"




@pytest.fixture(scope="module")
def synced(tmp_path_factory, tiny_clip_dir, tiny_flava_dir) -> Path:
    """A workspace with EA-5 (prompts and references) synced once; tests work on copies."""
    root = tmp_path_factory.mktemp("synced") / "ws"
    ws = new_workspace(root, tiny_clip_dir, tiny_flava_dir)
    write_carbide_assessment(ws)
    sync_workspace(VLKB(ws))
    return root


@pytest.fixture(scope="module")
def synced_on_postgres(tmp_path_factory, tiny_clip_dir, tiny_flava_dir, postgres) -> Path:
    """The same workspace synced into a PostgreSQL database that tests copy (a template)."""
    root = tmp_path_factory.mktemp("synced-pg") / "ws"
    new_workspace(root, tiny_clip_dir, tiny_flava_dir)
    ws = use_database(root, postgres.new_database("audit"))
    write_carbide_assessment(ws)
    with VLKB(ws) as vlkb:  # closed: PostgreSQL copies only a database nobody is connected to
        sync_workspace(vlkb)
    return root


@pytest.fixture
def ws(request: pytest.FixtureRequest, synced: Path, tmp_path: Path) -> Path:
    """A copy of the synced workspace; on PostgreSQL when the test runs @both_backends."""
    root = tmp_path / "ws"
    url = request.getfixturevalue("database_url") if "database_url" in request.fixturenames \
        else None
    if url is not None and is_postgres(url):
        template = request.getfixturevalue("synced_on_postgres")
        shutil.copytree(template, root)
        use_database(root, request.getfixturevalue("postgres").copy_database(url_of(template)))
    else:
        shutil.copytree(synced, root)
    return root


def samples(folder: Path, n: int) -> list[Path]:
    return [
        micrograph(folder / f"s{i}.png", seed=300 + i, pink_share=0.05 + 0.1 * i) for i in range(n)
    ]


def qualify(ws: Path, files: list[Path], *extra: object) -> tuple[int, dict, str]:
    code, out, err = kb("qualify", *files, "--json", "-w", ws, *extra)
    return code, json.loads(out), err


class Links(HTMLParser):
    """Every href and src in a page; an SVG <image>'s href is a picture's source."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("href") and tag == "image":
            self.srcs.append(str(found["href"]))
        elif found.get("href"):
            self.hrefs.append(str(found["href"]))
        if found.get("src"):
            self.srcs.append(str(found["src"]))


def links(html: str) -> Links:
    parser = Links()
    parser.feed(html)
    return parser


# --- qualify --report -------------------------------------------------------------------------


def test_qualify_report_writes_self_contained_reports_and_a_linked_index(ws, tmp_path):
    files = samples(tmp_path / "in", 3)
    code, doc, err = qualify(ws, files, "--report", "--operator", "Q. Engineer")
    assert code == 0, err
    results = doc["qualifications"]
    out = (ws / "out").resolve()
    for q, sample in zip(results, files, strict=True):
        report = Path(q["report"])
        assert report == out / f"q{q['id']:06d}-{sample.stem}.html" and report.is_file()
        html = report.read_text(encoding="utf-8")
        found = links(html)
        assert found.srcs and all(s.startswith("data:image/png;base64,") for s in found.srcs)
        assert all(h.startswith("#") for h in found.hrefs), found.hrefs
        assert not re.search(r"https?://|<link\b|<script\b", html)
        for fact in (
            q["sample"]["sha256"],
            q["ruleset"]["hash"],
            q["models"][0]["fingerprint"],
            f"VLKB {q['software_version']}",
            "Q. Engineer",
            q["created_at"][:19].replace("T", " ") + " UTC",
        ):
            assert fact in html, fact
    index = Path(doc["index"])
    first, last = results[0]["id"], results[-1]["id"]
    assert index == out / f"run-{first:06d}-{last:06d}" / "index.html"
    targets = [(index.parent / h).resolve() for h in links(index.read_text()).hrefs]
    assert targets == [Path(q["report"]) for q in results]
    assert doc["report_errors"] == []


def test_qualify_report_prints_the_paths(ws, tmp_path):
    files = samples(tmp_path / "in", 2)
    code, out, err = kb("qualify", *files, "--report", "-w", ws)
    assert code == 0, err
    written = sorted((ws / "out").glob("q*.html"))
    assert len(written) == 2
    for path in written:
        assert str(path.resolve()) in out
    assert "Run index: " in out and "index.html" in out


def test_one_sample_gets_a_report_and_no_index(ws, tmp_path):
    code, doc, err = qualify(ws, samples(tmp_path / "in", 1), "--report")
    assert code == 0, err
    assert doc["index"] is None and Path(doc["qualifications"][0]["report"]).is_file()
    assert not list((ws / "out").glob("run-*"))


@both_backends
def test_stored_document_carries_time_operator_version_reasons_and_rules(ws, tmp_path):
    code, doc, err = qualify(ws, samples(tmp_path / "in", 1), "--normalize", "batch")
    assert code == 0, err
    q = doc["qualifications"][0]
    (stored_json,) = sql(ws, f"SELECT result_json FROM qualification WHERE id = {q['id']}")[0]
    stored = json.loads(stored_json)
    assert stored["created_at"] == q["created_at"] and q["created_at"].endswith("+00:00")
    assert stored["operator"] == getpass.getuser()
    assert stored["software_version"] == q["software_version"] != ""
    nodes = {n["key"]: n for n in stored["nodes"]}
    assert nodes["qualification"]["rule"] == "all" and nodes["qualification"]["reason"]
    assert nodes["EA-5"]["verdict"] == "not_assessed"
    assert "at least 2 images" in nodes["EA-5"]["reason"]


# --- kb report ------------------------------------------------------------------------------


@both_backends
def test_report_rerenders_the_stored_record_even_after_the_sample_is_gone(ws, tmp_path):
    files = samples(tmp_path / "in", 2)
    code, doc, err = qualify(ws, files, "--report")
    assert code == 0, err
    q = doc["qualifications"][1]
    written = Path(q["report"]).read_text(encoding="utf-8")
    Path(q["report"]).unlink()
    shutil.rmtree(tmp_path / "in")  # the micrographs moved away since
    code, out, err = kb("report", q["id"], "-w", ws)
    assert code == 0, err
    assert out.strip() == f"Report {q['id']}: {q['report']}"
    again = Path(q["report"]).read_text(encoding="utf-8")
    assert again == written  # same numbers, same provenance, same thumbnail: nothing recomputed
    assert str(files[1].resolve()) in again
    code, out, _ = kb("report", q["id"], "--json", "-w", ws)
    assert json.loads(out) == {"id": q["id"], "report": q["report"]}


@pytest.mark.parametrize("command", ["show", "report"])
def test_unknown_id_is_one_clear_line(ws, command):
    code, out, err = kb(command, 404, "-w", ws)
    assert code == 1 and out == ""
    assert err == "error: no qualification with ID 404; see `kb history`\n"


# --- output folder problems ----------------------------------------------------------------


def set_output_dir(ws: Path, folder: str) -> None:
    config = ws / "kb.toml"
    config.write_text(config.read_text().replace('dir = "out"', f'dir = "{folder}"'))


def test_unwritable_output_folder_still_stores_and_says_where(ws, tmp_path):
    blocker = ws / "blocker"
    blocker.write_text("a file where the output folder should be")
    set_output_dir(ws, "blocker/out")
    code, out, err = kb("qualify", *samples(tmp_path / "in", 2), "--report", "--json", "-w", ws)
    assert code == 1
    doc = json.loads(out)
    ids = [q["id"] for q in doc["qualifications"]]
    assert len(ids) == 2 and all(q["report"] is None for q in doc["qualifications"])
    where = str((ws / "blocker/out").resolve())
    assert err.count("\n") == 1 and where in err
    assert f"qualifications {ids[0]}, {ids[1]}" in err and "stored" in err
    assert doc["report_errors"] == [err.removeprefix("error: ").strip()]
    code, out, _ = kb("history", "--json", "-w", ws)
    assert [r["id"] for r in json.loads(out)["qualifications"]] == ids[::-1]
    code, _, err = kb("report", ids[0], "-w", ws)
    assert code == 1 and f"could not write the report to {where}/q{ids[0]:06d}" in err


def test_output_folder_inside_the_reports_package_is_refused_before_storing(ws, tmp_path):
    inside = Path(reports.__file__).resolve().parent / "generated"
    set_output_dir(ws, str(inside))
    code, out, err = kb("qualify", *samples(tmp_path / "in", 2), "--report", "-w", ws)
    assert code == 1 and out == ""
    assert "inside" in err and "[output] dir" in err and err.count("\n") == 1
    assert not inside.exists()
    assert sql(ws, "SELECT COUNT(*) FROM qualification") == [(0,)]


# --- expert feedback ------------------------------------------------------------------------


@both_backends
def test_feedback_round_trip_through_show_history_and_report(ws, tmp_path):
    code, doc, err = qualify(ws, samples(tmp_path / "in", 2), "--report")
    q = doc["qualifications"][0]
    machine = {n["key"]: n["verdict"] for n in q["nodes"]}
    opposite = "reject" if machine["EA-5"] == "accept" else "accept"
    comment = "Carbides look <undissolved> & evenly spread; segmentation missed fine ones."
    code, out, err = kb(
        "feedback", q["id"], "EA-5", "--verdict", opposite, "--comment", comment,
        "--expert", "Dr. Ada Weld", "--json", "-w", ws,
    )  # fmt: skip
    assert code == 0, err
    entry = json.loads(out)["feedback"]
    assert entry["node"] == "EA-5" and entry["verdict"] == opposite
    assert entry["machine_verdict"] == machine["EA-5"] and entry["expert"] == "Dr. Ada Weld"
    code, out, err = kb(
        "feedback", q["id"], "qualification", "--verdict", "accept", "--comment", "fine", "-w", ws
    )
    assert code == 0, err and "machine verdict" in out

    code, out, _ = kb("show", q["id"], "--json", "-w", ws)
    shown = json.loads(out)
    assert [(f["node"], f["verdict"], f["expert"]) for f in shown["feedback"]] == [
        ("EA-5", opposite, "Dr. Ada Weld"),
        ("qualification", "accept", getpass.getuser()),
    ]
    assert shown["feedback"][0]["comment"] == comment
    assert {n["key"]: n["verdict"] for n in shown["nodes"]} == machine  # beside, never over
    code, out, _ = kb("show", q["id"], "-w", ws)
    assert "Expert feedback" in out and comment in out and "Dr. Ada Weld" in out

    code, out, _ = kb("history", "--json", "-w", ws)
    rows = {r["id"]: r for r in json.loads(out)["qualifications"]}
    assert [f["comment"] for f in rows[q["id"]]["feedback"]] == [comment, "fine"]
    assert rows[doc["qualifications"][1]["id"]]["feedback"] == []
    code, out, _ = kb("history", "-w", ws)
    assert "Ada" in out and opposite in out  # the table may wrap the name

    code, _, err = kb("report", q["id"], "-w", ws)
    assert code == 0, err
    html = Path(q["report"]).read_text(encoding="utf-8")
    assert "Carbides look &lt;undissolved&gt; &amp; evenly spread" in html
    assert "Dr. Ada Weld" in html and "Expert feedback" in html

    code, out, err = kb("audit", "verify", "--json", "-w", ws)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["ok"] and summary["qualifications"] == 2 and summary["feedback"] == 2


@both_backends
def test_feedback_refuses_unknown_ids_nodes_and_verdicts_and_stores_nothing(ws, tmp_path):
    code, doc, _ = qualify(ws, samples(tmp_path / "in", 1))
    ident = doc["qualifications"][0]["id"]
    code, out, err = kb("feedback", 404, "EA-5", "--verdict", "accept", "--comment", "x", "-w", ws)
    assert code == 1 and out == "" and "no qualification with ID 404" in err
    code, _, err = kb("feedback", ident, "EA-9", "--verdict", "accept", "--comment", "x", "-w", ws)
    assert code == 1 and err.count("\n") == 1
    assert f"qualification {ident} has no node 'EA-9'; valid nodes: qualification, EA-5" in err
    code, _, err = kb("feedback", ident, "EA-5", "--verdict", "review", "--comment", "x", "-w", ws)
    assert code == 2 and "'accept', 'reject'" in err
    code, _, err = kb("feedback", ident, "EA-5", "--verdict", "accept", "--comment", " ", "-w", ws)
    assert code == 1 and ("needs a comment" in err or "needs a reason" in err)
    assert sql(ws, "SELECT COUNT(*) FROM feedback") == [(0,)]


# --- the hash chain -------------------------------------------------------------------------


@both_backends
def test_verify_passes_then_names_a_verdict_edited_behind_the_tools_back(ws, tmp_path):
    code, doc, _ = qualify(ws, samples(tmp_path / "in", 3))
    ids = [q["id"] for q in doc["qualifications"]]
    code, out, err = kb("audit", "verify", "-w", ws)
    assert code == 0 and "Audit log intact: " in out and "3 qualification(s)" in out and err == ""
    current = sql(ws, f"SELECT verdict FROM qualification WHERE id = {ids[1]}")[0][0]
    forged = "reject" if current == "accept" else "accept"
    unguard(ws, "qualification")  # an attacker removes the guard first
    sql(ws, f"UPDATE qualification SET verdict = '{forged}' WHERE id = {ids[1]}")
    code, out, err = kb("audit", "verify", "-w", ws)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert f"broken: qualification {ids[1]} content differs" in err
    code, out, _ = kb("audit", "verify", "--json", "-w", ws)
    report = json.loads(out)
    assert code == 1 and report["first_bad"] == {"kind": "qualification", "id": ids[1]}
    (seq,) = sql(ws, f"SELECT seq FROM audit_chain WHERE kind = 'qualification' "
                     f"AND record_id = {ids[1]}")[0]
    assert report["checked"] == seq - 1


@both_backends
def test_verify_names_an_edited_result_document(ws, tmp_path):
    code, doc, _ = qualify(ws, samples(tmp_path / "in", 2))
    last = doc["qualifications"][-1]["id"]
    unguard(ws, "qualification")
    sql(
        ws,
        "UPDATE qualification SET result_json = replace(result_json, '\"threshold\": 0.0', "
        f"'\"threshold\": -5.0') WHERE id = {last}",
    )
    assert "-5.0" in sql(ws, f"SELECT result_json FROM qualification WHERE id = {last}")[0][0]
    code, _, err = kb("audit", "verify", "-w", ws)
    assert code == 1 and f"qualification {last}" in err


@both_backends
def test_verify_names_an_edited_feedback_comment(ws, tmp_path):
    code, doc, _ = qualify(ws, samples(tmp_path / "in", 1))
    ident = doc["qualifications"][0]["id"]
    for comment in ("first look", "second look"):
        kb("feedback", ident, "EA-5", "--verdict", "reject", "--comment", comment, "-w", ws)
    code, doc2, _ = qualify(ws, samples(tmp_path / "in2", 1))
    code, out, _ = kb("audit", "verify", "-w", ws)
    assert code == 0 and "2 qualification(s), 2 feedback" in out
    unguard(ws, "feedback")
    sql(
        ws,
        "UPDATE feedback SET comment = 'looks fine to me' WHERE comment = 'second look'",
    )
    code, _, err = kb("audit", "verify", "-w", ws)
    assert code == 1 and "broken: feedback 2 content differs" in err


@both_backends
def test_feedback_and_qualifications_share_one_chain(ws, tmp_path):
    code, doc, _ = qualify(ws, samples(tmp_path / "in", 1))
    first = doc["qualifications"][0]["id"]
    kb("feedback", first, "EA-5", "--verdict", "accept", "--comment", "ok", "-w", ws)
    code, doc, _ = qualify(ws, samples(tmp_path / "in2", 1))
    second = doc["qualifications"][0]["id"]
    chain = sql(ws, "SELECT kind, record_id, prev_hash, record_hash FROM audit_chain ORDER BY seq")
    assert chain[0][:2] == ("ruleset", 1) and chain[0][2] == "0" * 64
    assert [(k, i) for k, i, _, _ in chain[-3:]] == [
        ("qualification", first),
        ("feedback", 1),
        ("qualification", second),
    ]
    assert all(chain[n][2] == chain[n - 1][3] for n in range(1, len(chain)))
    (feedback_hash,) = sql(ws, "SELECT record_hash FROM feedback")[0]
    assert feedback_hash == chain[-2][3]
    # Removing the feedback and its chain entry breaks the link to the next qualification.
    unguard(ws, "feedback", "audit_chain")
    sql(
        ws,
        "DELETE FROM audit_chain WHERE kind = 'feedback'",
        "DELETE FROM feedback",
    )
    code, _, err = kb("audit", "verify", "-w", ws)
    assert code == 1 and f"broken: qualification {second} does not follow" in err


@both_backends
def test_a_record_slipped_in_without_a_chain_entry_is_caught(ws, tmp_path):
    code, doc, _ = qualify(ws, samples(tmp_path / "in", 1))
    ident = doc["qualifications"][0]["id"]
    sql(
        ws,
        "INSERT INTO feedback (created_at, qualification_id, node, verdict, comment, expert, "
        f"prev_hash, record_hash) VALUES ('2026-01-01 00:00:00', {ident}, 'EA-5', 'accept', "
        "'forged', 'nobody', 'x', 'y')",
    )
    code, _, err = kb("audit", "verify", "-w", ws)
    assert code == 1 and "feedback 1 is not in the audit chain" in err


# --- history filters ------------------------------------------------------------------------


@both_backends
def test_history_filters_by_verdict_and_time(ws, tmp_path):
    code, doc, _ = qualify(ws, samples(tmp_path / "in", 4), "--normalize", "batch")
    verdicts = {q["id"]: q["verdict"] for q in doc["qualifications"]}

    def history(*args: object) -> list[int]:
        code, out, err = kb("history", "--json", "-w", ws, *args)
        assert code == 0, err
        return [r["id"] for r in json.loads(out)["qualifications"]]

    assert history() == sorted(verdicts, reverse=True)
    for verdict in set(verdicts.values()) | {"review"}:
        assert history("--verdict", verdict) == sorted(
            (i for i, v in verdicts.items() if v == verdict), reverse=True
        )
    assert history("--limit", 2) == sorted(verdicts, reverse=True)[:2]
    created = doc["qualifications"][0]["created_at"]
    assert len(history("--since", created[:10])) == 4
    assert len(history("--since", created)) == 4
    assert history("--since", "2999-01-01") == []
    assert history("--since", "2999-01-01T00:00:00+14:00") == []
    code, out, err = kb("history", "--since", "last tuesday", "-w", ws)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "--since 'last tuesday' is not a date; use YYYY-MM-DD" in err
    code, _, err = kb("history", "--verdict", "maybe", "-w", ws)
    assert code == 1 and "use one of accept, reject, review, not_assessed" in err


@both_backends
def test_history_until_a_day_includes_it_and_sample_matches_part_of_the_path(ws, tmp_path):
    _, doc, _ = qualify(ws, samples(tmp_path / "in", 3), "--normalize", "batch")
    created = doc["qualifications"][0]["created_at"]

    def history(*args: object) -> list[str]:
        code, out, err = kb("history", "--json", "-w", ws, *args)
        assert code == 0, err
        return [Path(r["sample"]["path"]).name for r in json.loads(out)["qualifications"]]

    assert len(history("--until", created[:10])) == 3  # the whole day
    assert len(history("--until", created)) >= 1  # that moment included
    assert history("--until", "2000-01-01") == []
    assert history("--sample", "S1.PNG") == ["s1.png"]
    code, _, err = kb("history", "--until", "soon", "-w", ws)
    assert code == 1 and "--until 'soon' is not a date" in err


def test_kb_report_keeps_an_earlier_different_report_beside_the_new_one(ws, tmp_path):
    _, doc, _ = qualify(ws, samples(tmp_path / "in", 1), "--normalize", "batch")
    ident = doc["qualifications"][0]["id"]
    code, out, err = kb("report", ident, "--json", "-w", ws)
    first = Path(json.loads(out)["report"])
    code, out, err = kb("report", ident, "--json", "-w", ws)
    assert Path(json.loads(out)["report"]) == first and "earlier" not in json.loads(out)
    code, _, err = kb("feedback", ident, "EA-5", "--verdict", "reject", "--comment", "no",
                      "--expert", "A. Expert", "-w", ws)
    assert code == 0, err
    before = first.read_bytes()
    code, out, err = kb("report", ident, "--json", "-w", ws)
    second = json.loads(out)
    assert second["report"] == str(first) and second["earlier"] != str(first)
    assert Path(second["earlier"]).read_bytes() == before
    assert "A. Expert" in first.read_text(encoding="utf-8")


# --- schema versions ------------------------------------------------------------------------


def test_a_schema_1_database_migrates_and_its_chain_still_verifies(tmp_path):
    from tests.workspaces import new_workspace

    root = tmp_path / "old"
    new_workspace(root)
    shutil.copy(SCHEMA_2, root / "kb.sqlite")
    sql(  # what schema 1 had: no feedback and no cross-kind chain (so no third qualification)
        root,
        "DROP TABLE audit_chain",
        "DROP TABLE feedback",
        "DROP TRIGGER node_verdict_no_delete",
        "DROP TRIGGER qualification_no_delete",
        "DELETE FROM node_verdict WHERE qualification_id = 3",
        "DELETE FROM qualification WHERE id = 3",
        "UPDATE schema_info SET version = 1",
    )
    code, out, err = kb("audit", "verify", "-w", root)
    assert code == 0 and "2 qualification(s)" in out, err
    assert sql(root, "SELECT version FROM schema_info") == [(SCHEMA_VERSION,)]
    assert sql(
        root, "SELECT record_id FROM audit_chain WHERE kind = 'qualification' ORDER BY seq"
    ) == [(1,), (2,)]
    code, _, err = kb("feedback", 1, "EA-5", "--verdict", "accept", "--comment", "k", "-w", root)
    assert code == 0, err
    assert verify(root)[0] == 0
    listed = sql(root, "SELECT name FROM sqlite_master WHERE type = 'trigger'")
    triggers = {name for (name,) in listed}
    assert {"feedback_no_update", "audit_chain_no_delete", "normalization_stat_no_update",
            "calibration_no_delete"} <= triggers


# --- everything a verdict depends on is covered ---------------------------------------------


def verify(ws: Path, *extra: object) -> tuple[int, dict, str]:
    code, out, err = kb("audit", "verify", "--json", "-w", ws, *extra)
    return code, json.loads(out), err


def chain_kinds(ws: Path) -> list[tuple[str, int]]:
    return [(k, i) for k, i in sql(ws, "SELECT kind, record_id FROM audit_chain ORDER BY seq")]


@both_backends
def test_an_edited_ruleset_snapshot_is_caught_by_verify_and_refused_at_use(ws, tmp_path):
    code, doc, err = qualify(ws, samples(tmp_path / "in", 1))
    assert code == 0, err
    (snapshot,) = sql(ws, "SELECT snapshot_json FROM ruleset_version WHERE version = 1")[0]
    assert '"threshold": 0.0' in snapshot
    unguard(ws, "ruleset_version")
    sql(ws, "UPDATE ruleset_version SET snapshot_json = "
            "replace(snapshot_json, '\"threshold\": 0.0', '\"threshold\": -9.0')")
    code, report, _ = verify(ws)
    assert code == 1 and report["first_bad"] == {"kind": "ruleset", "id": 1}
    code, out, err = kb("audit", "verify", "-w", ws)
    assert code == 1 and "broken: ruleset 1" in err and err.count("\n") == 1
    code, out, err = kb("qualify", *samples(tmp_path / "in2", 1), "-w", ws)
    assert code == 1 and "ruleset version 1" in err and err.count("\n") == 1
    code, out, err = kb("sync", "-w", ws)
    assert code == 1 and "ruleset version 1" in err and "unchanged" not in out
    assert sql(ws, "SELECT COUNT(*) FROM qualification") == [(1,)]


@both_backends
def test_an_edited_normalisation_mu_is_caught_by_verify_and_refused_at_use(ws, tmp_path):
    stats = sql(ws, "SELECT id FROM normalization_stat ORDER BY id")
    assert stats, "the synced workspace has reference statistics"
    with pytest.raises(DBAPIError, match="append-only"):
        sql(ws, "UPDATE normalization_stat SET mu = mu + 1")
    unguard(ws, "normalization_stat")
    sql(ws, f"UPDATE normalization_stat SET mu = mu - 0.5 WHERE id = {stats[-1][0]}")
    code, report, _ = verify(ws)
    assert code == 1 and report["first_bad"] == {"kind": "normalization_stat", "id": stats[-1][0]}
    code, out, err = kb("qualify", *samples(tmp_path / "in", 1), "-w", ws)
    assert code == 1 and err.count("\n") == 1 and "normalisation statistic" in err
    assert sql(ws, "SELECT COUNT(*) FROM qualification") == [(0,)]


@both_backends
def test_an_edited_calibration_is_caught_by_verify_and_refused_at_use(ws, tmp_path):
    cal = samples(tmp_path / "cal", 4)
    code, out, err = kb("calibrate", cal[0].parent, "--json", "-w", ws)
    assert code == 0, err
    version = json.loads(out)["calibration"]
    with pytest.raises(DBAPIError, match="append-only"):
        sql(ws, "DELETE FROM calibration")
    unguard(ws, "calibration", "normalization_stat")
    sql(ws, f"UPDATE normalization_stat SET sigma = sigma * 10 "
            f"WHERE calibration_version = {version}")
    code, report, _ = verify(ws)
    assert code == 1 and report["first_bad"]["kind"] == "normalization_stat"
    code, _, err = kb("qualify", *samples(tmp_path / "in", 1), "-w", ws)
    assert code == 1 and "normalisation statistic" in err
    sql(ws, f"UPDATE calibration SET images = 99 WHERE id = {version}")
    code, report, _ = verify(ws)
    assert code == 1 and report["first_bad"] == {"kind": "calibration", "id": version}


@both_backends
def test_an_edited_reference_image_is_caught_by_verify_and_report(ws, tmp_path):
    (sha,) = sql(ws, "SELECT sha256 FROM image WHERE data IS NOT NULL ORDER BY sha256")[0]
    other = micrograph(tmp_path / "other.png", seed=99, pink_share=0.5).read_bytes()
    edit = ("UPDATE image SET data = :data WHERE sha256 = :sha", {"data": other, "sha": sha})
    with pytest.raises(DBAPIError, match="append-only"):
        sql(ws, edit)
    unguard(ws, "image")
    sql(ws, edit)
    code, report, _ = verify(ws)
    assert code == 1 and report["first_bad"] == {"kind": "image", "id": sha}
    code, out, err = kb("audit", "verify", "-w", ws)
    assert code == 1 and f"image {sha[:12]}" in err


@both_backends
def test_an_edited_sample_thumbnail_is_caught_by_verify_and_report(ws, tmp_path):
    code, doc, err = qualify(ws, samples(tmp_path / "in", 2))
    assert code == 0, err
    q = doc["qualifications"][1]
    assert q["sample"]["thumbnail_sha256"]
    other = micrograph(tmp_path / "other.png", seed=98, pink_share=0.6).read_bytes()
    unguard(ws, "image")
    sql(ws, ("UPDATE image SET thumbnail_png = :png WHERE sha256 = :sha",
             {"png": other, "sha": q["sample"]["sha256"]}))
    code, report, _ = verify(ws)
    assert code == 1 and report["first_bad"] == {"kind": "qualification", "id": q["id"]}
    assert "thumbnail" in report["problem"]
    code, out, err = kb("report", q["id"], "-w", ws)
    assert code == 1 and "thumbnail" in err and err.count("\n") == 1


@both_backends
def test_swapping_the_ids_of_two_qualifications_is_caught(ws, tmp_path):
    code, doc, err = qualify(ws, samples(tmp_path / "in", 3))
    a, b = doc["qualifications"][0]["id"], doc["qualifications"][1]["id"]
    code, before, _ = verify(ws)
    assert code == 0
    unguard(ws, "qualification", "node_verdict", "audit_chain")
    swap = "CASE {col} WHEN {a} THEN {b} WHEN {b} THEN {a} ELSE {col} END"
    sql(
        ws,
        without_foreign_keys(ws),
        f"UPDATE qualification SET id = -id WHERE id IN ({a}, {b})",
        f"UPDATE qualification SET id = {swap.format(col='-id', a=a, b=b)} WHERE id < 0",
        f"UPDATE node_verdict SET qualification_id = "
        f"{swap.format(col='qualification_id', a=a, b=b)}",
        "UPDATE audit_chain SET record_id = -record_id WHERE kind = 'qualification' "
        f"AND record_id IN ({a}, {b})",
        f"UPDATE audit_chain SET record_id = {swap.format(col='-record_id', a=a, b=b)} "
        "WHERE record_id < 0",
    )
    samples_now = dict(sql(ws, "SELECT id, sample_path FROM qualification"))
    assert samples_now[a].endswith("s1.png") and samples_now[b].endswith("s0.png")
    code, report, _ = verify(ws)  # the entry where `a` was now holds `b`: named as such
    assert code == 1 and report["first_bad"] == {"kind": "qualification", "id": b}
    assert "content differs" in report["problem"]


# --- the anchored head and the keyed chain --------------------------------------------------


def forge_tail(ws: Path, mac: str | None) -> int:
    """Append a copy of the last qualification, verdict flipped, with correctly chained hashes."""
    from sqlmodel import select

    from kb.audit import AuditEntry, chained, record_content
    from kb.config import Workspace
    from kb.store import KnowledgeBase
    from kb.tables import NodeVerdict, Qualification

    store = KnowledgeBase.open(Workspace.open(ws))
    with store.engine.connect() as con:
        head = con.exec_driver_sql(
            "SELECT record_hash FROM audit_chain ORDER BY seq DESC LIMIT 1").scalar()
        last = con.exec_driver_sql("SELECT MAX(id) FROM qualification").scalar()
    from sqlmodel import Session

    with Session(store.engine) as s:
        old = s.get(Qualification, last)
        nodes = list(s.exec(select(NodeVerdict).where(NodeVerdict.qualification_id == last)))
        forged = Qualification(**{**old.model_dump(), "id": last + 1, "verdict": "accept",
                                  "prev_hash": head, "record_hash": ""})
        copies = [NodeVerdict(**{**n.model_dump(), "id": None, "qualification_id": last + 1,
                                 "verdict": "accept"}) for n in nodes]
        forged.record_hash = chained(head, record_content(s, "qualification", forged, copies))
        s.add(forged)
        s.flush()
        s.add_all(copies)
        s.add(AuditEntry(kind="qualification", record_id=last + 1, prev_hash=head,
                         record_hash=forged.record_hash, format=2, mac=mac))
        s.commit()
    store.close()
    return last + 1


def rehash_from(ws: Path, kind: str, record_id: int) -> None:
    """Recompute every hash from this record to the head, as an attacker without the key can."""
    from sqlalchemy import text
    from sqlmodel import Session, col, select

    from kb.audit import GENESIS, MODELS, AuditEntry, chained, record_content
    from kb.config import Workspace
    from kb.store import KnowledgeBase

    store = KnowledgeBase.open(Workspace.open(ws))
    with Session(store.engine) as s:
        prev, started = GENESIS, False
        for entry in s.exec(select(AuditEntry).order_by(col(AuditEntry.seq))).all():
            started = started or (entry.kind, entry.record_id) == (kind, record_id)
            if not started:
                prev = entry.record_hash
                continue
            record = s.get(MODELS[entry.kind], entry.record_id)
            digest = chained(prev, record_content(s, entry.kind, record))
            params = {"p": prev, "h": digest, "i": entry.record_id, "q": entry.seq}
            s.exec(text("UPDATE audit_chain SET prev_hash = :p, record_hash = :h "
                        "WHERE seq = :q"), params=params)
            if entry.kind in ("qualification", "feedback"):
                s.exec(text(f"UPDATE {entry.kind} SET prev_hash = :p, record_hash = :h "
                            "WHERE id = :i"), params=params)
            prev = digest
        s.commit()
    store.close()


def use_key(ws: Path, key: str = "the auditor keeps this secret") -> Path:
    key_file = ws / "audit.key"
    key_file.write_text(key + "\n")
    config = ws / "kb.toml"
    config.write_text(config.read_text() + '\n[audit]\nkey_file = "audit.key"\n')
    return key_file


@both_backends
def test_audit_head_prints_the_head_its_position_and_time(ws, tmp_path):
    code, doc, _ = qualify(ws, samples(tmp_path / "in", 2))
    code, out, err = kb("audit", "head", "--json", "-w", ws)
    assert code == 0, err
    head = json.loads(out)
    (seq, digest) = sql(ws, "SELECT seq, record_hash FROM audit_chain ORDER BY seq DESC")[0]
    assert head["hash"] == digest and head["seq"] == seq
    assert head["kind"] == "qualification" and head["id"] == doc["qualifications"][-1]["id"]
    assert head["created_at"][:19] == doc["qualifications"][-1]["created_at"][:19]
    code, out, _ = kb("audit", "head", "-w", ws)
    assert code == 0 and digest in out and f"seq {seq}" in out


@both_backends
def test_a_middle_record_rehashed_to_the_head_fails_the_anchored_head(ws, tmp_path):
    code, doc, _ = qualify(ws, samples(tmp_path / "in", 3))
    middle = doc["qualifications"][1]["id"]
    anchored = json.loads(kb("audit", "head", "--json", "-w", ws)[1])["hash"]
    code, _, err = kb("audit", "verify", "--expect-head", anchored, "-w", ws)
    assert code == 0, err
    unguard(ws, "qualification", "audit_chain")
    sql(ws, f"UPDATE qualification SET operator = 'someone else' WHERE id = {middle}")
    rehash_from(ws, "qualification", middle)
    code, report, _ = verify(ws)
    assert code == 0  # the chain alone cannot tell: it is consistent again
    code, report, err = verify(ws, "--expect-head", anchored)
    assert code == 1 and not report["ok"] and "expected head" in report["problem"]
    code, out, err = kb("audit", "verify", "--expect-head", "0" * 64, "-w", ws)
    assert code == 1 and err.count("\n") == 1 and "0000000000000000" in err


@both_backends
def test_a_keyed_chain_catches_a_rehashed_middle_record_and_names_it(ws, tmp_path):
    use_key(ws)
    code, doc, err = qualify(ws, samples(tmp_path / "in", 3))
    assert code == 0, err
    middle = doc["qualifications"][1]["id"]
    code, report, err = verify(ws)
    assert code == 0 and report["macs"]["checked"] == 3, err  # synced before the key: unkeyed
    unguard(ws, "qualification", "audit_chain")
    sql(ws, f"UPDATE qualification SET operator = 'someone else' WHERE id = {middle}")
    rehash_from(ws, "qualification", middle)
    code, report, _ = verify(ws)
    assert code == 1 and report["first_bad"] == {"kind": "qualification", "id": middle}
    assert "MAC" in report["problem"]


@both_backends
def test_a_forged_tail_record_is_caught_by_the_key(ws, tmp_path):
    key_file = use_key(ws)
    code, doc, err = qualify(ws, samples(tmp_path / "in", 2))
    assert code == 0, err
    forged = forge_tail(ws, mac="ab" * 32)
    code, report, _ = verify(ws)
    assert code == 1 and report["first_bad"] == {"kind": "qualification", "id": forged}
    config = ws / "kb.toml"
    config.write_text(config.read_text().replace('key_file = "audit.key"', ""))
    code, report, _ = verify(ws, "--key-file", key_file)
    assert code == 1 and report["first_bad"] == {"kind": "qualification", "id": forged}
    code, report, _ = verify(ws)  # without the key: MACs it cannot check, said so
    assert code == 0 and report["macs"]["unchecked"] == 3  # two qualifications and the forgery
    code, out, _ = kb("audit", "verify", "-w", ws)
    assert "3 record(s) carry a MAC that was not checked" in out


@both_backends
def test_a_forged_tail_record_without_a_mac_on_a_keyed_chain_is_caught_without_the_key(
    ws, tmp_path
):
    use_key(ws)
    qualify(ws, samples(tmp_path / "in", 1))
    forged = forge_tail(ws, mac=None)
    config = ws / "kb.toml"
    config.write_text(config.read_text().replace('key_file = "audit.key"', ""))
    code, report, _ = verify(ws)
    assert code == 1 and report["first_bad"] == {"kind": "qualification", "id": forged}


@both_backends
def test_writers_refuse_a_keyed_chain_without_the_key_or_with_another_key(
    ws, tmp_path, monkeypatch
):
    use_key(ws)
    code, doc, err = qualify(ws, samples(tmp_path / "in", 1))
    assert code == 0, err
    ident = doc["qualifications"][0]["id"]
    config = ws / "kb.toml"
    config.write_text(config.read_text().replace('key_file = "audit.key"', ""))
    code, _, err = kb("feedback", ident, "EA-5", "--verdict", "accept", "--comment", "x", "-w", ws)
    assert code == 1 and err.count("\n") == 1 and "KB_AUDIT_KEY" in err
    monkeypatch.setenv("KB_AUDIT_KEY", "not the auditor's key at all")
    code, _, err = kb("qualify", *samples(tmp_path / "in2", 1), "-w", ws)
    assert code == 1 and err.count("\n") == 1 and "does not match" in err
    monkeypatch.setenv("KB_AUDIT_KEY", "the auditor keeps this secret")
    code, _, err = kb("feedback", ident, "EA-5", "--verdict", "accept", "--comment", "x", "-w", ws)
    assert code == 0, err
    assert sql(ws, "SELECT COUNT(*) FROM feedback") == [(1,)]
    code, report, _ = verify(ws)
    assert code == 0 and report["macs"]["unchecked"] == 0


@both_backends
def test_a_key_given_to_verify_when_no_record_is_keyed_fails(ws, tmp_path):
    qualify(ws, samples(tmp_path / "in", 1))
    key = tmp_path / "k"
    key.write_text("the auditor keeps this secret")
    code, report, _ = verify(ws, "--key-file", key)
    assert code == 1 and "no record" in report["problem"]


# --- a damaged database stops writes --------------------------------------------------------


def damage(database: Path) -> None:
    """Overwrite bytes in the middle of the file, as a stray write would: here the page of the
    prompt table, which writing a qualification never reads."""
    with sqlite3.connect(database) as con:
        (page,) = con.execute("SELECT pageno FROM dbstat WHERE name = 'prompt'").fetchone()
        (size,) = con.execute("PRAGMA page_size").fetchone()
    con.close()
    with database.open("r+b") as handle:
        handle.seek((page - 1) * size)
        handle.write(b"\xde\xad\xbe\xef" * 8)
    con = sqlite3.connect(database)
    try:
        result = con.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        result = [(str(exc),)]
    finally:
        con.close()
    assert result != [("ok",)], "the damage must be visible to quick_check"


def test_a_damaged_database_refuses_writes_and_verify_reports_it(ws, tmp_path):
    code, doc, _ = qualify(ws, samples(tmp_path / "in", 2))
    damage(ws / "kb.sqlite")
    before = (ws / "kb.sqlite").read_bytes()
    for command in (
        ["qualify", *samples(tmp_path / "in2", 1)],
        ["feedback", 1, "EA-5", "--verdict", "accept", "--comment", "x"],
        ["sync"],
        ["calibrate", tmp_path / "in"],
    ):
        code, out, err = kb(*command, "-w", ws)
        assert code == 1, (command, out, err)
        assert err.count("\n") == 1 and "damaged" in err and ".recover" in err, err
    assert (ws / "kb.sqlite").read_bytes() == before
    code, out, err = kb("audit", "verify", "-w", ws)
    assert code == 1 and "damaged" in err and "Traceback" not in err


# --- migration of a real schema-2 database --------------------------------------------



def test_a_real_schema_2_database_migrates_keeps_verifying_and_extends_in_the_new_format(
    tmp_path,
):
    """tests/data/kb-schema-2.sqlite was written by VLKB before schema 3: a ruleset, reference
    statistics, a calibration, three qualifications and one feedback."""
    from tests.workspaces import new_workspace

    root = tmp_path / "old"
    new_workspace(root)
    shutil.copy(SCHEMA_2, root / "kb.sqlite")
    code, report, err = verify(root)
    assert code == 0, (report, err)
    assert sql(root, "SELECT version FROM schema_info") == [(SCHEMA_VERSION,)]
    kinds = [k for k, _ in chain_kinds(root)]
    assert kinds[:4] == ["qualification", "qualification", "feedback", "qualification"]
    assert set(kinds[4:]) == {"ruleset", "normalization_stat", "calibration"}
    assert report["checked"] == len(kinds)
    code, _, err = kb("feedback", 3, "EA-5", "--verdict", "accept", "--comment", "new", "-w", root)
    assert code == 0, err
    assert sql(root, "SELECT format FROM audit_chain ORDER BY seq") == (
        [(1,)] * 4 + [(2,)] * (len(kinds) - 4 + 1)
    )
    code, again, err = verify(root)
    assert code == 0 and again["checked"] == len(kinds) + 1, err
    code, _, _ = verify(root)  # opening twice migrates nothing twice
    assert sql(root, "SELECT COUNT(*) FROM audit_chain") == [(len(kinds) + 1,)]
    unguard(root, "feedback")
    sql(root, "UPDATE feedback SET comment = 'edited' WHERE id = 1")
    code, report, _ = verify(root)
    assert code == 1 and report["first_bad"] == {"kind": "feedback", "id": 1}


def test_a_schema_3_database_gains_the_local_bank_cache_and_keeps_its_chain(tmp_path):
    """Schema 4 only adds the local-bank cache: a schema-3 database opens, gains the table
    and keeps every record and chain entry it had."""
    root = tmp_path / "old"
    new_workspace(root)
    shutil.copy(SCHEMA_2, root / "kb.sqlite")
    assert verify(root)[0] == 0
    entries = sql(root, "SELECT COUNT(*) FROM audit_chain")
    sql(root, "DROP TABLE local_bank", "UPDATE schema_info SET version = 3")
    code, report, err = verify(root)
    assert code == 0, (report, err)
    assert sql(root, "SELECT version FROM schema_info") == [(SCHEMA_VERSION,)]
    assert sql(root, "SELECT COUNT(*) FROM local_bank") == [(0,)]
    assert sql(root, "SELECT COUNT(*) FROM audit_chain") == entries


def test_an_old_format_record_after_a_new_format_one_is_refused(tmp_path):
    from tests.workspaces import new_workspace

    root = tmp_path / "old"
    new_workspace(root)
    shutil.copy(SCHEMA_2, root / "kb.sqlite")
    assert verify(root)[0] == 0
    unguard(root, "audit_chain")
    (last,) = sql(root, "SELECT MAX(seq) FROM audit_chain")[0]
    sql(root, f"UPDATE audit_chain SET format = 1 WHERE seq = {last}")
    code, report, _ = verify(root)
    assert code == 1 and "format" in report["problem"]
