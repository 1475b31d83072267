"""Where the inside of a synthetic defect comes from: the image itself, VLKB's own procedural
textures, or a folder of texture pictures.

DRAEM fills its masks with textures from a separate data set (DTD); CLIP-MDC also uses the
image itself. A shifted, rotated copy of the image is material that belongs there but is out
of place, which is what a local defect looks like; the procedural textures ship with VLKB as
code (fractal noise in random colours), so no data set is needed; a folder lets a workspace
use textures of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from engine.anomalies.perlin import fractal_noise
from engine.inputs import GLOB_CHARACTERS, expand_inputs
from engine.results import SampleFailure
from engine.samples import load_sample
from kb.errors import OptionError, VLKBError

OWN = "self"  # a shifted, rotated copy of the image itself
PROCEDURAL = "perlin"  # VLKB's procedural textures
BUILT_IN = (OWN, PROCEDURAL)


@dataclass(frozen=True)
class TextureSource:
    """What `--texture` chose: one of BUILT_IN, or the texture pictures of a folder."""

    kind: str
    pictures: tuple[np.ndarray, ...] = ()  # float RGB, for a folder
    names: tuple[str, ...] = ()

    def draw(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """A texture the size of image (float RGB, 0-255) and what it was, for the manifest."""
        if self.kind == OWN:
            texture, what = _own(image, rng), OWN
        elif self.kind == PROCEDURAL:
            texture, what = _procedural(image.shape[:2], rng), PROCEDURAL
        else:
            pick = int(rng.integers(len(self.pictures)))
            texture, what = _fitted(self.pictures[pick], image.shape[:2], rng), self.names[pick]
        return _jitter(texture, rng), what


def texture_source(choice: str) -> tuple[TextureSource, list[SampleFailure]]:
    """`self`, `perlin`, or a folder (or pattern) of texture pictures; a picture that cannot
    be read is a failure of its own, and a folder with none that can is an error."""
    if choice in BUILT_IN:
        return TextureSource(choice), []
    if not Path(choice).exists() and not GLOB_CHARACTERS & set(choice):
        raise OptionError("texture", f"{choice!r}: use {' or '.join(BUILT_IN)}, or a folder of "
                          "texture images")
    paths, failures = expand_inputs([choice])
    pictures, names = [], []
    for path in paths:
        try:
            sample = load_sample(path)
        except VLKBError as exc:
            failures.append(SampleFailure(str(path), f"texture {exc}"))
            continue
        pictures.append(np.asarray(sample.image, dtype=np.float64))
        names.append(str(path))
    if not pictures:
        raise OptionError("texture", f"{choice!r}: no texture image there could be read")
    return TextureSource("folder", tuple(pictures), tuple(names)), failures


def _own(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image rotated by up to 90 degrees either way and shifted by a random offset, read
    as if the picture tiled the plane (so no corner is left empty)."""
    height, width = image.shape[:2]
    theta = np.deg2rad(rng.uniform(-90.0, 90.0))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs -= width / 2.0
    ys -= height / 2.0
    cos, sin = np.cos(theta), np.sin(theta)
    source_x = xs * cos - ys * sin + width / 2.0 + rng.uniform(0.0, width)
    source_y = xs * sin + ys * cos + height / 2.0 + rng.uniform(0.0, height)
    return np.stack([
        ndimage.map_coordinates(image[..., c], [source_y, source_x], order=1, mode="grid-wrap")
        for c in range(image.shape[2])
    ], axis=-1)


def _procedural(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Fractal noise between two random colours: clouds, grain or streaks."""
    cells = float(rng.uniform(2.0, 16.0))
    noise = fractal_noise(shape, cells, int(rng.integers(2, 6)), rng)
    span = float(noise.max() - noise.min()) or 1.0
    t = ((noise - noise.min()) / span)[..., None]
    low, high = rng.uniform(0.0, 255.0, 3), rng.uniform(0.0, 255.0, 3)
    return low + t * (high - low)


def _fitted(picture: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A texture picture scaled to cover the image (and up to half as much again), cut at a
    random place, turned by a random quarter turn."""
    picture = np.rot90(picture, int(rng.integers(4)))
    height, width = shape
    scale = max(height / picture.shape[0], width / picture.shape[1]) * rng.uniform(1.0, 1.5)
    size = (max(int(np.ceil(picture.shape[1] * scale)), width),
            max(int(np.ceil(picture.shape[0] * scale)), height))
    resized = np.asarray(
        Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).resize(
            size, Image.Resampling.BILINEAR), dtype=np.float64)
    top = int(rng.integers(resized.shape[0] - height + 1))
    left = int(rng.integers(resized.shape[1] - width + 1))
    return resized[top : top + height, left : left + width]


def _jitter(texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrast, brightness and sometimes inversion, drawn at random (DRAEM's augmenters, in
    short), so the inside of a defect never matches its surroundings exactly."""
    mean = texture.mean(axis=(0, 1), keepdims=True)
    texture = mean + (texture - mean) * rng.uniform(0.5, 1.5) + rng.uniform(-60.0, 60.0)
    if rng.random() < 0.3:
        texture = 255.0 - texture
    return np.clip(texture, 0.0, 255.0)
