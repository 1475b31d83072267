"""Every way a sample file can be wrong gives one clear line; odd modes are converted."""


import numpy as np
import pytest
from PIL import Image

from engine.samples import load_sample
from kb.errors import ImageError
from tests.workspaces import png_claiming


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.write_text("hello, not an image"), p)[1], "not an image VLKB can read"),
        (lambda p: (p.write_bytes(b""), p)[1], "file is empty"),
        (lambda p: p.parent, "is a folder"),
        (lambda p: png_claiming(p, 20000, 20000), "megapixel limit"),
        (lambda p: png_claiming(p, 12000, 9000), "megapixel limit"),
    ],
)
def test_bad_files_give_one_clear_line(tmp_path, make, message):
    path = make(tmp_path / "sample.png")
    with pytest.raises(ImageError) as caught:
        load_sample(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_truncated_image(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        path
    )
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_sample(path)


def test_sixteen_bit_grey_is_scaled_to_eight_bit(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)).save(path)
    sample = load_sample(path)
    assert sample.image.mode == "RGB"
    assert np.asarray(sample.image).max() == 255
    assert "16-bit" in sample.conversion


def test_palette_map_keeps_its_colours(tmp_path):
    path = tmp_path / "palette.png"
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[8:] = (255, 105, 180)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(path)
    sample = load_sample(path)
    assert tuple(np.asarray(sample.image)[12, 12]) == (255, 105, 180)
    assert sample.conversion == "P converted to RGB"


def test_transparent_areas_become_black(tmp_path):
    path = tmp_path / "alpha.png"
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 1] = 255
    rgba[:8, :, 3] = 255  # top half opaque green, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(path)
    pixels = np.asarray(load_sample(path).image)
    assert tuple(pixels[0, 0]) == (0, 255, 0) and tuple(pixels[15, 15]) == (0, 0, 0)


def test_cmyk_is_converted_and_says_so(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    sample = load_sample(path)
    assert sample.image.mode == "RGB" and "CMYK" in sample.conversion


def test_same_bytes_same_address(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(a)
    b.write_bytes(a.read_bytes())
    assert load_sample(a).sha256 == load_sample(b).sha256
