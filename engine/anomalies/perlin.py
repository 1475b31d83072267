"""Perlin gradient noise in plain numpy, sampled on a rotated, scaled grid.

Written here rather than taken from a package: the defects `kb synth-anomalies` draws must be
the same bytes for the same seed on every machine and version, so the noise is a small pure
function of a numpy Generator.
"""

from __future__ import annotations

import numpy as np


def perlin_noise(
    shape: tuple[int, int],
    cells: tuple[float, float],
    angle_deg: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Gradient noise over an image of shape (rows, columns), roughly in [-1, 1].

    cells: how many lattice cells span the image across (x) and down (y): 1 gives one
    blob the size of the picture, 32 small speckles. The lattice is rotated by angle_deg
    about the image's centre and shifted by a random offset, so the blobs have no preferred
    direction or position. Gradients are random unit vectors on a periodic lattice.
    """
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs -= width / 2.0
    ys -= height / 2.0
    theta = np.deg2rad(angle_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    u = (xs * cos + ys * sin) * cells[0] / width
    v = (-xs * sin + ys * cos) * cells[1] / height
    period = int(np.ceil(max(cells) * 1.5)) + 2  # covers the rotated picture once over
    u += rng.uniform(0.0, period)
    v += rng.uniform(0.0, period)
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(period, period))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    i0, j0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - i0, v - j0

    def corner(di: int, dj: int) -> np.ndarray:
        g = gradients[(j0 + dj) % period, (i0 + di) % period]
        return g[..., 0] * (fu - di) + g[..., 1] * (fv - dj)

    su, sv = _fade(fu), _fade(fv)
    top = corner(0, 0) + su * (corner(1, 0) - corner(0, 0))
    bottom = corner(0, 1) + su * (corner(1, 1) - corner(0, 1))
    return np.sqrt(2.0) * (top + sv * (bottom - top))  # 2-D Perlin peaks at 1/sqrt(2)


def fractal_noise(
    shape: tuple[int, int], cells: float, octaves: int, rng: np.random.Generator
) -> np.ndarray:
    """Octaves of perlin_noise, each twice as fine and half as strong: a cloudy texture."""
    total = np.zeros(shape, dtype=np.float64)
    amplitude, scale = 1.0, cells
    for _ in range(octaves):
        angle = rng.uniform(0.0, 360.0)
        total += amplitude * perlin_noise(shape, (scale, scale), angle, rng)
        amplitude *= 0.5
        scale *= 2.0
    return total


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic 6t^5 - 15t^4 + 10t^3: smooth, with no seams at the lattice lines."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)
