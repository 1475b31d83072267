"""`kb calibrate`: statistics from your own images, thresholds from labels, used by qualify."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from engine.evaluation.metrics import balanced_accuracy_at
from engine.session import VLKB
from engine.sync import sync_workspace
from kb.config import Workspace
from tests.cli_runner import kb
from tests.workspaces import micrograph, new_workspace, write_carbide_assessment


@pytest.fixture
def workspace(tmp_path: Path, tiny_clip_dir: Path, tiny_flava_dir: Path) -> Workspace:
    ws = new_workspace(tmp_path / "ws", tiny_clip_dir, tiny_flava_dir)
    write_carbide_assessment(ws)
    sync_workspace(VLKB(ws))
    return ws


def labelled_set(folder: Path, shares: list[float], seed: int) -> Path:
    """Micrographs with the given pink shares, labelled accept above 30 %."""
    folder.mkdir(parents=True)
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "EA-5"])
        for i, share in enumerate(shares):
            micrograph(folder / f"c{i:02d}.png", seed=seed + i, pink_share=share)
            writer.writerow([f"c{i:02d}.png", "accept" if share > 0.3 else "reject"])
    return folder / "labels.csv"


def test_calibration_round_trip_is_used_by_calibrated_qualification(
    workspace: Workspace, tmp_path: Path
) -> None:
    shares = [0.05, 0.1, 0.15, 0.2, 0.35, 0.4, 0.45, 0.5]
    labels = labelled_set(tmp_path / "cal", shares, seed=200)
    code, out, err = kb("calibrate", tmp_path / "cal", "--json", "-w", workspace.root)
    assert code == 0, err
    first = json.loads(out)
    assert first["thresholds"] == [] and first["images"] == len(shares)
    assert {(s["assessment"], s["role"]) for s in first["stats"]} == {
        ("EA-5", "text"), ("EA-5", "image")
    }
    # The stored mu and sigma are the population statistics of the batch deltas.
    code, out, _ = kb("qualify", *sorted((tmp_path / "cal").glob("*.png")), "--normalize",
                      "batch", "--json", "-w", workspace.root)
    batch = json.loads(out)["qualifications"]
    for stat in first["stats"]:
        deltas = [
            next(e for n in q["nodes"] if n["key"] == "EA-5" for e in n["evidence"]
                 if e["role"] == stat["role"])["delta"]
            for q in batch
        ]
        assert stat["mu"] == pytest.approx(np.mean(deltas), abs=1e-9)
        assert stat["sigma"] == pytest.approx(np.std(deltas), abs=1e-9)
    # Calibrated qualification of one image uses those statistics and records the version.
    code, out, err = kb("qualify", tmp_path / "cal" / "c00.png", "--json", "-w", workspace.root)
    assert code == 0, err
    (single,) = json.loads(out)["qualifications"]
    assert single["calibration"] == first["calibration"]
    text = next(e for n in single["nodes"] if n["key"] == "EA-5" for e in n["evidence"]
                if e["role"] == "text")
    stat = next(s for s in first["stats"] if s["role"] == "text")
    assert text["mu"] == pytest.approx(stat["mu"]) and text["sigma"] == pytest.approx(stat["sigma"])
    assert text["z"] == pytest.approx((text["delta"] - stat["mu"]) / stat["sigma"])

    # With labels, a new version also chooses the threshold; qualification then uses it.
    code, out, err = kb("calibrate", tmp_path / "cal", "--labels", labels, "--json",
                        "-w", workspace.root)
    assert code == 0, err
    second = json.loads(out)
    assert second["calibration"] == first["calibration"] + 1
    (choice,) = second["thresholds"]
    assert choice["before"] == 0.0
    assert choice["balanced_accuracy_after"] >= (choice["balanced_accuracy_before"] or 0.0)
    code, out, _ = kb("qualify", tmp_path / "cal" / "c07.png", "--json", "-w", workspace.root)
    node = next(n for n in json.loads(out)["qualifications"][0]["nodes"] if n["key"] == "EA-5")
    assert node["threshold"] == pytest.approx(choice["after"])
    assert node["decision_rule"]["threshold"] == pytest.approx(choice["after"])
    assert node["decision_rule"]["threshold_source"] == f"calibration {second['calibration']}"


def test_thresholds_move_on_a_shifted_set(workspace: Workspace, tmp_path: Path) -> None:
    """A set whose accepts and rejects both sit on one side of the rules' threshold."""
    shares = [0.2, 0.24, 0.27, 0.29, 0.32, 0.34, 0.37, 0.4, 0.22, 0.36]
    labels = labelled_set(tmp_path / "shifted", shares, seed=400)
    code, out, err = kb("calibrate", tmp_path / "shifted", "--labels", labels, "--json",
                        "-w", workspace.root)
    assert code == 0, err
    (choice,) = json.loads(out)["thresholds"]
    assert choice["after"] != choice["before"]
    # The chosen threshold is at least as good as every other on these images.
    code, out, _ = kb("qualify", *sorted((tmp_path / "shifted").glob("*.png")), "--json",
                      "-w", workspace.root)
    docs = json.loads(out)["qualifications"]
    scores = [next(n for n in q["nodes"] if n["key"] == "EA-5")["score"] for q in docs]
    truth = ["accept" if s > 0.3 else "reject" for s in shares]
    best = balanced_accuracy_at(scores, truth, choice["after"])
    assert best == pytest.approx(choice["balanced_accuracy_after"])
    assert all(best >= (balanced_accuracy_at(scores, truth, t) or 0) for t in sorted(scores))


def test_calibration_refuses_what_it_cannot_use(workspace: Workspace, tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    micrograph(tmp_path / "one" / "a.png", seed=1, pink_share=0.3)
    code, out, err = kb("calibrate", tmp_path / "one", "-w", workspace.root)
    assert code == 1 and out == "" and "at least 2 readable images" in err
    code, _, err = kb("calibrate", tmp_path / "missing", "-w", workspace.root)
    assert code == 1 and "not a folder of images" in err
    unbound = new_workspace(tmp_path / "unbound")
    code, _, err = kb("calibrate", tmp_path / "one", "-w", unbound.root)
    assert code == 1 and "no vision-language role is bound" in err


def test_a_run_override_moves_a_verdict_and_is_recorded_not_written_to_rules(
    workspace: Workspace, tmp_path: Path
) -> None:
    image = micrograph(tmp_path / "one.png", seed=3, pink_share=0.3)
    rules_before = (workspace.rules_dir / "assessments" / "EA-5.toml").read_text()

    def ea5(*options: object) -> dict:
        code, out, err = kb("qualify", image, "--json", *options, "-w", workspace.root)
        assert code == 0, err
        (q,) = json.loads(out)["qualifications"]
        return {**next(n for n in q["nodes"] if n["key"] == "EA-5"), "doc": q}

    plain = ea5()
    assert plain["doc"]["decision_override"] is None
    high = ea5("--threshold", plain["score"] + 1.0)
    low = ea5("--threshold", plain["score"] - 1.0)
    assert (high["verdict"], low["verdict"]) == ("reject", "accept")
    assert high["doc"]["decision_override"] == {"threshold": plain["score"] + 1.0}
    banded = ea5("--threshold", plain["score"] + 0.1, "--review-margin", 0.5)
    assert banded["verdict"] == "review"
    text, image_z = (next(e["z"] for e in plain["evidence"] if e["role"] == r)
                     for r in ("text", "image"))
    weighted = ea5("--fusion", "weighted", "--weight", "image=3")
    assert weighted["score"] == pytest.approx((text + 3 * image_z) / 4)
    assert (workspace.rules_dir / "assessments" / "EA-5.toml").read_text() == rules_before
    code, _, err = kb("qualify", image, "--fusion", "max", "-w", workspace.root)
    assert code == 1 and "unknown fusion 'max'" in err
