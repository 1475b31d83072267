"""The window a content-framed tower looks through: margins and picture size stop mattering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.encoders.framing import (
    CANVAS,
    MARGIN,
    Window,
    content_box,
    crop_padded,
    frame_on_content,
    window_of,
)
from engine.encoders.vlkb_dual import VlkbDualEncoder
from engine.metrology.quantities import PHASES
from engine.metrology.synthetic import BeadSpec, Degradation, Frame, Variant, render_bead
from engine.training.example import render_resized
from engine.training.train import TrainConfig, train
from kb.config import DEFAULT_LEGEND, ModelSpec

BLACK = DEFAULT_LEGEND["background"]
PALETTE = np.array([DEFAULT_LEGEND[phase] for phase in PHASES], dtype=np.uint8)


def bead_map() -> np.ndarray:
    """A default bead drawn in the legend, (h, w, 3) uint8 in the default 640x480 frame."""
    return PALETTE[render_bead(BeadSpec(), seed=4)]


def reframed(pixels: np.ndarray, left: int, top: int, right: int, bottom: int) -> Image.Image:
    """The same map with these margins (in pixels) of background around its content."""
    x0, y0, x1, y1 = content_box(pixels, BLACK)
    content = pixels[y0:y1, x0:x1]
    out = np.zeros((top + content.shape[0] + bottom, left + content.shape[1] + right, 3),
                   dtype=np.uint8)
    out[top:top + content.shape[0], left:left + content.shape[1]] = content
    return Image.fromarray(out)


def test_the_same_map_under_any_margins_is_seen_identically() -> None:
    pixels = bead_map()
    seen = [np.asarray(frame_on_content(reframed(pixels, *margins), BLACK))
            for margins in ((4, 4, 4, 4), (300, 10, 2, 250), (40, 180, 200, 6))]
    assert seen[0].shape == (CANVAS[1], CANVAS[0], 3)
    for other in seen[1:]:
        np.testing.assert_array_equal(other, seen[0])
    tight = reframed(pixels, 4, 4, 4, 4)
    assert tight.size != CANVAS  # the picture itself was not the canvas already


def test_content_larger_than_the_canvas_is_never_cut_and_keeps_the_canvas_aspect() -> None:
    wide = np.zeros((300, 1500, 3), dtype=np.uint8)
    wide[100:200, 10:1490] = DEFAULT_LEGEND["bead"]
    window = window_of(wide, BLACK)
    assert window is not None
    assert window.left <= 10 - MARGIN and window.left + window.width >= 1490 + MARGIN
    assert window.width * CANVAS[1] == pytest.approx(window.height * CANVAS[0], abs=CANVAS[0])
    seen = np.asarray(frame_on_content(Image.fromarray(wide), BLACK))
    assert (np.all(seen == DEFAULT_LEGEND["bead"], axis=2)).sum() == 100 * 1480


def test_background_noise_does_not_move_the_window() -> None:
    pixels = bead_map()
    rng = np.random.default_rng(0)
    noisy = np.clip(pixels + rng.normal(0, 15, pixels.shape), 0, 255).astype(np.uint8)
    assert window_of(noisy, BLACK) == window_of(pixels, BLACK)


def test_a_picture_without_content_is_seen_as_it_is() -> None:
    blank = Image.new("RGB", (200, 100), BLACK)
    assert window_of(np.asarray(blank), BLACK) is None
    assert frame_on_content(blank, BLACK).size == (200, 100)


def test_crop_padded_fills_what_lies_outside() -> None:
    values = np.arange(12).reshape(3, 4)
    out = crop_padded(values, Window(-1, 1, 3, 3), fill=-7)
    np.testing.assert_array_equal(out, [[-7, 4, 5], [-7, 8, 9], [-7, -7, -7]])


def test_training_frames_the_picture_and_its_phase_grid_alike() -> None:
    """A map drawn in a tight frame trains as the same map drawn in the default frame."""
    spec = BeadSpec()
    size, resample = (60, 80), int(Image.Resampling.BILINEAR)
    plain = render_resized(Variant(spec, Frame(), Degradation(), "default"), 5, size, resample,
                           grid=(8, 10), frame_on_content=True)
    tight = render_resized(Variant(spec, Frame(420, 300, 0.5, 0.55), Degradation(), "framing"),
                           5, size, resample, grid=(8, 10), frame_on_content=True)
    unframed = render_resized(Variant(spec, Frame(420, 300, 0.5, 0.55), Degradation(),
                                      "framing"), 5, size, resample, grid=(8, 10))
    near = np.abs(plain.pixels.astype(int) - tight.pixels.astype(int)).mean()
    far = np.abs(plain.pixels.astype(int) - unframed.pixels.astype(int)).mean()
    assert near < far / 4
    cells_far = np.abs(plain.cells - unframed.cells).mean()
    assert np.abs(plain.cells - tight.cells).mean() < cells_far / 4
    assert plain.quantities == pytest.approx(tight.quantities, rel=0.05, abs=1e-3)


@pytest.fixture(scope="module")
def framed_dual(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny dual encoder trained with the tower framed on the content."""
    config = TrainConfig(seed=2, n_images=8, epochs=1, batch_size=8, image_height=60,
                         image_width=80, projection_dim=16, draws=2, workers=1,
                         captions_per_group=3, frame_on_content=True)
    out = tmp_path_factory.mktemp("framed") / "dual"
    train(out, config, log=lambda _: None)
    return out


def test_a_content_framed_model_embeds_a_map_alike_under_any_margins(framed_dual: Path) -> None:
    spec = ModelSpec(name="framed", backend="dual", source=str(framed_dual))
    encoder = VlkbDualEncoder(spec, framed_dual)
    assert encoder.frame_on_content
    assert "centres on its content" in (framed_dual / "MODEL_CARD.md").read_text()
    pixels = bead_map()
    pictures = [reframed(pixels, 4, 4, 4, 4), reframed(pixels, 300, 10, 2, 250)]
    framed = encoder.embed_images(pictures)
    np.testing.assert_allclose(framed[0], framed[1], atol=1e-5)
    encoder.frame_on_content = False  # the same weights, looking at the picture as it is
    plain = encoder.embed_images(pictures)
    assert np.abs(plain[0] - plain[1]).max() > 1e-3
