"""`kb synth-anomalies`: Perlin-noise defects drawn into good images, with masks that mark
exactly what changed, the same bytes for the same seed, and bad sources failing alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.anomalies.perlin import perlin_noise
from engine.anomalies.synthesis import AnomalyOptions
from kb.errors import OptionError
from tests.cli_runner import kb

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def good(tmp_path: Path) -> Path:
    folder = tmp_path / "good"
    folder.mkdir()
    for name in ("sound-bead-a.png", "sound-bead-b.png", "porous-bead.png"):
        shutil.copy(EXAMPLES / name, folder / name)
    return folder


def run(*args: object) -> tuple[int, dict, str]:
    code, out, err = kb("synth-anomalies", *args, "--json")
    return code, json.loads(out) if out.strip() else {}, err


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_masks_mark_exactly_what_changed(good: Path, tmp_path: Path) -> None:
    code, document, err = run(good, tmp_path / "out", "--n", "6", "--seed", "4")
    assert code == 0, err
    assert len(document["images"]) == len(document["masks"]) == 6
    rows = (tmp_path / "out" / "anomalies.csv").read_text().splitlines()
    assert len(rows) == 7 and rows[0].startswith("image,mask,source,texture")
    changed_share = []
    for image_path, mask_path in zip(document["images"], document["masks"], strict=True):
        stem = Path(image_path).stem
        assert Path(mask_path).name == f"{stem}.png" and Path(mask_path).parent.name == "masks"
        source = good / (stem.split("-", 1)[1] + ".png")
        before = np.asarray(Image.open(source).convert("RGB"), dtype=np.int16)
        after = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.int16)
        mask = np.asarray(Image.open(mask_path))
        assert set(np.unique(mask)) == {0, 255}
        defect = mask > 0
        assert 0.002 <= defect.mean() <= 0.3  # the default area bounds
        assert (after[~defect] == before[~defect]).all()  # untouched outside the mask
        changed_share.append(float((after[defect] != before[defect]).any(axis=1).mean()))
    assert np.mean(changed_share) > 0.5  # and, blended, different inside it


def test_the_same_seed_gives_the_same_bytes_and_a_bad_source_fails_alone(
    good: Path, tmp_path: Path
) -> None:
    code, _, err = run(good, tmp_path / "a", "--n", "5", "--seed", "7")
    assert code == 0, err
    code, _, err = run(good, tmp_path / "b", "--n", "5", "--seed", "7")
    assert code == 0, err
    assert files(tmp_path / "a") == files(tmp_path / "b")
    code, _, err = run(good, tmp_path / "c", "--n", "5", "--seed", "8")
    assert files(tmp_path / "c")["0000-porous-bead.png"] != files(tmp_path / "a")[
        "0000-porous-bead.png"]

    (good / "broken.png").write_bytes(b"not a picture")
    code, document, err = run(good, tmp_path / "d", "--n", "5", "--seed", "7")
    assert code == 1
    assert err.strip().splitlines() == [
        f"error: {good / 'broken.png'}: not an image VLKB can read; use PNG, JPEG, TIFF or BMP"]
    assert [f["path"] for f in document["failures"]] == [str(good / "broken.png")]
    assert files(tmp_path / "d") == files(tmp_path / "a")  # the good ones, as without it


def test_foreground_keeps_defects_off_the_background(good: Path, tmp_path: Path) -> None:
    code, document, err = run(good, tmp_path / "out", "--n", "3", "--seed", "2",
                              "--foreground", "--texture", "perlin")
    assert code == 0, err
    for image_path, mask_path in zip(document["images"], document["masks"], strict=True):
        source = good / (Path(image_path).stem.split("-", 1)[1] + ".png")
        before = np.asarray(Image.open(source).convert("RGB"))
        defect = np.asarray(Image.open(mask_path)) > 0
        assert defect.any() and not (before[defect] == 0).all(axis=1).any()  # never on black


def test_grey_sources_stay_grey_and_a_texture_folder_fills_defects(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = tmp_path / "grey"
    grey.mkdir()
    Image.fromarray(rng.integers(90, 160, (120, 160), dtype=np.uint8)).save(grey / "fabric.png")
    textures = tmp_path / "textures"
    textures.mkdir()
    Image.new("RGB", (40, 30), (250, 20, 20)).save(textures / "red.png")
    code, document, err = run(grey, tmp_path / "out", "--n", "2", "--texture", textures)
    assert code == 0, err
    for image_path in document["images"]:
        with Image.open(image_path) as image:
            assert image.mode == "L" and image.size == (160, 120)
    rows = (tmp_path / "out" / "anomalies.csv").read_text()
    assert str(textures / "red.png") in rows


def test_wrong_options_and_outputs_are_one_line(good: Path, tmp_path: Path) -> None:
    for args, words in [
        (("--n", "0"), "--n must be at least 1"),
        (("--min-area", "0.4", "--max-area", "0.2"), "--min-area 0.4 must be below"),
        (("--texture", str(tmp_path / "none")), "use self or perlin, or a folder"),
    ]:
        code, out, err = kb("synth-anomalies", good, tmp_path / "out", *args)
        assert code == 1 and words in err and err.count("\n") == 1, err
    code, out, err = kb("synth-anomalies", good, good / "defects", "--n", "1")
    assert code == 1 and "inside the source folder" in err
    assert not (good / "defects").exists() and not (tmp_path / "out").exists()
    with pytest.raises(OptionError):
        AnomalyOptions(n=1, max_area=float("nan"))


def test_perlin_noise_is_smooth_scaled_and_seeded() -> None:
    shape = (200, 300)
    coarse = perlin_noise(shape, (2, 2), 0.0, np.random.default_rng(1))
    fine = perlin_noise(shape, (32, 32), 0.0, np.random.default_rng(1))
    again = perlin_noise(shape, (2, 2), 0.0, np.random.default_rng(1))
    turned = perlin_noise(shape, (2, 2), 45.0, np.random.default_rng(1))
    assert (coarse == again).all() and not np.allclose(coarse, turned)
    for noise in (coarse, fine):
        assert noise.min() >= -1.01 and noise.max() <= 1.01 and abs(noise.mean()) < 0.2

    def crossings(a: np.ndarray) -> int:
        return int(np.count_nonzero(np.diff(np.sign(a), axis=1)))
    assert crossings(fine) > 8 * crossings(coarse)  # more cells, smaller blobs
    assert np.abs(np.diff(coarse, axis=1)).max() < 0.05  # smooth: no jumps between pixels
