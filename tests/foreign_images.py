"""Images that are not phase maps of the example's material, for what must never be judged
as one: an etched photograph, a uniform grey image, and another material's grain map; and
maps of other structures drawn in the example's own legend, which read as phase maps."""

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


def voronoi_grains(seed: int = 0, height: int = 480, width: int = 640, cells: int = 60,
                   colours: tuple[tuple[int, int, int], ...] = OTHER_PHASES) -> Image.Image:
    """A phase map of another material: random Voronoi grains, each in one of the colours."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (cells, 2)) * [height, width]
    rows, cols = np.mgrid[0:height, 0:width]
    nearest = ((rows[..., None] - centres[:, 0]) ** 2
               + (cols[..., None] - centres[:, 1]) ** 2).argmin(axis=-1)
    palette = np.asarray(colours, dtype=np.uint8)[rng.integers(0, len(colours), cells)]
    return Image.fromarray(palette[nearest])


def islands(legend, seed: int = 0, height: int = 480, width: int = 640) -> Image.Image:
    """A two-phase field in the legend's bead and carbide colours, with no bead, substrate
    or HAZ: what a dual-phase steel's map would look like drawn in these colours."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), 4)
    drawn = np.empty((height, width, 3), dtype=np.uint8)
    drawn[:] = legend["bead"]
    drawn[field > 0.05] = legend["carbide"]
    return Image.fromarray(drawn)


def layered_coating(legend, seed: int = 0, height: int = 480, width: int = 640) -> Image.Image:
    """Flat layers in the legend's colours (background, bead with carbide specks, HAZ), no
    bead shape: a sprayed coating's cross-section rather than a clad bead."""
    rng = np.random.default_rng(seed)
    drawn = np.empty((height, width, 3), dtype=np.uint8)
    drawn[:] = legend["background"]
    drawn[height // 3 : height // 2] = legend["bead"]
    drawn[height // 2 :] = legend["haz"]
    for y, x in zip(rng.integers(height // 3, height // 2 - 4, 300),
                    rng.integers(0, width - 4, 300), strict=True):
        drawn[y : y + 4, x : x + 4] = legend["carbide"]
    return Image.fromarray(drawn)
