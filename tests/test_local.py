"""The `local` role: memory bank, anomaly maps, regions, pixel metrics, rules and masks."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.evaluation.metrics import aupro, binary_auroc, pixel_auroc
from engine.local import (
    LocalSettings,
    build_bank,
    coreset,
    fit,
    image_score,
    map_png,
    nearest_distances,
    regions,
    score,
)
from engine.metrology.synthetic import write_workspace_dataset
from kb.errors import RulesError
from kb.rules import compile_rules
from tests.workspaces import REPO, example_copy, shipped_copy

# --- the bank and the map -----------------------------------------------------------------


def test_the_coreset_keeps_the_rare_patch_and_is_deterministic():
    rng = np.random.default_rng(0)
    common = rng.normal(0.0, 0.01, (200, 4))
    rare = np.array([[5.0, 5.0, 5.0, 5.0]])
    features = np.vstack([common, rare])
    chosen = coreset(features, 5)
    assert 200 in chosen  # the farthest patch is taken in the first steps
    assert len(set(chosen.tolist())) == 5
    assert np.array_equal(chosen, coreset(features, 5))
    assert np.array_equal(coreset(features, 500), np.arange(201))  # small enough: all of it


def test_a_large_pool_is_searched_through_a_fixed_subset_and_still_spans_it():
    rng = np.random.default_rng(1)
    features = rng.normal(0.0, 1.0, (40 * 32 + 500, 3))
    chosen = coreset(features, 40)
    assert len(set(chosen.tolist())) == 40 and chosen.max() < len(features)
    assert np.array_equal(chosen, coreset(features, 40))
    spread = nearest_distances(features, features[chosen]).max()
    assert spread < nearest_distances(features, features[:40]).max()  # covers better than any 40


def test_each_reference_is_scored_without_the_bank_rows_of_its_own_patches():
    """A patch only one reference has is in the bank, so that reference alone scores it 0;
    left out, it is what makes the references' own highest departure (the threshold)."""
    plain = [np.zeros((4, 4, 2), np.float32) for _ in range(3)]
    odd = np.zeros((4, 4, 2), np.float32)
    odd[1, 2] = (3.0, 4.0)
    grids = [*plain, odd]
    bank, source = build_bank(grids, 64)
    assert sorted(set(source.tolist())) == [0, 1, 2, 3] and len(bank) == 64
    model = fit(grids, [(64, 64)] * 4, LocalSettings(quantile=1.0))
    assert 2.0 < model.threshold <= 5.0 + 1e-4  # the odd patch's distance 5, upsampled, blurred
    assert score(model, odd, (64, 64)).score == pytest.approx(0.0, abs=1e-3)


def test_nearest_distances_by_hand():
    bank = np.array([[0.0, 0.0], [3.0, 4.0]])
    patches = np.array([[0.0, 1.0], [3.0, 4.0], [6.0, 8.0]])
    assert np.allclose(nearest_distances(patches, bank), [1.0, 0.0, 5.0], atol=1e-5)


def test_image_score_is_a_quantile_or_a_top_k_mean():
    values = np.arange(10, dtype=float).reshape(2, 5)
    assert image_score(values, LocalSettings(quantile=1.0)) == 9.0
    assert image_score(values, LocalSettings(top_k=3)) == pytest.approx(8.0)


def test_regions_are_components_above_the_threshold_strongest_first():
    anomaly = np.zeros((20, 30))
    anomaly[2:5, 3:7] = 2.0  # 4 wide, 3 high
    anomaly[10:18, 20:22] = 3.0
    found = regions(anomaly, 1.0)
    assert [(r.x, r.y, r.width, r.height) for r in found] == [(20, 10, 2, 8), (3, 2, 4, 3)]
    assert found[0].score == 3.0
    assert regions(anomaly, 5.0) == []


def test_the_map_png_is_small_greyscale_and_scaled():
    anomaly = np.zeros((480, 640))
    anomaly[:, 320:] = 10.0
    uri = map_png(anomaly, 5.0)
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert image.mode == "L" and image.size == (160, 120)
    pixels = np.asarray(image)
    assert pixels[:, :70].max() == 0 and pixels[:, 90:].min() == 255


def _grid(seed: int, spot: tuple[int, int] | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = rng.normal(0.0, 0.05, (12, 16, 3)).astype(np.float32)
    if spot is not None:
        grid[spot] += 4.0
    return grid


def test_a_spot_no_reference_shows_is_the_strongest_region_and_scores_worse():
    size = (64, 48)
    model = fit([_grid(s) for s in range(4)], [size] * 4, LocalSettings(coreset=100))
    assert model.norm is not None and model.norm.count == 4  # leave-one-out, one per reference
    good, bad = score(model, _grid(9), size), score(model, _grid(9, (6, 12)), size)
    assert bad.score > good.score and bad.delta < good.delta
    assert good.anomaly.shape == (48, 64)
    top = bad.regions[0]
    assert top.x <= 12 * 4 + 2 <= top.x + top.width and top.y <= 6 * 4 + 2 <= top.y + top.height


# --- pixel metrics ------------------------------------------------------------------------


def test_binary_auroc_by_hand_with_ties():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs won 1 + 1 + 0.5 + 1 of 4
    assert binary_auroc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.4, 0.1])) == 0.875
    assert binary_auroc(np.array([1, 1]), np.array([0.1, 0.2])) is None


def test_pixel_auroc_pools_every_pixel():
    masks = [np.array([[1, 0], [0, 0]]), np.array([[0, 0], [0, 1]])]
    perfect = [np.array([[9.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 0.0], [0.0, 9.0]])]
    assert pixel_auroc(masks, perfect) == 1.0
    assert pixel_auroc(masks, [1.0 - m for m in masks]) == 0.0


def test_aupro_weighs_regions_not_pixels():
    mask = np.zeros((10, 10), dtype=int)
    mask[0:4, 0:4] = 1  # a large defect
    mask[8, 8] = 1  # a one-pixel defect
    perfect = mask.astype(float)
    assert aupro([mask], [perfect]) == pytest.approx(1.0)
    # only the large defect found: PRO 0.5 at FPR 0; the small one ties with all 82 clean
    # pixels, so the curve runs straight to (1, 1): PRO 0.65 at FPR 0.3, area
    # 0.3 * (0.5 + 0.65) / 2, normalised by 0.3: 0.575
    large_only = perfect.copy()
    large_only[8, 8] = 0.0
    assert aupro([mask], [large_only]) == pytest.approx(0.575)
    assert aupro([np.zeros((3, 3))], [np.zeros((3, 3))]) is None


# --- rules ---------------------------------------------------------------------------------


def _rules_with_local(tmp_path: Path, table: str) -> Path:
    root = tmp_path / "rules"
    import shutil

    shutil.copytree(REPO / "rules", root)
    path = root / "assessments" / "EA-4.toml"
    text = re.sub(r"(?ms)^\[local\]\n.*?(?=^\[|\Z)", "", path.read_text(encoding="utf-8"))
    path.write_text(text + "\n" + table, encoding="utf-8")
    return root


@pytest.mark.parametrize(("table", "problem"), [
    ("[local]\nquantile = 0.9\n", "missing required field(s) enabled"),
    ("[local]\nenabled = 1\n", "`enabled` must be true or false"),
    ("[local]\nenabled = true\nquantile = 1.5\n", "`quantile` must be in (0, 1]"),
    ("[local]\nenabled = true\ntop_k = 0\n", "`top_k` must be a positive integer"),
    ("[local]\nenabled = true\ncoreset = 4\n", "`coreset` must be at least 16"),
    ("[local]\nenabled = true\nradius = 3\n", "radius"),
    ("[local]\nenabled = true\nfuse = \"no\"\n", "`fuse` must be true or false"),
])
def test_a_wrong_local_table_is_one_error_naming_file_and_key(tmp_path, table, problem):
    with pytest.raises(RulesError) as caught:
        compile_rules(_rules_with_local(tmp_path, table))
    message = str(caught.value)
    assert "rules/assessments/EA-4.toml [local]" in message and problem in message
    assert "\n" not in message


def test_local_settings_are_read_and_a_ruleset_without_them_keeps_its_hash(tmp_path):
    ruleset = compile_rules(_rules_with_local(
        tmp_path, "[local]\nenabled = true\ntop_k = 50\ncoreset = 500\n"))
    rule = ruleset.assessments["EA-4"].local
    assert rule is not None and (rule.top_k, rule.coreset, rule.fuse) == (50, 500, True)
    assert ruleset.assessments["EA-1"].local is None
    data = ruleset.to_dict()
    assert "local" not in data["assessments"]["EA-1"]
    assert "local" not in data["assessments"]["EA-1"]["decision"]["weights"]
    assert type(ruleset).from_dict(data).content_hash == ruleset.content_hash
    off = compile_rules(_rules_with_local(tmp_path / "off", "[local]\nenabled = false\n"))
    assert off.assessments["EA-4"].local is None


# --- kb synth --masks ------------------------------------------------------------------------


def test_synth_masks_mark_the_pores_the_truth_counts(tmp_path):
    workspace = example_copy(tmp_path / "ws")
    out = tmp_path / "set"
    write_workspace_dataset(out, 4, 3, workspace, masks=True)
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["EA-4", "EA-6"]
    import csv

    truth = {row["image"]: row for row in csv.DictReader((out / "truth.csv").open())}
    for name, row in truth.items():
        mask = np.asarray(Image.open(out / "masks" / "EA-4" / name)) > 0
        picture = np.asarray(Image.open(out / name).convert("RGB"))
        porosity = np.all(picture == (0, 0, 128), axis=-1)  # the example legend's porosity
        assert np.array_equal(mask, porosity)
        assert (mask.sum() > 0) == (int(row["pore_count"]) > 0)


# --- the role in a run ------------------------------------------------------------------------


def test_the_example_qualifies_with_local_evidence_on_lite0(tmp_path):
    from engine.qualify import qualify_paths
    from engine.session import VLKB

    workspace = shipped_copy(tmp_path / "ws")
    with VLKB(workspace) as vlkb:
        outcome = qualify_paths(vlkb, [REPO / "examples" / "porous-bead.png",
                                       REPO / "examples" / "sound-bead-a.png"])
    porous, sound = (r.to_dict() for r in outcome.results)

    def local(document, key):
        node = next(n for n in document["nodes"] if n["key"] == key)
        return next(e for e in node["evidence"] if e["role"] == "local")

    bad, good = local(porous, "EA-4"), local(sound, "EA-4")
    assert bad["z"] < good["z"]
    assert bad["regions"] and bad["rationale"].startswith(
        "strongest departure from the good references at ")
    top = bad["regions"][0]
    assert f"{top['x']}, {top['y']}, size {top['width']} x {top['height']}" in bad["rationale"]
    picture = Image.open(io.BytesIO(base64.b64decode(bad["map"].split(",", 1)[1])))
    assert picture.mode == "L" and picture.size[0] <= 160
    assert local(sound, "EA-6")["map"].startswith("data:image/png;base64,")


def test_local_evidence_left_unfused_is_shown_and_the_verdict_is_the_other_evidence(tmp_path):
    """The example keeps EA-4's local z out of the fused score ([local] fuse = false): the
    record holds it, says so, and the fused score is the image and text roles' alone; with
    fuse on, the same z is added to them."""
    from engine.qualify import qualify_paths
    from engine.session import VLKB

    porous = REPO / "examples" / "porous-bead.png"
    shown = shipped_copy(tmp_path / "shown")
    counted = shipped_copy(tmp_path / "counted")
    rule = counted.root / "rules" / "assessments" / "EA-4.toml"
    rule.write_text(rule.read_text(encoding="utf-8").replace("fuse = false\n", ""),
                    encoding="utf-8")

    def ea4(workspace):
        with VLKB(workspace) as vlkb:
            from engine.sync import sync_workspace

            sync_workspace(vlkb)
            (result,) = qualify_paths(vlkb, [porous]).results
        return next(n for n in result.to_dict()["nodes"] if n["key"] == "EA-4")

    left, added = ea4(shown), ea4(counted)
    by_role = {e["role"]: e for e in left["evidence"] if "role" in e}
    assert by_role["local"]["counted"] is False and by_role["local"]["z"] is not None
    others = sum(by_role[r]["z"] for r in ("text", "image") if by_role[r]["z"] is not None)
    assert left["score"] == pytest.approx(others)
    assert "not counted in the fused score" in left["rationale"]
    local_z = next(e["z"] for e in added["evidence"] if e.get("role") == "local")
    assert local_z == pytest.approx(by_role["local"]["z"])
    assert added["score"] == pytest.approx(others + local_z)


def test_a_bank_is_fitted_once_per_model_settings_and_references(tmp_path):
    """A server judges one upload per request: the second run reuses the fitted banks, and
    other references make a new one."""
    from engine.encoders.roles import ModelSet
    from engine.local_evidence import plan_local
    from engine.session import VLKB
    from engine.sync import current_ruleset

    workspace = shipped_copy(tmp_path / "ws")
    with VLKB(workspace) as vlkb:
        models: ModelSet = vlkb.models
        encoder = models.encoder("local")
        with vlkb.kb.transaction() as session:
            _, ruleset = current_ruleset(session, workspace)
            first = plan_local(session, ruleset, encoder, models.local_plans)
            again = plan_local(session, ruleset, encoder, models.local_plans)
            fresh = plan_local(session, ruleset, encoder)
    assert set(first) == {"EA-4", "EA-6"} and len(models.local_plans) == 2
    assert all(again[key] is first[key] for key in first)
    assert all(fresh[key] is not first[key] for key in first)
    assert np.array_equal(fresh["EA-4"].model.bank, first["EA-4"].model.bank)  # same inputs
    assert fresh["EA-4"].model.norm == first["EA-4"].model.norm
    assert fresh["EA-4"].model.threshold == first["EA-4"].model.threshold


def test_a_fitted_bank_is_kept_in_the_knowledge_base_and_read_back_as_stored(tmp_path):
    """A CLI run is a new process: it reads the bank a run before it stored (one row per
    model, settings and references) and uses it as stored, rather than fitting again."""
    from sqlmodel import select

    from engine.local_evidence import bank_key, plan_local, settings_of
    from engine.session import VLKB
    from engine.sync import current_ruleset
    from kb.local_banks import StoredBank, store_bank
    from kb.tables import LocalBank

    def planned(workspace, plant=None):
        with VLKB(workspace) as vlkb, vlkb.kb.transaction() as session:
            _, ruleset = current_ruleset(session, workspace)
            encoder = vlkb.models.encoder("local")
            if plant is not None:
                ea4 = ruleset.assessments["EA-4"]
                refs = [r.sha256 for r in ea4.references_of("positive")]
                store_bank(session, encoder.fingerprint, bank_key(settings_of(ea4), refs), plant)
            plans = plan_local(session, ruleset, encoder)
            return plans, len(session.exec(select(LocalBank)).all())

    workspace = shipped_copy(tmp_path / "ws")
    first, rows = planned(workspace)
    again, rows_again = planned(workspace)
    assert rows == rows_again == 2  # EA-4 and EA-6, stored once
    assert np.array_equal(again["EA-4"].model.bank, first["EA-4"].model.bank)
    assert again["EA-6"].model.norm == first["EA-6"].model.norm

    bank = first["EA-4"].model.bank
    planted = StoredBank(bank[:5] + 1.0, 0.5, 2.0, 3, 7.0)
    plans, _ = planned(shipped_copy(tmp_path / "other"), plant=planted)
    model = plans["EA-4"].model
    assert np.array_equal(model.bank, planted.bank) and model.threshold == 7.0
    assert (model.norm.mu, model.norm.sigma, model.norm.count) == (0.5, 2.0, 3)
    assert np.array_equal(plans["EA-6"].model.bank, first["EA-6"].model.bank)  # fitted
