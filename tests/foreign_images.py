"""Images that are not phase maps of the example's material, for what must never be judged
as one: an etched photograph, a uniform grey image, and another material's grain map."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def photograph(height: int = 360, width: int = 480, seed: int = 0, tint=(1.0, 0.9, 0.75)):
    """A real-looking etched micrograph: grains of smoothed noise, a lighting gradient, a tint."""
    rng = np.random.default_rng(seed)
    grains = ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), 6)
    grains = grains / np.abs(grains).max()
    light = np.linspace(0.7, 1.1, width)[None, :]
    grey = (120 + 70 * grains) * light + rng.normal(0, 6, (height, width))
    rgb = np.stack([grey * t for t in tint], axis=2)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def uniform_grey(level: int = 128, height: int = 480, width: int = 640) -> Image.Image:
    return Image.new("RGB", (width, height), (level, level, level))


# Phase colours of no VLKB legend: yellow, cyan, orange, violet and white grains.
OTHER_PHASES = ((200, 200, 40), (40, 200, 200), (230, 130, 20), (120, 60, 200), (250, 250, 250))


def voronoi_grains(seed: int = 0, height: int = 480, width: int = 640, cells: int = 60):
    """A phase map of another material: random Voronoi grains, each in one of OTHER_PHASES."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (cells, 2)) * [height, width]
    rows, cols = np.mgrid[0:height, 0:width]
    nearest = ((rows[..., None] - centres[:, 0]) ** 2
               + (cols[..., None] - centres[:, 1]) ** 2).argmin(axis=-1)
    colours = np.asarray(OTHER_PHASES, dtype=np.uint8)[rng.integers(0, len(OTHER_PHASES), cells)]
    return Image.fromarray(colours[nearest])
