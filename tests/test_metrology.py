"""Metrology on hand-drawn maps (numbers worked out by hand) and on generated micrographs
(numbers from the generator's exact label maps), clean and degraded."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from engine.metrology.quantities import (
    BEAD,
    CARBIDE,
    FUSION_LINE,
    HAZ,
    POROSITY,
    QUANTITIES,
    Colours,
    NotASegmentationMap,
    classify_phases,
    measure_image,
    measure_labels,
    measure_regions,
    mixed_carbide_fraction,
)
from engine.metrology.synthetic import (
    Degradation,
    criteria_of,
    degrade,
    encode,
    label_sample,
    paint,
    render_bead,
    sample_specs,
)
from kb.config import DEFAULT_LEGEND
from kb.errors import WorkspaceError
from kb.rules import MeasurementRule, compile_rules
from tests.workspaces import REPO

EXAMPLE = criteria_of(compile_rules(REPO / "rules"))


def bead_on_u_shaped_fusion_line() -> np.ndarray:
    """A 20x60 bead above the surface (row 40), 10x40 of it sunk below, pores, carbides, HAZ."""
    labels = np.zeros((120, 100), dtype=np.uint8)
    labels[20:40, 20:80] = BEAD  # 1200 px above the baseline
    labels[40:50, 30:70] = BEAD  # 400 px below it (row 40 lies on the baseline)
    labels[40, 15:30] = FUSION_LINE  # left toe at column 15
    labels[40, 70:85] = FUSION_LINE  # right toe at column 84
    labels[40:51, 29] = FUSION_LINE
    labels[40:51, 70] = FUSION_LINE
    labels[50, 29:71] = FUSION_LINE
    labels[51:61, 29:71] = HAZ  # deepest HAZ row 60: 10 px below the fusion line at row 50
    labels[100:103, 10:13] = HAZ  # a 9 px speck, far away: dropped
    labels[25:29, 30:34] = POROSITY  # 16 px pore
    labels[30:32, 50:52] = POROSITY  # 4 px pore
    labels[22:24, 60:70] = CARBIDE  # 20 px of carbide
    return labels


def test_hand_drawn_bead_gives_the_hand_computed_quantities() -> None:
    um = 25.0
    mm = um / 1000.0
    m = measure_labels(bead_on_u_shaped_fusion_line(), um)
    assert m.unmeasurable == {}
    q = m.quantities
    assert q["bead_area_mm2"] == pytest.approx(1600 * mm * mm)
    assert q["reinforcement_area_mm2"] == pytest.approx(1200 * mm * mm)
    assert q["reinforcement_height_mm"] == pytest.approx(20 * mm)  # row 20 is 20 px above row 40
    assert q["dilution_fraction"] == pytest.approx(400 / 1600)
    assert q["haz_depth_mm"] == pytest.approx(10 * mm)
    assert q["pore_count"] == 2
    assert q["porosity_fraction"] == pytest.approx(20 / 1600)
    assert q["max_pore_diameter_um"] == pytest.approx(math.sqrt(4 * 16 / math.pi) * um)
    assert q["carbide_fraction"] == pytest.approx(20 / 1600)


def test_quadrat_cv_and_gradient_by_hand_on_a_bead_without_fusion_line() -> None:
    labels = np.zeros((60, 80), dtype=np.uint8)
    labels[10:30, 20:60] = BEAD  # 20 x 40 px: 2 x 4 quadrats of 10 px at 25 um/px
    labels[10:15, 20:30] = CARBIDE  # half of the top-left quadrat, all in the top third
    m = measure_labels(labels, 25.0)
    # One quadrat at 0.5, seven at 0: the population CV of such a set is sqrt(n - 1).
    assert m.quantities["carbide_cv"] == pytest.approx(math.sqrt(7))
    # Thirds of 20 rows: top rows 0-6 (7 rows x 40 px), bottom rows 14-19.
    overall = 50 / 800
    assert m.quantities["carbide_gradient"] == pytest.approx((0 - 50 / 280) / overall)
    no_baseline = {"reinforcement_area_mm2", "reinforcement_height_mm", "dilution_fraction"}
    # Two particle diameters plus 0.15 mm do not fit in a 20-row bead: no clustering index.
    assert no_baseline | {"haz_depth_mm", "carbide_clustering"} == set(m.unmeasurable)
    assert "no fusion line" in m.unmeasurable["dilution_fraction"]
    assert m.quantities["porosity_fraction"] == 0 and m.quantities["pore_count"] == 0


def test_no_bead_means_no_reinforcement_and_nothing_to_take_fractions_of() -> None:
    labels = np.zeros((60, 80), dtype=np.uint8)
    labels[30, 10:70] = FUSION_LINE
    labels[31:41, 10:70] = HAZ
    m = measure_labels(labels, 10.0)
    assert m.quantities["bead_area_mm2"] == 0
    assert m.quantities["reinforcement_height_mm"] == 0
    assert m.quantities["haz_depth_mm"] == pytest.approx(0.1)
    assert m.unmeasurable["carbide_fraction"] == "no bead in the image"
    assert set(m.quantities) | set(m.unmeasurable) == set(QUANTITIES)


def test_a_pore_turned_black_by_compression_still_counts_as_a_pore() -> None:
    labels = bead_on_u_shaped_fusion_line()
    labels[labels == POROSITY] = 0  # background colour inside the bead
    q = measure_labels(labels, 25.0).quantities
    assert q["pore_count"] == 2 and q["porosity_fraction"] == pytest.approx(20 / 1600)


def test_porosity_coloured_fringe_outside_the_bead_is_not_porosity() -> None:
    labels = bead_on_u_shaped_fusion_line()
    labels[61, 29:71] = POROSITY  # what blur leaves between HAZ blue and black
    q = measure_labels(classify_phases(paint(labels, DEFAULT_LEGEND), DEFAULT_LEGEND), 25.0)
    assert q.quantities["pore_count"] == 2


def test_noisy_painted_map_classifies_like_the_exact_one() -> None:
    labels = bead_on_u_shaped_fusion_line()
    noisy = degrade(paint(labels, DEFAULT_LEGEND), Degradation(noise_sigma=12.0), seed=3)
    assert np.array_equal(classify_phases(noisy, DEFAULT_LEGEND), labels)


def test_a_photo_is_refused_as_not_a_segmentation_map() -> None:
    rng = np.random.default_rng(0)
    grey = np.linspace(60, 200, 200)[None, :] + rng.normal(0, 20, (150, 200))
    photo = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")
    with pytest.raises(NotASegmentationMap, match="not a phase map"):
        measure_image(photo, DEFAULT_LEGEND, 10.0)


def test_legend_without_a_phase_is_a_workspace_error() -> None:
    legend = {k: v for k, v in DEFAULT_LEGEND.items() if k != "carbide"}
    with pytest.raises(WorkspaceError, match="lacks carbide"):
        classify_phases(Image.new("RGB", (10, 10)), legend)


def test_custom_legend_colours_are_honoured() -> None:
    legend = {**DEFAULT_LEGEND, "bead": (200, 200, 200)}
    labels = bead_on_u_shaped_fusion_line()
    q = measure_image(paint(labels, legend), legend, 25.0).quantities
    assert q["bead_area_mm2"] == pytest.approx(1600 * 0.025**2)


# Largest error allowed per quantity against the generator's truth, by degradation.
CLEAN_BOUNDS = dict.fromkeys(QUANTITIES, 1e-12)
NOISY_JPEG_BOUNDS = {
    "bead_area_mm2": 0.03,  # mm2, of 1.5 to 3.5
    "reinforcement_area_mm2": 0.06,
    "reinforcement_height_mm": 0.02,  # two pixels
    "dilution_fraction": 0.015,  # one image; the mean over a family stays within 0.005
    "haz_depth_mm": 0.03,
    "porosity_fraction": 0.003,
    "max_pore_diameter_um": 10.0,  # one pixel
    "pore_count": 3,
    "carbide_fraction": 0.045,
    "carbide_cv": 0.1,
    "carbide_cv_fine": 0.15,
    "carbide_cv_ratio": 0.1,
    "carbide_gradient": 0.25,  # a ratio of fractions: JPEG chroma blurs small particles
    "carbide_clustering": 0.1,
}
# Noise carries a few pixels past MIXTURE_RADIUS, where they count by their mixture.
NOISY_BOUNDS = {**CLEAN_BOUNDS, "carbide_fraction": 0.002}
DEGRADATIONS = [
    (Degradation(), CLEAN_BOUNDS),
    (Degradation(noise_sigma=12.0), NOISY_BOUNDS),
    (Degradation(jpeg_quality=90, subsampling="4:4:4"), CLEAN_BOUNDS),
    (Degradation(noise_sigma=8.0, jpeg_quality=85), NOISY_JPEG_BOUNDS),
]


@pytest.mark.parametrize(
    ("how", "bounds"), DEGRADATIONS, ids=["png", "noise", "jpeg-444", "noise-jpeg-420"]
)
def test_generated_micrographs_measure_close_to_their_truth(
    how: Degradation, bounds: dict[str, float]
) -> None:
    for index, spec in enumerate(sample_specs(10, seed=7)):
        labels = render_bead(spec, 10.0, seed=index)
        truth = measure_labels(labels, 10.0)
        data, _ = encode(degrade(paint(labels, DEFAULT_LEGEND), how, seed=index), how)
        measured = measure_image(Image.open(io.BytesIO(data)), DEFAULT_LEGEND, 10.0)
        assert set(measured.unmeasurable) == set(truth.unmeasurable), spec
        for name, true_value in truth.quantities.items():
            error = abs(measured.quantities[name] - true_value)
            assert error <= bounds[name], f"{name}: {measured.quantities[name]} vs {true_value}"


def test_a_blend_of_bead_and_carbide_counts_half_a_carbide_pixel() -> None:
    rgb = np.zeros((40, 40, 3), dtype=np.uint8)
    rgb[10:30, 10:30] = DEFAULT_LEGEND["bead"]
    pink, green = np.array(DEFAULT_LEGEND["carbide"]), np.array(DEFAULT_LEGEND["bead"])
    rgb[15:25, 15:25] = np.round((pink + green) / 2.0).astype(np.uint8)  # 100 blended pixels
    labels = classify_phases(Image.fromarray(rgb), DEFAULT_LEGEND)
    bead = np.zeros((40, 40), dtype=bool)
    bead[10:30, 10:30] = True
    fraction = mixed_carbide_fraction(Colours(rgb, DEFAULT_LEGEND), labels, bead)
    assert fraction == pytest.approx(100 * 0.5 / 400, abs=0.002)


def test_fine_carbides_in_a_blurred_chroma_subsampled_jpeg_keep_their_fraction() -> None:
    how = Degradation(blur_radius=1.0, jpeg_quality=70, subsampling="4:2:0")
    errors, label_errors = [], []
    for index, spec in enumerate(sample_specs(6, seed=3)):
        labels = render_bead(replace(spec, carbide_size_um=15.0), 10.0, seed=index)
        truth = measure_labels(labels, 10.0).quantities["carbide_fraction"]
        data, _ = encode(degrade(paint(labels, DEFAULT_LEGEND), how, seed=index), how)
        image = Image.open(io.BytesIO(data))
        measured = measure_image(image, DEFAULT_LEGEND, 10.0).quantities["carbide_fraction"]
        by_labels = measure_regions(classify_phases(image, DEFAULT_LEGEND), 10.0)[0]
        errors.append(abs(measured - truth))
        label_errors.append(abs(by_labels.quantities["carbide_fraction"] - truth))
    assert np.mean(errors) <= 0.01
    assert np.mean(label_errors) > 2 * np.mean(errors)  # what nearest colours alone make of it


def test_generator_is_deterministic_and_seeds_differ() -> None:
    spec = sample_specs(1, seed=5)[0]
    assert np.array_equal(render_bead(spec, seed=1), render_bead(spec, seed=1))
    assert not np.array_equal(render_bead(spec, seed=1), render_bead(spec, seed=2))
    assert sample_specs(3, seed=5) == sample_specs(3, seed=5)
    assert sample_specs(3, seed=5) != sample_specs(3, seed=6)


def test_generator_covers_every_distribution_and_both_labels_per_assessment() -> None:
    specs = sample_specs(60, seed=11)
    assert {s.distribution for s in specs} == {"uniform", "segregated", "clustered"}
    labels = [label_sample(measure_labels(render_bead(s, seed=i), 10.0).quantities, EXAMPLE)
              for i, s in enumerate(specs)]
    for key in [*EXAMPLE, "overall"]:
        assert {row[key] for row in labels} == {"accept", "reject"}, key


def test_segregated_and_clustered_carbides_vary_more_than_uniform_ones() -> None:
    base = sample_specs(1, seed=2)[0]
    cv = {}
    for how in ("uniform", "segregated", "clustered"):
        spec = type(base)(**{**base.__dict__, "height_mm": 1.0, "carbide": 0.4,
                             "distribution": how})
        cv[how] = measure_labels(render_bead(spec, seed=4), 10.0).quantities["carbide_cv"]
    assert cv["uniform"] < 0.35 < min(cv["segregated"], cv["clustered"])


def test_labels_follow_the_example_limits() -> None:
    good = {r.quantity: r.limit for rules in EXAMPLE.values() for r in rules}
    assert good["max_pore_diameter_um"] == 150.0
    assert set(label_sample(good, EXAMPLE).values()) == {"accept"}  # limits are inclusive
    one_bad = label_sample({**good, "max_pore_diameter_um": 150.5}, EXAMPLE)
    assert one_bad["EA-4"] == "reject" and one_bad["overall"] == "reject"
    assert one_bad["EA-1"] == "accept"
    ea6 = EXAMPLE["EA-6"][0].quantity
    unmeasured = {k: v for k, v in good.items() if k != ea6}
    assert label_sample(unmeasured, EXAMPLE)["EA-6"] == "reject"


def test_labels_follow_whatever_limits_the_rules_give() -> None:
    strict = {"EA-4": (MeasurementRule("porosity_fraction", "<", 0.001, "fraction"),)}
    quantities = {"porosity_fraction": 0.005}
    assert label_sample(quantities, strict) == {"EA-4": "reject", "overall": "reject"}
    lenient = {"EA-4": (MeasurementRule("porosity_fraction", "<=", 0.01, "fraction"),)}
    assert label_sample(quantities, lenient) == {"EA-4": "accept", "overall": "accept"}


def test_a_lost_fusion_line_is_stood_in_for_by_the_beads_lower_outline_and_said_so() -> None:
    # A small JPEG can smear a thin red line into the blue under it: on generated beads
    # with the line painted as HAZ, dilution and height still come out close to the truth.
    for index, spec in enumerate(sample_specs(6, seed=11)):
        labels = render_bead(spec, 10.0, seed=index)
        truth = measure_labels(labels, 10.0)
        lost = np.where(labels == FUSION_LINE, HAZ, labels).astype(np.uint8)
        m = measure_labels(lost, 10.0)
        for name in ("dilution_fraction", "reinforcement_height_mm"):
            assert abs(m.quantities[name] - truth.quantities[name]) <= 0.01, (spec, name)
            assert "lower outline stands in" in m.notes[name]
        # measured from the bead's edge, the HAZ depth gains the line's thickness: never less
        assert m.quantities["haz_depth_mm"] >= truth.quantities["haz_depth_mm"] - 0.01
        assert truth.notes == {}


def test_a_bead_on_unshaded_substrate_without_fusion_line_has_no_baseline() -> None:
    labels = np.zeros((60, 80), dtype=np.uint8)
    labels[10:30, 20:60] = BEAD
    m = measure_labels(labels, 25.0)
    assert "no fusion line" in m.unmeasurable["dilution_fraction"] and m.notes == {}
