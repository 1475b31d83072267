"""What training knows of the Ni-WC example: its limits as training targets, and one generated
map as the image tower sees it.

The limits shape the auxiliary heads of the image tower (one per limit), so they are a
training choice; the example's rules/ stay the authority on verdicts and labels, and a test
keeps the two in step.
"""

from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np
from PIL import Image

from engine.encoders.framing import crop_padded, window_of
from engine.metrology.quantities import PHASES, measure_labels, phase_cells
from engine.metrology.synthetic import Variant, draw_variant, encode, label_sample
from kb.config import DEFAULT_LEGEND
from kb.rules import MeasurementRule

EXAMPLE_CRITERIA: dict[str, tuple[MeasurementRule, ...]] = {
    "EA-1": (MeasurementRule("dilution_fraction", "<=", 0.05, "fraction"),),
    "EA-2": (MeasurementRule("haz_depth_mm", "<=", 1.0, "mm"),),
    "EA-3": (MeasurementRule("reinforcement_height_mm", ">=", 0.3, "mm"),),
    "EA-4": (
        MeasurementRule("porosity_fraction", "<=", 0.02, "fraction"),
        MeasurementRule("max_pore_diameter_um", "<=", 150.0, "um"),
    ),
    "EA-5": (MeasurementRule("carbide_fraction", ">=", 0.30, "fraction"),),
    "EA-6": (
        MeasurementRule("carbide_gradient", "<=", 0.9, "ratio"),
        MeasurementRule("carbide_clustering", "<=", 0.10, "ratio"),
        MeasurementRule("carbide_cv_ratio", "<=", 0.75, "ratio"),
    ),
}


class TrainingSample(NamedTuple):
    """One generated micrograph as a model trains on it."""

    pixels: np.ndarray  # (3, height, width) uint8, as the image processor resizes the map
    labels: dict[str, str]
    quantities: dict[str, float]
    cells: np.ndarray | None  # phase_cells on the requested grid, if one was asked for


def render_resized(
    variant: Variant, seed: int, size: tuple[int, int], resample: int, um_per_px: float = 10.0,
    grid: tuple[int, int] | None = None, frame_on_content: bool = False,
) -> TrainingSample:
    """One training sample: the map drawn as its variant says (frame, blur, noise, JPEG),
    resized as the encoder's image processor does it (PIL, before rescaling and
    normalisation), its labels, true quantities and, on a grid, phase shares. Torch-free, for
    worker processes; tests check it against the processor itself.

    frame_on_content: the picture and its labels through the window the encoder will look
    through (engine/encoders/framing.py), found on the picture as saved; the true quantities
    are those of the whole map.
    """
    label_map, scale, image = draw_variant(variant, um_per_px, seed, DEFAULT_LEGEND)
    if variant.degradation.jpeg_quality is not None:  # what a JPEG file holds once read back
        image = Image.open(io.BytesIO(encode(image, variant.degradation)[0])).convert("RGB")
    quantities = measure_labels(label_map, scale).quantities
    if frame_on_content:
        background = DEFAULT_LEGEND["background"]
        pixels = np.asarray(image)
        window = window_of(pixels, background)
        if window is not None:
            image = Image.fromarray(crop_padded(pixels, window, np.asarray(background, np.uint8)))
            label_map = crop_padded(label_map, window, PHASES.index("background"))
    image = image.resize((size[1], size[0]), resample=resample)
    pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()
    cells = None if grid is None else phase_cells(label_map, grid)
    labels = label_sample(quantities, EXAMPLE_CRITERIA)
    return TrainingSample(pixels, labels, dict(quantities), cells)
