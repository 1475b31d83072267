"""Few-shot decisions: with five or more references a side, an assessment whose rules leave
the threshold out takes it from the references' leave-one-out scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.evaluation.metrics import widest_best_threshold
from engine.few_shot import BAND_OF_SPREAD
from engine.scoring import l2_normalize, leave_one_out_deltas, population_stats, zscore
from engine.session import VLKB
from kb.config import Workspace
from tests.cli_runner import kb
from tests.workspaces import micrograph, new_workspace

IMAGE_ONLY = """key = "EA-5"
name = "Carbide dissolution"
parent = "qualification"
criterion = "At least 30 % of the bead is undissolved carbide."

[references]
positive = ["references/EA-5/positive/*.png"]
negative = ["references/EA-5/negative/*.png"]

[decision]
fusion = "zsum"
{decision}"""


def few_shot_workspace(root: Path, flava_dir: Path, positives: int, negatives: int,
                       decision: str = "") -> Workspace:
    """An image-role-only workspace (tiny FLAVA) whose EA-5 has only reference images."""
    ws = new_workspace(root, None, flava_dir)
    (ws.rules_dir / "assessments" / "EA-5.toml").write_text(IMAGE_ONLY.format(decision=decision))
    refs = ws.rules_dir / "references" / "EA-5"
    for i in range(positives):
        micrograph(refs / "positive" / f"pos-{i}.png", seed=i, pink_share=0.3 + 0.04 * i)
    for i in range(negatives):
        micrograph(refs / "negative" / f"neg-{i}.png", seed=20 + i, pink_share=0.02 + 0.01 * i)
    code, _, err = kb("sync", "-w", str(ws.root))
    assert code == 0, err
    return ws


def ea5(ws: Workspace, sample: Path) -> dict:
    code, out, err = kb("qualify", str(sample), "--json", "-w", str(ws.root))
    assert code == 0, err
    (result,) = json.loads(out)["qualifications"]
    return next(n for n in result["nodes"] if n["key"] == "EA-5")


def by_hand(ws: Workspace) -> tuple[float, float]:
    """The threshold and band computed from the reference images with the maths functions."""
    refs = ws.rules_dir / "references" / "EA-5"
    with VLKB(ws) as vlkb:
        encoder = vlkb.models.encoder("image")
        sides = []
        for polarity in ("positive", "negative"):
            images = [Image.open(p).convert("RGB") for p in sorted((refs / polarity).glob("*.png"))]
            sides.append(l2_normalize(encoder.embed_images(images)))
    deltas = leave_one_out_deltas(*sides)
    z = zscore(deltas, population_stats(deltas, "references"))
    truth = ["accept"] * len(sides[0]) + ["reject"] * len(sides[1])
    pooled = np.sqrt(np.mean([np.var(z[: len(sides[0])]), np.var(z[len(sides[0]):])]))
    return widest_best_threshold(z, truth), BAND_OF_SPREAD * pooled


def test_the_threshold_sits_in_the_middle_of_the_widest_gap_that_separates_the_classes():
    truth = ["reject", "reject", "accept", "accept", "accept"]
    assert widest_best_threshold([-2.0, -1.0, 1.0, 1.5, 3.0], truth) == pytest.approx(0.0)
    # the widest gap (-5..1) would accept a reject: the best balanced accuracy wins first
    truth = ["reject", "reject", "accept", "accept"]
    assert widest_best_threshold([-5.0, 1.0, 2.0, 3.0], truth) == pytest.approx(1.5)


def test_five_references_a_side_give_the_threshold_and_band_of_their_leave_one_out_scores(
    tmp_path: Path, tiny_flava_dir: Path
):
    ws = few_shot_workspace(tmp_path / "ws", tiny_flava_dir, 5, 5)
    node = ea5(ws, micrograph(tmp_path / "s.png", seed=99, pink_share=0.2))
    threshold, band = by_hand(ws)
    assert node["threshold"] == pytest.approx(threshold, abs=1e-6)
    assert node["review_margin"] == pytest.approx(band, abs=1e-6)
    assert node["decision_rule"]["threshold_source"] == "references (leave-one-out, 5 + 5)"


def test_four_references_of_one_side_are_too_few_so_the_rules_default_stands(
    tmp_path: Path, tiny_flava_dir: Path
):
    ws = few_shot_workspace(tmp_path / "ws", tiny_flava_dir, 4, 6)
    node = ea5(ws, micrograph(tmp_path / "s.png", seed=99, pink_share=0.2))
    assert (node["threshold"], node["review_margin"]) == (0.0, 0.0)
    assert node["decision_rule"]["threshold_source"] == "rules"


def test_a_threshold_the_expert_wrote_is_never_replaced_but_an_omitted_band_is_chosen(
    tmp_path: Path, tiny_flava_dir: Path
):
    ws = few_shot_workspace(tmp_path / "ws", tiny_flava_dir, 5, 5, "threshold = 0.4\n")
    node = ea5(ws, micrograph(tmp_path / "s.png", seed=99, pink_share=0.2))
    assert node["threshold"] == 0.4
    assert node["review_margin"] == 0.0  # the band is only chosen with the threshold
    assert node["decision_rule"]["threshold_source"] == "rules"


def test_a_labelled_calibration_overrides_the_references_threshold(
    tmp_path: Path, tiny_flava_dir: Path
):
    ws = few_shot_workspace(tmp_path / "ws", tiny_flava_dir, 5, 5)
    folder = tmp_path / "cal"
    rows = ["image,EA-5"]
    for i, share in enumerate([0.05, 0.1, 0.35, 0.45]):
        micrograph(folder / f"c{i}.png", seed=50 + i, pink_share=share)
        rows.append(f"c{i}.png,{'accept' if share > 0.3 else 'reject'}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    code, _, err = kb("calibrate", str(folder), "--labels", str(folder / "labels.csv"),
                      "-w", str(ws.root))
    assert code == 0, err
    node = ea5(ws, micrograph(tmp_path / "s.png", seed=99, pink_share=0.2))
    assert node["decision_rule"]["threshold_source"] == "calibration 1"


def test_too_few_references_are_named_in_a_warning_and_in_the_table_footnote(
    tmp_path: Path, tiny_flava_dir: Path
):
    ws = few_shot_workspace(tmp_path / "ws", tiny_flava_dir, 1, 1)
    sample = micrograph(tmp_path / "s.png", seed=99, pink_share=0.2)
    code, out, err = kb("qualify", str(sample), "-w", str(ws.root))
    assert code == 0, err
    assert "warning: EA-5 image evidence is not assessed: no calibration statistics" in err
    assert "EA-5 not assessed:" in out and "too few reference images" in out
    assert "precondition" not in out


def test_batch_normalisation_over_a_handful_of_images_is_warned_about(
    tmp_path: Path, tiny_flava_dir: Path
):
    ws = few_shot_workspace(tmp_path / "ws", tiny_flava_dir, 3, 3)
    samples = [micrograph(tmp_path / f"s{i}.png", seed=90 + i, pink_share=0.1 * i)
               for i in range(3)]
    code, _, err = kb("qualify", *map(str, samples), "--normalize", "batch", "-w", str(ws.root))
    assert code == 0, err
    assert "standardises each score by this run's own 3 image(s)" in err
    code, _, err = kb("qualify", *map(str, samples), "-w", str(ws.root))
    assert "warning" not in err
