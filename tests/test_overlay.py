"""The measurement overlay: the geometry stored in a record is the geometry the numbers came
from (the drawn baseline gives the dilution, the HAZ marker the depth, the quadrats the CV),
it stays small, and `kb qualify` stores it for phase maps only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.metrology.overlay import MAX_POINTS, MAX_PORES, measure_with_overlay, overlay_of
from engine.metrology.quantities import (
    BEAD,
    FUSION_LINE,
    HAZ,
    POROSITY,
    measure_regions,
)
from engine.metrology.synthetic import BeadSpec, paint, render_bead
from kb.config import DEFAULT_LEGEND
from tests.cli_runner import kb

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
UM = 10.0


def shoelace(points: list[list[float]]) -> float:
    xs, ys = np.array(points, dtype=float).T
    return 0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))


@pytest.fixture(scope="module")
def porous() -> tuple[np.ndarray, dict, dict]:
    """A generated porous, tilted bead with clustered carbides: labels, quantities, overlay."""
    spec = BeadSpec(porosity=0.04, max_pore_um=220.0, tilt_deg=6.0, distribution="clustered")
    labels = render_bead(spec, UM, seed=3)
    measurement, regions = measure_regions(labels, UM)
    return labels, measurement.quantities, overlay_of(regions, measurement).to_dict()


def test_pores_are_outlined_where_they_are_largest_first(porous) -> None:
    labels, q, overlay = porous
    pores = overlay["pores"]
    assert pores["count"] == q["pore_count"] > 3
    outlines = pores["outlines"]
    assert len(outlines) == min(int(q["pore_count"]), MAX_PORES)
    diameters = [p["diameter_um"] for p in outlines]
    assert diameters == sorted(diameters, reverse=True)
    assert diameters[0] == pytest.approx(q["max_pore_diameter_um"], abs=0.05)
    for pore in outlines:
        area = np.pi * (pore["diameter_um"] / UM) ** 2 / 4.0  # the pore's pixels
        assert shoelace(pore["points"]) == pytest.approx(area, rel=0.25, abs=6.0)
        x, y = np.mean(pore["points"], axis=0)
        window = labels[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2]
        assert (window == POROSITY).any()  # the outline sits on a pore, not elsewhere


def test_the_drawn_baseline_gives_the_measured_dilution(porous) -> None:
    labels, q, overlay = porous
    (x1, y1), (x2, y2) = overlay["baseline"]
    measurement, regions = measure_regions(labels, UM)
    ys, xs = np.nonzero(regions.bead)
    cx, cy = xs + 0.5, ys + 0.5  # pixel centres in overlay coordinates
    line_y = y1 + (y2 - y1) * (cx - x1) / (x2 - x1)
    below = np.count_nonzero(cy > line_y) / cx.size
    assert below == pytest.approx(q["dilution_fraction"], abs=0.002)  # half a pixel: 0.007


def test_the_haz_marker_spans_the_measured_depth(porous) -> None:
    labels, q, overlay = porous
    haz = overlay["haz_deepest"]
    (px, py), (fx, fy) = haz["point"], haz["foot"]
    assert labels[int(py), int(px)] == HAZ and labels[int(fy), int(fx)] == FUSION_LINE
    assert np.hypot(px - fx, py - fy) * UM / 1000.0 == pytest.approx(q["haz_depth_mm"], abs=1e-3)
    assert haz["depth_mm"] == pytest.approx(q["haz_depth_mm"], abs=1e-4)


def test_the_quadrats_shaded_are_the_ones_the_cv_counts(porous) -> None:
    labels, q, overlay = porous
    grid = overlay["quadrats"]
    assert len(grid["fractions"]) == grid["columns"] * grid["rows"]
    assert grid["side"] == round(grid["side_mm"] * 1000 / UM)
    used = np.array([f for f in grid["fractions"] if f is not None])
    assert used.size >= 2 and ((used >= 0) & (used <= 1)).all()
    assert used.std() / used.mean() == pytest.approx(q["carbide_cv"], abs=0.01)
    assert grid["x"] + grid["columns"] * grid["side"] <= labels.shape[1]


def test_a_map_with_very_many_pores_stays_small() -> None:
    labels = np.zeros((480, 640), dtype=np.uint8)
    labels[100:400, 40:600] = BEAD
    labels[400:404, 20:620] = FUSION_LINE
    rng = np.random.default_rng(1)
    for y, x in zip(rng.integers(110, 380, 400), rng.integers(50, 580, 400), strict=True):
        labels[y : y + 3, x : x + 3] = POROSITY
    labels[300:380, 100:260] = POROSITY  # one large pore with a ragged edge
    labels[300:380:2, 100:260:3] = BEAD
    labels[300:380, 100:260][:, ::7] = POROSITY
    image = paint(labels, DEFAULT_LEGEND)
    measurement, overlay = measure_with_overlay(image, DEFAULT_LEGEND, UM)
    document = overlay.to_dict()
    assert document["pores"]["count"] == measurement.quantities["pore_count"] > MAX_PORES
    assert len(document["pores"]["outlines"]) == MAX_PORES
    assert all(len(p["points"]) <= MAX_POINTS for p in document["pores"]["outlines"])
    assert len(json.dumps(document)) < 40_000


def test_qualify_stores_the_overlay_of_phase_maps_only(example, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.radial_gradient("L").resize((320, 240)).convert("RGB").save(photo)
    code, out, err = kb("qualify", EXAMPLES / "porous-bead.png", photo, "--json",
                        "-w", example.root)
    assert code == 0, err
    porous, not_a_map = json.loads(out)["qualifications"]
    overlay = porous["overlay"]
    assert (overlay["width"], overlay["height"]) == (640, 480)
    assert (porous["sample"]["width"], porous["sample"]["height"]) == (640, 480)
    ea4 = next(n for n in porous["nodes"] if n["key"] == "EA-4")
    largest = overlay["pores"]["outlines"][0]["diameter_um"]
    assert largest == pytest.approx(ea4["measurements"]["max_pore_diameter_um"], abs=0.05)
    assert not_a_map["overlay"] is None and not_a_map["sample"]["width"] == 320
    code, out, err = kb("show", str(porous["id"]), "--json", "-w", example.root)
    assert code == 0, err
    assert json.loads(out)["overlay"] == overlay  # stored in the record, as qualified
