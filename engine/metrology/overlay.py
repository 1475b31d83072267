"""The measurement overlay: what metrology measured on a phase map, as geometry to draw.

A qualification stores it in its record (`overlay`, docs/json.md) at qualify time, so a report
rendered years later outlines the very pores, baseline and HAZ point its numbers came from;
nothing is measured again at render time. Coordinates are image pixels with (0, 0) the
picture's top-left corner, pixel (column c, row r) covering [c, c + 1] x [r, r + 1].
Outlines are simplified (Ramer-Douglas-Peucker) and counts capped, so a record stays small
however porous the bead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import contourpy
import numpy as np
from PIL import Image
from scipy import ndimage

from engine.metrology.quantities import (
    QUADRAT_MM,
    Measurement,
    Quadrats,
    Regions,
    measure_regions,
    read_map,
)

Point = tuple[float, float]
Outline = tuple[Point, ...]

MAX_PORES = 100  # pores outlined, the largest first; the count says how many there are
MAX_POINTS = 48  # per pore outline: the tolerance doubles until it fits
MAX_FUSION_PARTS = 4  # pieces of the fusion line outlined, the largest first
MAX_FUSION_POINTS = 400  # per piece
MAX_QUADRATS = 2500  # a finer grid than this is left out (tiny pixels on a huge bead)
TOLERANCE_PX = 0.5  # the first simplification tolerance: half a pixel, invisible


@dataclass(frozen=True)
class Pore:
    """One pore's simplified outline and its equivalent circular diameter."""

    outline: Outline
    diameter_um: float


@dataclass(frozen=True)
class HazDepth:
    """The HAZ pixel farthest from the fusion line, the fusion-line pixel nearest to it,
    and that distance (haz_depth_mm)."""

    point: Point
    foot: Point
    depth_mm: float


@dataclass(frozen=True)
class QuadratShading:
    """The carbide_cv quadrats: grid origin and side in pixels, and the carbide fraction
    of each quadrat row by row (None where a quadrat is too little inside the bead)."""

    x: int
    y: int
    side: int
    columns: int
    rows: int
    fractions: tuple[float | None, ...]


@dataclass(frozen=True)
class Overlay:
    """Everything the report draws over one phase map."""

    width: int
    height: int
    pores: tuple[Pore, ...]  # the largest first
    pore_count: int  # all pores, outlined or not
    baseline: tuple[Point, Point] | None
    fusion_line: tuple[Outline, ...]
    haz_deepest: HazDepth | None
    quadrats: QuadratShading | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "pores": {
                "count": self.pore_count,
                "outlines": [{"points": _points(p.outline), "diameter_um": round(
                    p.diameter_um, 1)} for p in self.pores],
            },
            "baseline": _points(self.baseline, 2) if self.baseline else None,
            "fusion_line": [_points(part) for part in self.fusion_line],
            "haz_deepest": None if self.haz_deepest is None else {
                "point": list(self.haz_deepest.point),
                "foot": list(self.haz_deepest.foot),
                "depth_mm": round(self.haz_deepest.depth_mm, 4),
            },
            "quadrats": None if self.quadrats is None else {
                "x": self.quadrats.x,
                "y": self.quadrats.y,
                "side": self.quadrats.side,
                "side_mm": QUADRAT_MM,
                "columns": self.quadrats.columns,
                "rows": self.quadrats.rows,
                "fractions": list(self.quadrats.fractions),
            },
        }


def measure_with_overlay(
    image: Image.Image, legend: dict[str, tuple[int, int, int]], um_per_px: float
) -> tuple[Measurement, Overlay]:
    """Measure a phase map (NotASegmentationMap as measure_image) and draw what was measured."""
    labels, colours = read_map(image, legend)
    measurement, regions = measure_regions(labels, um_per_px, colours)
    return measurement, overlay_of(regions, measurement)


def overlay_of(regions: Regions, measurement: Measurement) -> Overlay:
    """The geometry of one measurement, from the regions it was taken on."""
    height, width = regions.bead.shape
    return Overlay(
        width=int(width),
        height=int(height),
        pores=_pores(regions.pores, regions.pore_count, measurement.um_per_px),
        pore_count=regions.pore_count,
        baseline=None if regions.baseline is None else (
            _corner(regions.baseline[0]), _corner(regions.baseline[1])),
        fusion_line=_fusion_line(regions.fusion),
        haz_deepest=_haz_deepest(regions, measurement),
        quadrats=_shading(regions.quadrats),
    )


def _pores(labels: np.ndarray, count: int, um_per_px: float) -> tuple[Pore, ...]:
    if count == 0:
        return ()
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = np.lexsort((np.arange(count), -sizes))[:MAX_PORES]  # largest first, then by label
    boxes = ndimage.find_objects(labels)
    return tuple(
        Pore(
            _outline(labels[boxes[k]] == k + 1, boxes[k], MAX_POINTS),
            float(np.sqrt(4.0 * sizes[k] / np.pi)) * um_per_px,
        )
        for k in (int(i) for i in order)
    )


def _fusion_line(fusion: np.ndarray) -> tuple[Outline, ...]:
    parts, count = ndimage.label(fusion, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return ()
    sizes = np.bincount(parts.ravel())[1:]
    boxes = ndimage.find_objects(parts)
    largest = np.argsort(-sizes, kind="stable")[:MAX_FUSION_PARTS]
    return tuple(
        _outline(parts[boxes[k]] == k + 1, boxes[k], MAX_FUSION_POINTS)
        for k in (int(i) for i in largest)
    )


def _haz_deepest(regions: Regions, measurement: Measurement) -> HazDepth | None:
    depth = measurement.quantities.get("haz_depth_mm")
    if regions.haz_deepest is None or depth is None:
        return None
    row, column = regions.haz_deepest
    ys, xs = np.nonzero(regions.fusion)
    nearest = int(np.argmin((ys - row) ** 2 + (xs - column) ** 2))
    return HazDepth(
        point=(column + 0.5, row + 0.5),
        foot=(float(xs[nearest]) + 0.5, float(ys[nearest]) + 0.5),
        depth_mm=float(depth),
    )


def _shading(grid: Quadrats | None) -> QuadratShading | None:
    if grid is None or grid.inside.size > MAX_QUADRATS:
        return None
    rows, columns = grid.inside.shape
    fractions = tuple(None if np.isnan(f) else round(float(f), 3)
                      for f in grid.fractions().ravel())
    return QuadratShading(grid.left, grid.top, grid.side, int(columns), int(rows), fractions)


def _outline(mask: np.ndarray, box: tuple[slice, slice], max_points: int) -> Outline:
    """The outer boundary of one connected component (its window of the picture), along
    the pixel edges with corners cut, simplified to at most max_points points."""
    padded = np.pad(mask.astype(np.float64), 1)
    lines = contourpy.contour_generator(
        z=padded, line_type=contourpy.LineType.Separate
    ).lines(0.5)
    ring = max(lines, key=len)  # the outer boundary is the longest; the rest are holes
    # padded index i is picture index i - 1 + start; corners sit half a pixel from centres
    ring = ring[:-1] + (box[1].start - 0.5, box[0].start - 0.5)
    tolerance = TOLERANCE_PX
    points = _simplify_closed(ring, tolerance)
    while len(points) > max_points:
        tolerance *= 2.0
        points = _simplify_closed(ring, tolerance)
    return tuple((float(x), float(y)) for x, y in points)


def _simplify_closed(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """Ramer-Douglas-Peucker on a closed ring: split it at the point farthest from the
    first, simplify both halves, keep at least a triangle."""
    if len(ring) <= 3:
        return ring
    far = int(np.argmax(np.hypot(*(ring - ring[0]).T)))
    first = _simplify(ring[: far + 1], tolerance)
    second = _simplify(np.vstack([ring[far:], ring[:1]]), tolerance)
    points = np.vstack([first[:-1], second[:-1]])
    return points if len(points) >= 3 else ring[[0, len(ring) // 3, 2 * len(ring) // 3]]


def _simplify(line: np.ndarray, tolerance: float) -> np.ndarray:
    """Ramer-Douglas-Peucker on an open polyline (first and last points kept)."""
    keep = np.zeros(len(line), dtype=bool)
    keep[[0, -1]] = True
    stack = [(0, len(line) - 1)]
    while stack:
        start, end = stack.pop()
        if end - start < 2:
            continue
        a, b = line[start], line[end]
        inner = line[start + 1 : end]
        span = b - a
        length = float(np.hypot(*span))
        if length == 0.0:
            gaps = np.hypot(*(inner - a).T)
        else:
            gaps = np.abs(span[0] * (inner[:, 1] - a[1]) - span[1] * (inner[:, 0] - a[0]))
            gaps = gaps / length
        k = int(np.argmax(gaps))
        if gaps[k] > tolerance:
            middle = start + 1 + k
            keep[middle] = True
            stack += [(start, middle), (middle, end)]
    return line[keep]


def _corner(point: Point) -> Point:
    """A point in this module's coordinates from the metrology's (pixel centres on
    integers): half a pixel right and down."""
    return (float(point[0]) + 0.5, float(point[1]) + 0.5)


def _points(points: Sequence[Point], digits: int = 1) -> list[list[float]]:
    return [[round(float(x), digits), round(float(y), digits)] for x, y in points]
