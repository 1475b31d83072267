"""Who and why: the audit trail names a person and says how each verdict was reached.

Feedback needs an expert's name (the web never fills in the server's account) and a reason
when it overrides the machine; a qualification records its operator and where that name came
from; every stored node records the decision rule that produced its verdict (ISO/IEC 17025).
Real CLI, real app (TestClient), real SQLite, the example workspace judged on measurements.
"""

from __future__ import annotations

import getpass
import json
import sqlite3
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cli.web import create_app
from kb.config import Workspace
from tests.cli_runner import kb
from tests.workspaces import example_copy

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
TOKEN = "correct-horse-battery-staple"
BLANK_REASONS = ["", "   ", "\u200b", "\u200b\u2060 \u00a0\ufeff", "\n\t"]




def upload(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]


def feedback_count(ws: Workspace) -> int:
    with sqlite3.connect(ws.root / "kb.sqlite") as con:
        return int(con.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return example_copy(tmp_path / "example")


@pytest.fixture
def judged(workspace: Workspace) -> tuple[Workspace, dict]:
    """One qualification of a sound bead, stored through the CLI."""
    code, out, err = kb("qualify", EXAMPLES / "sound-bead-a.png", "--json", "-w", workspace.root)
    assert code == 0, err
    return workspace, json.loads(out)["qualifications"][0]


# --- the expert's name ---------------------------------------------------------------------


def test_web_feedback_without_an_expert_name_is_refused_not_signed_by_the_server_account(
    judged: tuple[Workspace, dict],
):
    ws, q = judged
    with TestClient(create_app(ws)) as client:
        url = f"/api/qualifications/{q['id']}/feedback"
        for expert in (None, "", "   ", "\u200b"):
            body = {"node": "EA-1", "verdict": "accept", "comment": "dilution is fine"}
            if expert is not None:
                body["expert"] = expert
            response = client.post(url, json=body)
            assert response.status_code == 400, (expert, response.text)
            assert "expert's name" in response.json()["error"]
        form = client.post(f"/qualifications/{q['id']}/feedback",
                           data={"node": "EA-1", "verdict": "accept", "comment": "fine",
                                 "expert": "  "})
        assert form.status_code == 400 and "expert&#39;s name" in form.text
    assert feedback_count(ws) == 0


def test_the_feedback_form_offers_the_signed_in_name_as_the_expert(
    judged: tuple[Workspace, dict],
):
    ws, q = judged
    with TestClient(create_app(ws, token=TOKEN)) as client:
        client.post("/login", data={"token": TOKEN, "name": "Dr. Ada Lovelace"})
        page = client.get(f"/qualifications/{q['id']}")
        assert page.status_code == 200
        assert 'name="expert" value="Dr. Ada Lovelace"' in page.text


# --- the reason ----------------------------------------------------------------------------


@pytest.mark.parametrize("reason", BLANK_REASONS)
def test_feedback_that_overrides_the_machine_needs_a_reason_on_every_path(
    judged: tuple[Workspace, dict], reason: str
):
    ws, q = judged
    machine = {n["key"]: n["verdict"] for n in q["nodes"]}
    assert machine["EA-1"] == "accept"  # the expert below says reject: an override
    code, _, err = kb("feedback", q["id"], "EA-1", "--verdict", "reject", "--comment", reason,
                      "--expert", "R. Hooke", "-w", ws.root)
    assert code == 1 and err.count("\n") == 1 and "reason" in err, err
    with TestClient(create_app(ws)) as client:
        api = client.post(f"/api/qualifications/{q['id']}/feedback",
                          json={"node": "EA-1", "verdict": "reject", "comment": reason,
                                "expert": "R. Hooke"})
        assert api.status_code == 400 and "reason" in api.json()["error"], api.text
        assert "overrides the machine verdict" in api.json()["error"]
        form = client.post(f"/qualifications/{q['id']}/feedback",
                           data={"node": "EA-1", "verdict": "reject", "comment": reason,
                                 "expert": "R. Hooke"})
        assert form.status_code == 400 and "reason" in form.text
    assert feedback_count(ws) == 0


def test_an_override_with_a_reason_is_recorded(judged: tuple[Workspace, dict]):
    ws, q = judged
    code, out, err = kb("feedback", q["id"], "EA-1", "--verdict", "reject", "--comment",
                        "\u200bthe fusion line is mis-segmented", "--expert", "R. Hooke",
                        "--json", "-w", ws.root)
    assert code == 0, err
    entry = json.loads(out)["feedback"]
    assert entry["machine_verdict"] == "accept" and entry["expert"] == "R. Hooke"
    assert feedback_count(ws) == 1


# --- the operator --------------------------------------------------------------------------


def test_the_cli_records_the_operator_and_where_the_name_came_from(workspace: Workspace):
    sample = EXAMPLES / "sound-bead-a.png"
    code, out, err = kb("qualify", sample, "--json", "-w", workspace.root)
    assert code == 0, err
    (by_os,) = json.loads(out)["qualifications"]
    assert by_os["operator"] == getpass.getuser() and by_os["operator_source"] == "os-user"
    code, out, err = kb("qualify", sample, "--json", "--operator", "Q. Engineer",
                        "-w", workspace.root)
    (named,) = json.loads(out)["qualifications"]
    assert named["operator"] == "Q. Engineer" and named["operator_source"] == "cli-option"

    code, out, _ = kb("show", by_os["id"], "--json", "-w", workspace.root)
    assert json.loads(out)["operator_source"] == "os-user"
    code, out, _ = kb("show", by_os["id"], "-w", workspace.root)
    assert f"operator {getpass.getuser()} (OS user" in out
    code, out, _ = kb("show", named["id"], "-w", workspace.root)
    assert "operator Q. Engineer (--operator)" in out
    code, out, _ = kb("history", "--json", "-w", workspace.root)
    rows = {r["id"]: r for r in json.loads(out)["qualifications"]}
    assert rows[by_os["id"]]["operator_source"] == "os-user"
    assert rows[named["id"]]["operator_source"] == "cli-option"
    code, out, err = kb("report", by_os["id"], "--json", "-w", workspace.root)
    assert code == 0, err
    html = Path(json.loads(out)["report"]).read_text(encoding="utf-8")
    assert "OS user" in html


def test_the_web_records_the_signed_in_person_as_operator(workspace: Workspace):
    sample = upload(EXAMPLES / "sound-bead-a.png")
    with TestClient(create_app(workspace, token=TOKEN)) as client:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        response = client.post("/api/qualify", files=sample, headers=bearer)
        (anonymous,) = response.json()["qualifications"]
        assert anonymous["operator"] == getpass.getuser()
        assert anonymous["operator_source"] == "os-user"

        assert client.post("/login", data={"token": TOKEN, "name": " Dr. Ada Lovelace "},
                           follow_redirects=False).status_code == 303
        (signed,) = client.post("/api/qualify", files=sample).json()["qualifications"]
        assert signed["operator"] == "Dr. Ada Lovelace"
        assert signed["operator_source"] == "signed-in"
        page = client.post("/qualify", files=sample)
        assert page.status_code == 200
        shown = client.get(f"/api/qualifications/{signed['id'] + 1}").json()
        assert (shown["operator"], shown["operator_source"]) == ("Dr. Ada Lovelace", "signed-in")

        named = client.post("/api/qualify?operator=R.%20Hooke", files=sample).json()
        (given,) = named["qualifications"]
        assert (given["operator"], given["operator_source"]) == ("R. Hooke", "request")


def test_the_web_on_loopback_records_the_operator_field_else_the_os_user(
    workspace: Workspace,
):
    sample = upload(EXAMPLES / "sound-bead-a.png")
    with TestClient(create_app(workspace)) as client:
        (given,) = client.post("/api/qualify?operator=Q.%20Engineer",
                               files=sample).json()["qualifications"]
        assert (given["operator"], given["operator_source"]) == ("Q. Engineer", "request")
        (blank,) = client.post("/api/qualify?operator=%20%20", files=sample).json()[
            "qualifications"
        ]
        assert (blank["operator"], blank["operator_source"]) == (getpass.getuser(), "os-user")
        page = client.get(f"/qualifications/{blank['id']}")
        assert "OS user" in page.text


# --- the decision rule ---------------------------------------------------------------------


def rules_of(ws: Workspace) -> tuple[dict, dict]:
    tree = tomllib.loads((ws.rules_dir / "tree.toml").read_text(encoding="utf-8"))["gates"]
    assessments = {}
    for path in sorted((ws.rules_dir / "assessments").glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        assessments[data["key"]] = data
    return tree, assessments


def test_every_stored_node_records_the_decision_rule_that_produced_it(workspace: Workspace):
    code, out, err = kb("qualify", EXAMPLES / "porous-bead.png", EXAMPLES / "flat-deposit.png",
                        "--json", "-w", workspace.root)
    assert code == 0, err
    gates, assessments = rules_of(workspace)
    for q in json.loads(out)["qualifications"]:
        code, shown, _ = kb("show", q["id"], "--json", "-w", workspace.root)
        stored = json.loads(shown)
        assert stored["nodes"] == q["nodes"]
        for node in stored["nodes"]:
            rule = node["decision_rule"]
            if node["kind"] == "gate":
                gate = gates[node["key"]]
                assert rule["gate"] == gate["rule"] == node["rule"]
                assert rule["k"] == gate.get("k") and rule["quorum"] == gate.get("quorum")
                wanted = [(p["node"], p["verdict"]) for p in gate.get("preconditions", [])]
                assert [(p["node"], p["verdicts"]) for p in rule["preconditions"]] == wanted
                continue
            a = assessments[node["key"]]
            decision = a.get("decision", {})
            margin = decision.get("review_margin", 0.0)
            threshold = decision.get("threshold", 0.0)
            assert rule["fusion"] == decision.get("fusion", "zsum")
            assert rule["threshold"] == threshold and rule["review_margin"] == margin
            assert rule["review_band"] == [threshold - margin, threshold + margin]
            defaults = tomllib.loads((workspace.rules_dir / "tree.toml").read_text())
            inherited = defaults.get("defaults", {}).get("decision", {})
            assert rule["combination"] == node["combine"] == decision.get(
                "combine", inherited.get("combine", "strictest")
            )
            assert rule["threshold_source"] == "rules"
            assert set(rule["weights"]) == {"text", "image", "local"}  # one per role
            assert rule["measurement_rules"] == [
                {
                    "quantity": m["quantity"], "op": m["op"], "limit": m["limit"],
                    "unit": m["unit"], "uncertainty": m.get("uncertainty", 0.0),
                    "review_band": [m["limit"] - m.get("uncertainty", 0.0),
                                    m["limit"] + m.get("uncertainty", 0.0)],
                }
                for m in a.get("measurements", [])
            ]
            if node["verdict"] != "not_assessed":  # roles unbound: measurements alone
                assert rule["combined"] == ["measurement"]
                assert rule["decided_by"] == node["decided_by"] == "measurement"


def test_a_run_override_is_the_rule_recorded_and_the_report_shows_the_rule(
    workspace: Workspace,
):
    code, out, err = kb("qualify", EXAMPLES / "porous-bead.png", "--threshold", "0.5",
                        "--review-margin", "0.125", "--json", "-w", workspace.root)
    assert code == 0, err
    (q,) = json.loads(out)["qualifications"]
    for node in q["nodes"]:
        if node["kind"] == "assessment":
            assert node["decision_rule"]["threshold"] == 0.5
            assert node["decision_rule"]["review_band"] == [0.375, 0.625]
            assert node["decision_rule"]["threshold_source"] == "run override"
    code, out, err = kb("report", q["id"], "--json", "-w", workspace.root)
    assert code == 0, err
    html = Path(json.loads(out)["report"]).read_text(encoding="utf-8")
    assert "Decision rule" in html and "strictest" in html
    assert "0.375" in html and "0.625" in html
    assert "from run override" in html
    assert "porosity_fraction" in html
