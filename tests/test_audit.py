"""Reports and the audit trail through the real CLI: `qualify --report`, `report`, `show`,
`history`, `feedback` and `audit verify`, on real SQLite files and tiny real models."""

from __future__ import annotations

import getpass
import json
import re
import shutil
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

import reports
from cli.app import app
from engine.sync import sync_workspace
from tests.workspaces import micrograph, new_workspace, write_carbide_assessment

runner = CliRunner()


def kb(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def synced(tmp_path_factory, tiny_clip_dir, tiny_flava_dir) -> Path:
    """A workspace with EA-5 (prompts and references) synced once; tests work on copies."""
    root = tmp_path_factory.mktemp("synced") / "ws"
    ws = new_workspace(root, tiny_clip_dir, tiny_flava_dir)
    write_carbide_assessment(ws)
    sync_workspace(ws)
    return root


@pytest.fixture
def ws(synced: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(synced, root)
    return root


def samples(folder: Path, n: int) -> list[Path]:
    return [
        micrograph(folder / f"s{i}.png", seed=300 + i, pink_share=0.05 + 0.1 * i) for i in range(n)
    ]


def qualify(ws: Path, files: list[Path], *extra: object) -> tuple[int, dict, str]:
    code, out, err = kb("qualify", *files, "--json", "-w", ws, *extra)
    return code, json.loads(out), err


def sql(ws: Path, *statements: str) -> list[tuple]:
    """Edit the database behind the tool's back, as someone with file access could."""
    rows: list[tuple] = []
    with sqlite3.connect(ws / "kb.sqlite") as con:
        for statement in statements:
            rows = con.execute(statement).fetchall()
    return rows


class Links(HTMLParser):
    """Every href and src in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("href"):
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


def test_verify_passes_then_names_a_verdict_edited_in_sqlite(ws, tmp_path):
    code, doc, _ = qualify(ws, samples(tmp_path / "in", 3))
    ids = [q["id"] for q in doc["qualifications"]]
    code, out, err = kb("audit", "verify", "-w", ws)
    assert code == 0 and "Audit log intact: 3 record(s) verified" in out and err == ""
    current = sql(ws, f"SELECT verdict FROM qualification WHERE id = {ids[1]}")[0][0]
    forged = "reject" if current == "accept" else "accept"
    sql(
        ws,
        "DROP TRIGGER qualification_no_update",  # an attacker removes the guard first
        f"UPDATE qualification SET verdict = '{forged}' WHERE id = {ids[1]}",
    )
    code, out, err = kb("audit", "verify", "-w", ws)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert f"broken: qualification {ids[1]} content differs" in err
    code, out, _ = kb("audit", "verify", "--json", "-w", ws)
    report = json.loads(out)
    assert code == 1 and report["first_bad"] == {"kind": "qualification", "id": ids[1]}
    assert report["checked"] == 1


def test_verify_names_an_edited_result_document(ws, tmp_path):
    code, doc, _ = qualify(ws, samples(tmp_path / "in", 2))
    last = doc["qualifications"][-1]["id"]
    sql(
        ws,
        "DROP TRIGGER qualification_no_update",
        "UPDATE qualification SET result_json = replace(result_json, '\"threshold\": 0.0', "
        f"'\"threshold\": -5.0') WHERE id = {last}",
    )
    assert "-5.0" in sql(ws, f"SELECT result_json FROM qualification WHERE id = {last}")[0][0]
    code, _, err = kb("audit", "verify", "-w", ws)
    assert code == 1 and f"qualification {last}" in err


def test_verify_names_an_edited_feedback_comment(ws, tmp_path):
    code, doc, _ = qualify(ws, samples(tmp_path / "in", 1))
    ident = doc["qualifications"][0]["id"]
    for comment in ("first look", "second look"):
        kb("feedback", ident, "EA-5", "--verdict", "reject", "--comment", comment, "-w", ws)
    code, doc2, _ = qualify(ws, samples(tmp_path / "in2", 1))
    code, out, _ = kb("audit", "verify", "-w", ws)
    assert code == 0 and "4 record(s)" in out and "2 feedback" in out
    sql(
        ws,
        "DROP TRIGGER feedback_no_update",
        "UPDATE feedback SET comment = 'looks fine to me' WHERE comment = 'second look'",
    )
    code, _, err = kb("audit", "verify", "-w", ws)
    assert code == 1 and "broken: feedback 2 content differs" in err


def test_feedback_and_qualifications_share_one_chain(ws, tmp_path):
    code, doc, _ = qualify(ws, samples(tmp_path / "in", 1))
    first = doc["qualifications"][0]["id"]
    kb("feedback", first, "EA-5", "--verdict", "accept", "--comment", "ok", "-w", ws)
    code, doc, _ = qualify(ws, samples(tmp_path / "in2", 1))
    second = doc["qualifications"][0]["id"]
    chain = sql(ws, "SELECT kind, record_id, prev_hash, record_hash FROM audit_chain ORDER BY seq")
    assert [(k, i) for k, i, _, _ in chain] == [
        ("qualification", first),
        ("feedback", 1),
        ("qualification", second),
    ]
    assert chain[0][2] == "0" * 64
    assert chain[1][2] == chain[0][3] and chain[2][2] == chain[1][3]
    (feedback_hash,) = sql(ws, "SELECT record_hash FROM feedback")[0]
    assert feedback_hash == chain[1][3]
    # Removing the feedback and its chain entry breaks the link to the next qualification.
    sql(
        ws,
        "DROP TRIGGER feedback_no_delete",
        "DROP TRIGGER audit_chain_no_delete",
        "DELETE FROM audit_chain WHERE kind = 'feedback'",
        "DELETE FROM feedback",
    )
    code, _, err = kb("audit", "verify", "-w", ws)
    assert code == 1 and f"broken: qualification {second} does not follow" in err


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


# --- schema versions ------------------------------------------------------------------------


def test_a_schema_1_database_migrates_and_its_chain_still_verifies(ws, tmp_path):
    code, doc, _ = qualify(ws, samples(tmp_path / "in", 2))
    ids = [q["id"] for q in doc["qualifications"]]
    sql(  # what schema 1 had: no feedback and no cross-kind chain
        ws,
        "DROP TABLE audit_chain",
        "DROP TABLE feedback",
        "UPDATE schema_info SET version = 1",
    )
    code, out, err = kb("audit", "verify", "-w", ws)
    assert code == 0 and "2 record(s) verified" in out, err
    assert sql(ws, "SELECT version FROM schema_info") == [(2,)]
    assert sql(ws, "SELECT record_id FROM audit_chain ORDER BY seq") == [(i,) for i in ids]
    code, _, err = kb("feedback", ids[0], "EA-5", "--verdict", "accept", "--comment", "k", "-w", ws)
    assert code == 0, err
    triggers = {name for (name,) in sql(ws, "SELECT name FROM sqlite_master WHERE type='trigger'")}
    assert {"feedback_no_update", "audit_chain_no_delete"} <= triggers
