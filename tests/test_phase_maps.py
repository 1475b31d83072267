"""What `kb measure` refuses, `kb qualify` never judges: photographs, grey and false-colour
copies are not phase maps (wherever their black areas are), degraded real maps still are, and
a sample that is not a phase map goes to review with its measurement rules not assessed."""

from __future__ import annotations

import colorsys
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.metrology.quantities import NotASegmentationMap, measure_image, measure_labels
from engine.metrology.synthetic import (
    BeadSpec,
    Degradation,
    degrade,
    encode,
    paint,
    render_bead,
    write_dataset,
)
from engine.qualify import DecisionOverride, QualifyOptions, qualify_paths
from engine.samples import load_sample
from engine.session import VLKB
from engine.sync import sync_workspace
from kb.config import DEFAULT_LEGEND, Workspace
from tests.cli_runner import kb
from tests.foreign_images import photograph
from tests.workspaces import micrograph, new_workspace, write_carbide_assessment

REPO = Path(__file__).resolve().parent.parent
MAP = REPO / "examples" / "sound-bead-a.png"




def framed(image: Image.Image, scale: int) -> Image.Image:
    """The image pasted in the middle of a black canvas scale times its size."""
    canvas = Image.new("RGB", (image.width * scale, image.height * scale))
    canvas.paste(image.convert("RGB"), (image.width * (scale - 1) // 2,) * 2)
    return canvas


def hue_rotated(image: Image.Image, degrees: float) -> Image.Image:
    rgb = np.asarray(image.convert("RGB")) / 255.0
    flat = rgb.reshape(-1, 3)
    colours, inverse = np.unique(flat, axis=0, return_inverse=True)
    turned = []
    for r, g, b in colours:
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        turned.append(colorsys.hsv_to_rgb((h + degrees / 360.0) % 1.0, s, v))
    out = np.array(turned)[inverse.ravel()].reshape(rgb.shape)
    return Image.fromarray((out * 255).round().astype(np.uint8))


def refused(image: Image.Image) -> bool:
    try:
        measure_image(image, DEFAULT_LEGEND, 10.0)
    except NotASegmentationMap:
        return True
    return False


# --- the check itself -------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1, 3])
@pytest.mark.parametrize("tint", [(1.0, 0.9, 0.75), (0.8, 0.9, 1.0), (1.0, 1.0, 1.0)])
def test_a_photograph_is_not_a_phase_map_even_in_a_wide_black_frame(scale, tint) -> None:
    assert refused(framed(photograph(tint=tint), scale))


def test_a_dark_photograph_is_not_a_phase_map() -> None:
    dark = Image.fromarray((np.asarray(photograph()) * 0.35).astype(np.uint8))
    assert refused(dark)


@pytest.mark.parametrize("mode", ["L", "grey average"])
def test_a_grey_copy_of_a_phase_map_is_not_a_phase_map(mode) -> None:
    rgb = np.asarray(Image.open(MAP).convert("RGB"))
    if mode == "L":
        grey = Image.open(MAP).convert("L")
    else:
        grey = Image.fromarray(rgb.mean(axis=2).astype(np.uint8))
    assert refused(grey)


def test_a_sixteen_bit_grey_copy_of_a_phase_map_is_not_a_phase_map(tmp_path: Path) -> None:
    grey = np.asarray(Image.open(MAP).convert("L")).astype(np.uint16) * 257
    path = tmp_path / "deep.png"
    Image.fromarray(grey).save(path)
    sample = load_sample(path)
    assert "16-bit" in (sample.conversion or "")
    assert refused(sample.image)


@pytest.mark.parametrize("order", [(1, 2, 0), (2, 0, 1), (0, 2, 1), (1, 0, 2), (2, 1, 0)])
def test_a_channel_permuted_copy_is_not_a_phase_map(order) -> None:
    rgb = np.asarray(Image.open(MAP).convert("RGB"))
    assert refused(Image.fromarray(np.ascontiguousarray(rgb[..., list(order)])))


@pytest.mark.parametrize("degrees", [60, 120, 180, 240, 300])
def test_a_hue_rotated_copy_is_not_a_phase_map(degrees) -> None:
    assert refused(hue_rotated(Image.open(MAP), degrees))


def test_a_map_on_a_large_black_canvas_still_measures_the_same() -> None:
    original = Image.open(MAP).convert("RGB")
    alone = measure_image(original, DEFAULT_LEGEND, 10.0)
    on_canvas = measure_image(framed(original, 4), DEFAULT_LEGEND, 10.0)
    assert on_canvas.quantities == pytest.approx(alone.quantities)


@pytest.mark.parametrize(
    "how",
    [
        Degradation(noise_sigma=25.0),
        Degradation(blur_radius=2.0),
        Degradation(jpeg_quality=50),
        Degradation(noise_sigma=10.0, blur_radius=1.0, jpeg_quality=70),
    ],
    ids=["noise-25", "blur-2", "jpeg-50", "noise-blur-jpeg"],
)
def test_noisy_blurred_and_jpeg_maps_from_kb_synth_still_measure(tmp_path: Path, how) -> None:
    for path in write_dataset(tmp_path, n=8, seed=11, degradation=how):
        assert not refused(load_sample(path).image), path.name


def test_a_blurred_bead_of_fine_carbides_is_one_blend_and_still_a_phase_map() -> None:
    # Tall, with little HAZ: nearly every non-background pixel is a pink-green blend.
    spec = replace(BeadSpec(), carbide=0.45, carbide_size_um=15.0, height_mm=1.5, haz_mm=0.05)
    labels = render_bead(spec, 10.0, seed=1)
    how = Degradation(blur_radius=1.5, jpeg_quality=70, subsampling="4:2:0")
    data, _ = encode(degrade(paint(labels, DEFAULT_LEGEND), how, seed=1), how)
    measured = measure_image(Image.open(io.BytesIO(data)), DEFAULT_LEGEND, 10.0)
    truth = measure_labels(labels, 10.0)
    assert measured.quantities["carbide_fraction"] == pytest.approx(
        truth.quantities["carbide_fraction"], abs=0.02)


def test_examples_and_a_map_with_a_grey_legend_colour_still_measure() -> None:
    for path in sorted((REPO / "examples").glob("*.png")):
        assert not refused(Image.open(path)), path.name
    legend = {**DEFAULT_LEGEND, "bead": (200, 200, 200)}
    rgb = np.asarray(Image.open(MAP).convert("RGB")).copy()
    rgb[(rgb == (0, 255, 0)).all(axis=2)] = (200, 200, 200)
    measure_image(Image.fromarray(rgb), legend, 10.0)  # raises if refused


# --- kb measure and kb qualify agree ------------------------------------------------------------


def not_maps(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    photo = folder / "photo.png"
    framed(photograph(), 3).save(photo)
    grey = folder / "grey-map.png"
    Image.open(MAP).convert("L").save(grey)
    return [photo, grey]


def test_kb_measure_refuses_a_photo_and_a_grey_map_naming_them(tmp_path: Path) -> None:
    paths = not_maps(tmp_path)
    code, out, err = kb("measure", *paths, MAP, "--json", "-w", REPO)
    assert code == 1
    document = json.loads(out)
    assert [Path(m["path"]).name for m in document["measurements"]] == ["sound-bead-a.png"]
    assert sorted(f["path"] for f in document["failures"]) == sorted(map(str, paths))
    for failure in document["failures"]:
        assert failure["path"] in failure["error"] and "phase map" in failure["error"]


def test_qualify_sends_a_photo_and_a_grey_map_to_review_with_measurements_not_assessed(
    example: Workspace, tmp_path: Path
) -> None:
    paths = not_maps(tmp_path)
    code, out, err = kb("qualify", *paths, MAP, "--json", "-w", example.root)
    assert code == 0, err
    by_name = {Path(q["sample"]["path"]).name: q for q in json.loads(out)["qualifications"]}
    assert by_name["sound-bead-a.png"]["verdict"] == "accept"
    for name in ("photo.png", "grey-map.png"):
        q = by_name[name]
        assert q["verdict"] == "review", name
        nodes = {n["key"]: n for n in q["nodes"]}
        for key in ("EA-1", "EA-2", "EA-3", "EA-4"):
            node = nodes[key]
            assert node["verdict"] == "not_assessed"
            assert "not a phase map" in node["reason"]
            measured = [e for e in node["evidence"] if e["role"] == "measurement"]
            assert measured and all(e["verdict"] == "not_assessed" for e in measured)
        root = nodes[q["nodes"][0]["key"]]
        assert "not a phase map" in root["rationale"]


@pytest.fixture
def vlr_workspace(tmp_path: Path, tiny_clip_dir: Path, tiny_flava_dir: Path):
    """EA-5 judged by prompts and references, with or without a measurement rule."""

    def make(with_measurement: bool) -> Workspace:
        root = tmp_path / ("with" if with_measurement else "without")
        ws = new_workspace(root, tiny_clip_dir, tiny_flava_dir)
        write_carbide_assessment(ws)
        if with_measurement:
            path = ws.rules_dir / "assessments" / "EA-5.toml"
            path.write_text(
                path.read_text()
                + '\n[[measurements]]\nquantity = "carbide_fraction"\nop = ">="\n'
                "limit = 0.05\nunit = \"fraction\"\n"
            )
        sync_workspace(VLKB(ws))
        return ws

    return make


def test_a_photo_goes_to_review_even_when_the_vision_language_evidence_accepts(
    vlr_workspace, tmp_path: Path
) -> None:
    ws = vlr_workspace(True)
    (photo, _) = not_maps(tmp_path / "in")
    good = micrograph(tmp_path / "in" / "map.png", seed=3, pink_share=0.4)
    accept_all = QualifyOptions(decision=DecisionOverride(threshold=-1e9))
    outcome = qualify_paths(VLKB(ws), [photo, good], accept_all)
    verdicts = {Path(r.sample_path).name: r for r in outcome.results}
    assert verdicts["map.png"].verdict == "accept"  # the override makes the VLR accept
    result = verdicts["photo.png"]
    assert result.verdict == "review"
    (ea5,) = [n for n in result.nodes if n.key == "EA-5"]
    assert ea5.verdict == "not_assessed" and "not a phase map" in (ea5.reason or "")
    assert any(getattr(e, "z", None) is not None for e in ea5.evidence)  # VLR still recorded


def test_a_workspace_without_measurement_rules_judges_a_photo_as_before(
    vlr_workspace, tmp_path: Path
) -> None:
    ws = vlr_workspace(False)
    (photo, _) = not_maps(tmp_path / "in")
    for threshold, expected in ((-1e9, "accept"), (1e9, "reject")):
        options = QualifyOptions(decision=DecisionOverride(threshold=threshold))
        (result,) = qualify_paths(VLKB(ws), [photo], options).results
        assert result.verdict == expected
