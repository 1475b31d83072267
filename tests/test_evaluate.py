"""`kb evaluate`: metrics worked out by hand, label checks, and agreement with stored verdicts."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from engine.evaluation.labels import LabelsError, read_labels
from engine.evaluation.metrics import (
    agreement,
    auroc,
    balanced_accuracy_at,
    best_threshold,
    top_k_precision,
)
from engine.inputs import image_files
from engine.metrology.synthetic import criteria_of, write_dataset
from engine.scoring import decide
from engine.session import VLKB
from engine.sync import compile_workspace, sync_workspace
from kb.audit import get_qualification
from kb.config import Workspace
from kb.store import KnowledgeBase
from tests.cli_runner import kb
from tests.workspaces import micrograph, new_workspace, write_carbide_assessment

REPO = Path(__file__).resolve().parent.parent

A, R = "accept", "reject"




def test_agreement_by_hand() -> None:
    truth = [A, A, A, R, R, R, A, R]
    verdicts = [A, R, A, R, A, "review", "not_assessed", R]
    scores = [0.9, 0.1, 0.8, 0.2, 0.7, 0.5, None, 0.3]
    m = agreement(truth, verdicts, scores, top_k=3)
    # Decided pairs: (A,A) (A,R) (A,A) (R,R) (R,A) (R,R); the review and the skip drop out.
    assert m["confusion"] == {"tp": 2, "fn": 1, "tn": 2, "fp": 1}
    assert m["n"] == 7 and m["not_assessed"] == 1
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["review_rate"] == pytest.approx(1 / 7)
    # Accepts score 0.9, 0.1, 0.8; rejects 0.2, 0.7, 0.5, 0.3: 8 of 12 pairs ordered right.
    assert m["auroc"] == pytest.approx(8 / 12)
    assert m["top_k"] == pytest.approx(2 / 3)  # 0.9 (A), 0.8 (A), 0.7 (R)


def test_auroc_counts_ties_half_and_needs_both_classes() -> None:
    assert auroc([A, R], [0.5, 0.5]) == 0.5
    assert auroc([A, A, R], [0.2, 0.9, 0.5]) == 0.5
    assert auroc([A, A], [0.1, 0.2]) is None
    assert top_k_precision([A, R, A], [3.0, 2.0, 1.0], 1) == 1.0


def test_rates_without_a_class_are_none_not_zero() -> None:
    m = agreement([A, A], [A, A])
    assert m["recall"] == 1.0 and m["balanced_accuracy"] is None and m["auroc"] is None


def write_labels(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (["name", "EA-1"], [["a.png", A]], "no `image` column"),
        (["image", "EA-1"], [["a.png", A], ["b.png", A]], "missing label columns EA-2"),
        (["image", "EA-1", "EA-2"], [["a.png", A, "maybe"], ["b.png", A, A]],
         "not a.png/EA-2='maybe'"),
        (["image", "EA-1", "EA-2"], [["a.png", A, A], ["b.png", A, A], ["c.png", A, A]],
         "not in the folder: c.png"),
        (["image", "EA-1", "EA-2"], [["a.png", A, A]], "images without labels: b.png"),
        (["image", "EA-1", "EA-2"], [["a.png", A, A], ["a.png", R, R]], "labelled twice"),
    ],
)
def test_bad_labels_are_refused_with_what_is_wrong(
    tmp_path: Path, header: list[str], rows: list[list[str]], message: str
) -> None:
    for name in ("a.png", "b.png"):
        micrograph(tmp_path / name, seed=1, pink_share=0.1)
    labels = write_labels(tmp_path / "labels.csv", header, rows)
    with pytest.raises(LabelsError, match=re.escape(message)):
        read_labels(labels, ["EA-1", "EA-2"], image_files(tmp_path))


def test_evaluation_agrees_with_the_verdicts_stored_in_the_audit_log(
    example: Workspace, tmp_path: Path
) -> None:
    data = tmp_path / "set"
    write_dataset(data, n=24, seed=31, criteria=criteria_of(compile_workspace(example)))
    out = tmp_path / "report"
    code, stdout, err = kb("evaluate", data, "--labels", data / "labels.csv", "--json",
                           "--out", out, "-w", example.root)
    assert code == 0, err
    document = json.loads(stdout)
    assert (out / "evaluation.html").is_file() and document["report"] == str(
        out / "evaluation.html"
    )
    assert (out / "EA-1-confusion.png").stat().st_size > 1000
    with KnowledgeBase.open(example).transaction() as session:
        for sample in document["samples"]:
            stored = json.loads(get_qualification(session, sample["qualification_id"]).result_json)
            nodes = {n["key"]: n["verdict"] for n in stored["nodes"]}
            for key, modes in sample["verdicts"].items():
                assert modes["final"]["verdict"] == nodes[key]
    for key, blocks in document["assessments"].items():
        final = blocks["final"]
        confusion = final["confusion"]
        by_hand = {"tp": 0, "fn": 0, "tn": 0, "fp": 0}
        for sample in document["samples"]:
            truth, verdict = sample["labels"][key], sample["verdicts"][key]["final"]["verdict"]
            if verdict in (A, R):
                cell = {(A, A): "tp", (A, R): "fn", (R, R): "tn", (R, A): "fp"}[(truth, verdict)]
                by_hand[cell] += 1
        assert confusion == by_hand, key
        assert set(blocks) == {"measurement", "final"}  # roles unbound in the example



def test_evaluation_runs_are_tagged_in_the_audit_log_or_kept_out_of_it(tmp_path: Path) -> None:
    from tests.workspaces import example_copy

    example = example_copy(tmp_path / "example")  # its own audit log, counted from empty
    data = tmp_path / "set"
    write_dataset(data, n=6, seed=32, criteria=criteria_of(compile_workspace(example)))
    part = micrograph(tmp_path / "part.png", seed=5, pink_share=0.2)
    assert kb("qualify", part, "-w", example.root)[0] in (0, 2)
    code, stdout, err = kb("evaluate", data, "--labels", data / "labels.csv", "--json",
                           "--out", tmp_path / "e1", "-w", example.root)
    assert code == 0, err
    assert json.loads(stdout)["stored"] is True

    def history(*args: str) -> list[dict]:
        code, out, err = kb("history", "--json", "-w", example.root, *args)
        assert code == 0, err
        return json.loads(out)["qualifications"]

    everything = history()
    assert sorted(r["purpose"] for r in everything) == ["evaluation"] * 6 + ["qualification"]
    assert [r["sample"]["path"] for r in history("--purpose", "qualification")] == [str(part)]
    assert len(history("--purpose", "evaluation")) == 6
    code, _, err = kb("history", "--purpose", "training", "-w", example.root)
    assert code != 0 and "unknown purpose 'training'" in err

    code, stdout, err = kb("evaluate", data, "--labels", data / "labels.csv", "--json",
                           "--no-store", "--out", tmp_path / "e2", "-w", example.root)
    assert code == 0, err
    document = json.loads(stdout)
    assert document["stored"] is False
    assert all(s["qualification_id"] is None for s in document["samples"])
    assert len(history()) == 7  # nothing appended
    code, out, _ = kb("audit", "verify", "-w", example.root)
    assert code == 0 and "(7 qualification(s)" in out

def test_evaluate_cli_refuses_bad_labels_on_one_line(example: Workspace, tmp_path: Path) -> None:
    write_dataset(tmp_path, n=2, seed=3, criteria=criteria_of(compile_workspace(example)))
    labels = tmp_path / "labels.csv"
    labels.write_text(labels.read_text().replace("accept", "yes", 1))
    code, out, err = kb("evaluate", tmp_path, "--labels", labels, "-w", example.root)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "labels must be accept or reject" in err


def test_vision_language_modes_are_scored_from_the_fused_and_per_role_numbers(
    tmp_path: Path, tiny_clip_dir: Path, tiny_flava_dir: Path
) -> None:
    ws = new_workspace(tmp_path / "ws", tiny_clip_dir, tiny_flava_dir)
    write_carbide_assessment(ws)
    sync_workspace(VLKB(ws))
    data = tmp_path / "set"
    rows = []
    for i in range(8):
        share = 0.4 if i % 2 == 0 else 0.04
        micrograph(data / f"m{i}.png", seed=100 + i, pink_share=share)
        rows.append([f"m{i}.png", A if share > 0.3 else R])
    labels = write_labels(data / "labels.csv", ["image", "EA-5"], rows)
    code, stdout, err = kb("evaluate", data, "--labels", labels, "--normalize", "batch",
                           "--json", "--out", tmp_path / "out", "-w", ws.root)
    assert code == 0, err
    document = json.loads(stdout)
    blocks = document["assessments"]["EA-5"]
    assert set(blocks) == {"text", "image", "hybrid", "final"}
    for mode in ("text", "image", "hybrid"):
        assert blocks[mode]["auroc"] is not None and blocks[mode]["n"] == 8
    with KnowledgeBase.open(ws).transaction() as session:
        for sample in document["samples"]:
            stored = json.loads(get_qualification(session, sample["qualification_id"]).result_json)
            node = next(n for n in stored["nodes"] if n["key"] == "EA-5")
            hybrid = sample["verdicts"]["EA-5"]["hybrid"]
            assert hybrid["score"] == pytest.approx(node["score"])
            margin = node["review_margin"] or 0.0
            assert hybrid["verdict"] == decide(node["score"], node["threshold"], margin)
            text = next(e for e in node["evidence"] if e["role"] == "text")
            assert sample["verdicts"]["EA-5"]["text"]["score"] == pytest.approx(text["z"])


def test_threshold_choice_maximises_balanced_accuracy_and_stays_near_the_current_one() -> None:
    scores = [-1.0, -0.5, 0.2, 0.4, 0.9, 1.5]
    truth = [R, R, R, A, A, A]
    assert balanced_accuracy_at(scores, truth, 0.0) == pytest.approx((1 + 2 / 3) / 2)
    chosen = best_threshold(scores, truth, current=0.0)
    assert chosen == pytest.approx(0.3)  # the midpoint between 0.2 (R) and 0.4 (A)
    assert balanced_accuracy_at(scores, truth, chosen) == 1.0
    # Every threshold in (0.2, 0.4] is perfect; the current one wins when it is among them.
    assert best_threshold(scores, truth, current=0.35) == 0.35
    assert balanced_accuracy_at(scores, [A] * 6, 0.0) is None


def test_the_evaluation_page_names_assessments_embeds_its_plots_and_lists_what_to_look_at(
    example: Workspace, tmp_path: Path
) -> None:
    import re as regex

    data = tmp_path / "set"
    write_dataset(data, n=24, seed=32, criteria=criteria_of(compile_workspace(example)))
    out = tmp_path / "report"
    code, stdout, err = kb("evaluate", data, "--labels", data / "labels.csv", "--json",
                           "--out", out, "-w", example.root)
    assert code == 0, err
    document = json.loads(stdout)
    html = (out / "evaluation.html").read_text(encoding="utf-8")
    for key, name in document["names"].items():
        assert f"<h2>{key} {name}</h2>" in html
    sources = regex.findall(r'<img src="([^"]+)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for sample in document["samples"]:
        for key, modes in sample["verdicts"].items():
            verdict, label = modes["final"]["verdict"], sample["labels"][key]
            if verdict == "review" or (verdict in (A, R) and verdict != label):
                assert f"<td class=\"mono\">{sample['image']}</td>" in html
                assert f"#{sample['qualification_id']} " in html


def test_the_page_says_where_labels_were_drawn_from_the_rules_own_limits(
    example: Workspace, tmp_path: Path
) -> None:
    """kb synth's labels.json names the limits it labelled by: where they are the measurement
    rules' own, the page says the measurement row checks the metrology; a hand-made labels
    file, or a rule whose limit has moved since, gets no such note."""
    data = tmp_path / "set"
    write_dataset(data, n=8, seed=33, criteria=criteria_of(compile_workspace(example)))
    provenance = json.loads((data / "labels.json").read_text())
    assert provenance["drawn_by"] == "kb synth" and provenance["seed"] == 33
    provenance["criteria"]["EA-4"][0]["limit"] = 0.05  # as if labelled with another limit
    (data / "labels.json").write_text(json.dumps(provenance))
    out = tmp_path / "report"
    code, stdout, err = kb("evaluate", data, "--labels", data / "labels.csv", "--json",
                           "--out", out, "-w", example.root)
    assert code == 0, err
    measured = [k for k, a in compile_workspace(example).assessments.items() if a.measurements]
    expected = sorted(set(measured) - {"EA-4"})
    assert sorted(json.loads(stdout)["labels_from_rules"]) == expected
    html = (out / "evaluation.html").read_text(encoding="utf-8")
    assert html.count("data-labels-from-rules") == len(expected)

    hand_made = tmp_path / "hand-made.csv"
    hand_made.write_text((data / "labels.csv").read_text())
    code, stdout, err = kb("evaluate", data, "--labels", hand_made, "--json",
                           "--out", tmp_path / "report2", "-w", example.root)
    assert code == 0, err
    assert json.loads(stdout)["labels_from_rules"] == []
    assert "data-labels-from-rules" not in (tmp_path / "report2" / "evaluation.html").read_text()
