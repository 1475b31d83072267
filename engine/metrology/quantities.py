"""Metrology of colour-segmented DED bead cross-sections: areas, heights, fractions, pores.

Every quantity is defined in docs/metrology.md (the names are part of the JSON contract). The
pipeline is: nearest-legend-colour classification -> clean-up of what JPEG, blur and noise
leave behind -> geometry relative to the baseline through the toes of the fusion line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from PIL import Image
from scipy import ndimage

from kb.errors import ImageError, WorkspaceError

# name -> unit; the order is the order of tables and reports.
QUANTITIES: dict[str, str] = {
    "bead_area_mm2": "mm2",
    "reinforcement_area_mm2": "mm2",
    "reinforcement_height_mm": "mm",
    "dilution_fraction": "fraction",
    "haz_depth_mm": "mm",
    "porosity_fraction": "fraction",
    "max_pore_diameter_um": "um",
    "pore_count": "count",
    "carbide_fraction": "fraction",
    "carbide_cv": "ratio",
    "carbide_cv_fine": "ratio",
    "carbide_cv_ratio": "ratio",
    "carbide_gradient": "ratio",
    "carbide_clustering": "ratio",
}

PHASES = ("background", "fusion_line", "haz", "bead", "carbide", "porosity")
BACKGROUND, FUSION_LINE, HAZ, BEAD, CARBIDE, POROSITY = range(len(PHASES))
UNCLASSIFIED = 255

# A pixel farther than this (RGB Euclidean) from every legend colour is "far"; legend
# colours sit at least ~127 apart, so honest JPEG and sensor noise stays well inside it.
FAR_DISTANCE = 70.0
# Blur, anti-aliasing and JPEG mix two neighbouring phases: a far pixel within this distance
# of the straight line between two legend colours is such a blend, not a foreign colour.
BLEND_DISTANCE = 30.0
# A map is mostly flat legend colour: refuse an image when more than this share of its
# non-background pixels is far from every legend colour, blends with the background colour
# included (a dark photograph passes for blends of black and pink; generated maps blurred by
# 4 px stay under 0.6). Blends of two phases that are not the background do not count: a
# bead of fine carbides, blurred, is one pink-green blend from edge to edge.
MAX_FAR_SHARE = 0.70
# Refuse an image when more than this share of its non-background pixels is neither near a
# legend colour nor a blend of two. Generated maps with noise 25, JPEG 50 or blur up to 3 px
# stay under 0.10 (blur 4: 0.13); photographs, grey copies and channel-permuted or
# hue-rotated copies of the example maps lie at 0.25 or above.
MAX_OFF_LEGEND_SHARE = 0.15
# A pixel whose channels differ by at most this much is grey; an image grey in more than
# MAX_GREY_SHARE of its non-background pixels is not drawn in a legend with colours.
GREY_SPREAD = 12
MAX_GREY_SHARE = 0.95
HAZ_SPECK_PX = 20
FUSION_SPECK_PX = 5
CARBIDE_SPREAD = (
    "carbide_cv", "carbide_cv_fine", "carbide_cv_ratio", "carbide_gradient", "carbide_clustering"
)
# Quantities measured from the fusion line, and what is said of them when the map has none.
FUSION_MEASURED = (
    "reinforcement_area_mm2", "reinforcement_height_mm", "dilution_fraction", "haz_depth_mm"
)
STAND_IN_FUSION = "the map draws no fusion line, so the bead's lower outline stands in for it"
QUADRAT_MM = 0.25
FINE_QUADRAT_MM = 0.125
# The clustering index looks at pairs of carbide pixels this far apart: from two particle
# diameters (beyond one particle, so shape and size drop out) to that plus CLUSTER_RING_MM.
CLUSTER_RING_MM = 0.15
QUADRAT_MIN_INSIDE = 0.75
# The carbide fraction of an image counts blends, not just nearest colours: a pixel farther
# than this from the bead, carbide and pore colours is split between them by its colour.
MIXTURE_RADIUS = 45.0
# Within this many pixels of the bead's outline a blend is the edge against HAZ or
# background, so there every pixel keeps its label.
EDGE_BAND_PX = 2

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
Line = tuple[tuple[float, float], tuple[float, float]]  # two points (x, y)


class NotASegmentationMap(ImageError):
    """The image's colours are not the legend's: a photo or a map with another legend."""


@dataclass(frozen=True)
class Measurement:
    """Quantities of one phase map, for every quantity it lacks why, and for every quantity
    measured on a stand-in (a line the map does not draw) what stood in."""

    um_per_px: float
    quantities: dict[str, float] = field(default_factory=dict)
    unmeasurable: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Quadrats:
    """A grid of square quadrats anchored at the bead's bounding box: per quadrat, the bead
    and carbide pixels it holds. Quadrat (i, j) covers rows top + i * side onwards and
    columns left + j * side onwards."""

    top: int
    left: int
    side: int  # pixels
    inside: np.ndarray  # bead pixels per quadrat, shape (rows, columns)
    carbide: np.ndarray  # carbide pixels per quadrat

    @property
    def usable(self) -> np.ndarray:
        """Quadrats at least QUADRAT_MIN_INSIDE inside the bead: the ones the CV counts."""
        return self.inside >= QUADRAT_MIN_INSIDE * self.side * self.side

    def fractions(self) -> np.ndarray:
        """Carbide fraction of each usable quadrat; NaN for the others."""
        share = self.carbide / np.maximum(self.inside, 1)
        return np.where(self.usable, share, np.nan)


@dataclass(frozen=True)
class Colours:
    """The pixels a label map was classified from, and the legend they were classified in:
    what measure_regions estimates area fractions from."""

    rgb: np.ndarray  # (height, width, 3) uint8
    legend: Mapping[str, tuple[int, int, int]]


@dataclass(frozen=True)
class Regions:
    """What the quantities were measured on, kept so that they can be drawn over the map
    (engine/metrology/overlay.py). Points are (x, y) with pixel (row r, column c) centred on
    (c, r), as everywhere in this module."""

    bead: np.ndarray  # the bead region
    fusion: np.ndarray  # the fusion line without specks, or the bead outline standing in
    baseline: Line | None  # the original substrate surface; None without a fusion line
    haz_deepest: tuple[int, int] | None  # (row, column) of the HAZ pixel deepest below it
    pores: np.ndarray  # pore labels, 1..pore_count (8-connected), 0 elsewhere
    pore_count: int
    quadrats: Quadrats | None  # the QUADRAT_MM grid of carbide_cv; None without carbides


def measure_image(
    image: Image.Image, legend: dict[str, tuple[int, int, int]], um_per_px: float
) -> Measurement:
    """Measure an RGB phase map drawn in the legend's colours."""
    labels, colours = read_map(image, legend)
    return measure_regions(labels, um_per_px, colours)[0]


def read_map(
    image: Image.Image, legend: dict[str, tuple[int, int, int]]
) -> tuple[np.ndarray, Colours]:
    """The image's labels (as classify_phases) and the colours they were read from, for
    measure_regions; the image is converted to RGB once."""
    colours = Colours(np.asarray(image.convert("RGB")), legend)
    return _classify_pixels(colours.rgb, legend), colours


def classify_phases(
    image: Image.Image, legend: dict[str, tuple[int, int, int]]
) -> np.ndarray:
    """Label every pixel with its nearest legend phase (indices into PHASES).

    Raises NotASegmentationMap when the image is not drawn in the legend's colours.
    """
    return _classify_pixels(np.asarray(image.convert("RGB")), legend)


def _classify_pixels(rgb: np.ndarray, legend: Mapping[str, tuple[int, int, int]]) -> np.ndarray:
    """classify_phases on an (height, width, 3) uint8 array."""
    missing = [name for name in PHASES if name not in legend]
    if missing:
        raise WorkspaceError(
            f"the legend in kb.toml lacks {', '.join(missing)}; metrology needs a colour "
            f"for each of {', '.join(PHASES)}"
        )
    colours = tuple(legend[name] for name in PHASES)
    table = _colour_table(colours)
    index = (
        (rgb[..., 0].astype(np.int32) >> _DROP) << (2 * _BITS)
        | (rgb[..., 1].astype(np.int32) >> _DROP) << _BITS
        | rgb[..., 2] >> _DROP
    )
    table = table.covering(index)
    check_phase_map(index, table, colours)
    return _clean(table.nearest[index])


def phase_cells(labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(len(PHASES), rows, cols): each phase's share of every cell of a grid laid over the
    label map (pixels left unclassified count for no phase)."""
    height, width = labels.shape
    row_edges = np.round(np.linspace(0, height, grid[0] + 1)).astype(int)
    col_edges = np.round(np.linspace(0, width, grid[1] + 1)).astype(int)
    areas = np.outer(np.diff(row_edges), np.diff(col_edges)).astype(np.float64)
    out = np.zeros((len(PHASES), *grid), dtype=np.float32)
    for phase in range(len(PHASES)):
        mask = (labels == phase).astype(np.float64)
        summed = np.add.reduceat(np.add.reduceat(mask, row_edges[:-1], axis=0), col_edges[:-1],
                                 axis=1)
        out[phase] = summed / areas
    return out


def check_phase_map(
    index: np.ndarray, table: _ColourTable, colours: tuple[tuple[int, int, int], ...]
) -> None:
    """NotASegmentationMap unless the picture is drawn in the legend's colours.

    Only the non-background pixels are judged, so neither a black frame around a photograph
    nor a map on a large black canvas sways the verdict. They must be legend colours or
    blends of two (what blur and JPEG leave at edges), and a grey picture is not a map in
    a legend that has colours.
    """
    content = table.content[index]
    n = int(content.sum())
    if n == 0:
        return  # an empty map: nothing drawn, nothing to measure, nothing foreign either
    far = table.far[index] & content
    far_share = float(np.count_nonzero(far & ~table.inner_blends[index])) / n
    foreign = far & ~table.blends[index]
    off_share = float(np.count_nonzero(foreign)) / n
    if off_share > MAX_OFF_LEGEND_SHARE or far_share > MAX_FAR_SHARE:
        what = (
            f"{off_share:.0%} of the non-background pixels are neither a legend colour nor a "
            "blend of two" if off_share > MAX_OFF_LEGEND_SHARE
            else f"{far_share:.0%} of the non-background pixels are far from every legend colour "
            "and no blend of two phases"
        )
        raise NotASegmentationMap(
            f"not a phase map: {what} (a photograph, a false-colour copy, or a map drawn "
            "with another legend; set [legend] in kb.toml to the colours of your segmentation)"
        )
    chromatic_legend = any(
        max(c) - min(c) > GREY_SPREAD for k, c in enumerate(colours) if k != BACKGROUND
    )
    grey_share = float(np.count_nonzero(table.grey[index] & content)) / n
    if chromatic_legend and grey_share > MAX_GREY_SHARE:
        raise NotASegmentationMap(
            f"not a phase map: the image is grey ({grey_share:.0%} of the non-background "
            "pixels have no colour) but the legend's phases are coloured; measure the "
            "colour-segmented map, not a grey copy or the micrograph itself"
        )


_BITS = 6  # colours are looked up at 6 bits per channel: off by at most 3 levels
_DROP = 8 - _BITS


class _ColourTable:
    """Per quantised colour: nearest phase, and the flags the phase-map check counts.

    Filled in as colours are met: one image pays only for the few thousand colours it holds
    (a command judging one micrograph starts at once), and a batch soon for none.
    """

    def __init__(self, colours: tuple[tuple[int, int, int], ...]) -> None:
        size = 2 ** (3 * _BITS)
        self.palette = np.array(colours, dtype=np.float64)
        self.nearest = np.zeros(size, dtype=np.uint8)  # index into PHASES
        # not background: far from, or nearest to a non-background colour
        self.content = np.zeros(size, dtype=bool)
        self.far = np.zeros(size, dtype=bool)  # farther than FAR_DISTANCE from every colour
        self.blends = np.zeros(size, dtype=bool)  # within BLEND_DISTANCE of a two-colour blend
        self.inner_blends = np.zeros(size, dtype=bool)  # ... of two non-background colours
        self.grey = np.zeros(size, dtype=bool)  # all channels within GREY_SPREAD of each other
        self._known = np.zeros(size, dtype=bool)

    def covering(self, index: np.ndarray) -> _ColourTable:
        """This table with every colour code in `index` filled in."""
        present = np.bincount(index.ravel(), minlength=self._known.size).astype(bool)
        codes = np.flatnonzero(present & ~self._known)
        if codes.size:
            self._fill(codes)
        return self

    def _fill(self, codes: np.ndarray) -> None:
        """Judge the centre colour of each code against the legend (idempotent)."""
        mask = 2**_BITS - 1
        channels = [(codes >> (2 * _BITS)) & mask, (codes >> _BITS) & mask, codes & mask]
        grid = np.stack(channels, axis=1) * 2.0**_DROP + (2**_DROP - 1) / 2.0
        palette = self.palette
        # Squared distances compared with squared limits: the same decisions, no square roots.
        squared = _squared_norm(grid[:, None, :] - palette[None, :, :])
        nearest = squared.argmin(axis=1).astype(np.uint8)
        far = squared.min(axis=1) > FAR_DISTANCE**2
        blends = np.zeros(len(grid), dtype=bool)
        inner_blends = np.zeros(len(grid), dtype=bool)
        for i in range(len(palette)):
            for j in range(i + 1, len(palette)):
                start, step = palette[i], palette[j] - palette[i]
                offset = grid - start
                t = np.clip(offset @ step / (float(step @ step) or 1.0), 0.0, 1.0)
                offset -= t[:, None] * step
                near = _squared_norm(offset) <= BLEND_DISTANCE**2
                blends |= near
                if BACKGROUND not in (i, j):
                    inner_blends |= near
        self.nearest[codes] = nearest
        self.far[codes] = far
        self.content[codes] = far | (nearest != BACKGROUND)
        self.blends[codes] = blends
        self.inner_blends[codes] = inner_blends
        self.grey[codes] = (grid.max(axis=1) - grid.min(axis=1)) <= GREY_SPREAD
        self._known[codes] = True


@cache
def _colour_table(colours: tuple[tuple[int, int, int], ...]) -> _ColourTable:
    """The lookup table of a legend, over every colour at 6 bits per channel.

    A lookup is some ten times faster than measuring six distances per pixel, which is what
    keeps `kb measure` above 25 images a second on two cores.
    """
    return _ColourTable(colours)


def _squared_norm(vectors: np.ndarray) -> np.ndarray:
    """Squared length along the last axis."""
    return np.einsum("...c,...c->...", vectors, vectors)


def _clean(labels: np.ndarray) -> np.ndarray:
    """Drop porosity that is not enclosed by the bead.

    Blur and JPEG turn the edge between HAZ blue and black, or red and blue, into dark blue:
    the porosity colour. A real pore sits inside the bead, so keep only dark-blue components
    whose surroundings are mostly bead or carbide.
    """
    box = _bounding_box(labels == POROSITY, pad=1)
    if box is None:
        return labels
    window = labels[box]
    pores, count = ndimage.label(window == POROSITY, structure=EIGHT_CONNECTED)
    ring = ndimage.grey_dilation(pores, footprint=EIGHT_CONNECTED)
    ring[pores > 0] = 0
    in_bead = np.isin(window, (BEAD, CARBIDE))
    total = np.bincount(ring.ravel(), minlength=count + 1)
    enclosed = np.bincount(ring.ravel(), weights=in_bead.ravel(), minlength=count + 1)
    keep = np.zeros(count + 1, dtype=bool)
    keep[1:] = enclosed[1:] > 0.5 * np.maximum(total[1:], 1)
    cleaned = labels.copy()
    cleaned[box][(pores > 0) & ~keep[pores]] = UNCLASSIFIED
    return cleaned


def _bounding_box(mask: np.ndarray, pad: int = 0) -> tuple[slice, slice] | None:
    """The smallest window holding every True pixel of mask, widened by pad; None if empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return (
        slice(max(int(rows.min()) - pad, 0), int(rows.max()) + pad + 1),
        slice(max(int(cols.min()) - pad, 0), int(cols.max()) + pad + 1),
    )


def measure_labels(labels: np.ndarray, um_per_px: float) -> Measurement:
    """All quantities from a label map; the generator uses this on its exact maps for truth."""
    return measure_regions(labels, um_per_px)[0]


def measure_regions(
    labels: np.ndarray, um_per_px: float, colours: Colours | None = None
) -> tuple[Measurement, Regions]:
    """All quantities from a label map, and the regions and lines they were measured on.

    With the colours the map was classified from, the carbide fraction counts blended pixels
    by their mixture (mixed_carbide_fraction); without, every pixel is its label.
    """
    if um_per_px <= 0:
        raise ValueError("um_per_px must be positive")
    values: dict[str, float] = {}
    missing: dict[str, str] = {}
    mm = um_per_px / 1000.0
    bead = _bead_region(labels)
    fusion = _without_specks(labels == FUSION_LINE, FUSION_SPECK_PX)
    bead_px = int(bead.sum())
    stand_in = False
    if bead_px and _toes(fusion) is None:
        # A thin fusion line may not survive a small JPEG: where the bead sits on heat-
        # affected substrate, its lower outline is where the line was.
        outline = _lower_outline(bead)
        sits_on = np.isin(labels[outline], (FUSION_LINE, HAZ, UNCLASSIFIED))
        if _toes(outline) is not None and sits_on.mean() >= 0.5:
            fusion, stand_in = outline, True
    values["bead_area_mm2"] = bead_px * mm * mm

    haz = _without_specks(labels == HAZ, HAZ_SPECK_PX)
    surface = _substrate_surface(bead, fusion, haz, labels == UNCLASSIFIED) if bead_px else None
    if bead_px == 0:
        # Nothing was deposited: there is no reinforcement, and nothing to take fractions of.
        values["reinforcement_area_mm2"] = 0.0
        values["reinforcement_height_mm"] = 0.0
        for name in ("dilution_fraction", "porosity_fraction", "max_pore_diameter_um",
                     "pore_count", "carbide_fraction", *CARBIDE_SPREAD):
            missing[name] = "no bead in the image"
    elif surface is None:
        reason = "no fusion line, so no toes and no baseline to measure from"
        for name in ("reinforcement_area_mm2", "reinforcement_height_mm", "dilution_fraction"):
            missing[name] = reason
    else:
        height = _height_above_baseline(bead, surface)
        # Each pixel counts with the share of its area above the line, so the baseline's
        # sub-pixel position matters and a line through pixel centres splits them in half.
        above = float(np.clip(height + 0.5, 0.0, 1.0).sum())
        values["reinforcement_area_mm2"] = above * mm * mm
        values["reinforcement_height_mm"] = max(float(height.max()) + 0.5, 0.0) * mm
        values["dilution_fraction"] = (bead_px - above) / bead_px

    deepest = None
    if fusion.any():
        if haz.any():
            depth, deepest = _farthest_from(fusion, haz)
            values["haz_depth_mm"] = depth * mm
        else:
            values["haz_depth_mm"] = 0.0
    else:
        missing["haz_depth_mm"] = "no fusion line to measure the heat-affected zone from"

    pores, pore_count, quadrats = np.zeros(labels.shape, dtype=np.int32), 0, None
    if bead_px:
        pores, pore_count = ndimage.label(_pores(labels, bead), structure=EIGHT_CONNECTED)
        values.update(_porosity(pores, pore_count, bead, um_per_px))
        quadrats = _carbides(labels, bead, um_per_px, values, missing)
        if colours is not None:
            values["carbide_fraction"] = mixed_carbide_fraction(colours, labels, bead)
    regions = Regions(bead, fusion, surface, deepest, pores, pore_count, quadrats)
    notes = {name: STAND_IN_FUSION for name in FUSION_MEASURED if stand_in and name in values}
    return Measurement(um_per_px, values, missing, notes), regions


def _bead_region(labels: np.ndarray) -> np.ndarray:
    """The deposited bead: the largest connected body of bead, carbide and pore pixels,
    with its holes filled (a hole in the bead is a pore whatever colour JPEG left it).
    """
    material = np.isin(labels, (BEAD, CARBIDE, POROSITY))
    parts, count = ndimage.label(material, structure=EIGHT_CONNECTED)
    if count == 0:
        return material
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    largest = int(sizes.argmax())
    box = ndimage.find_objects(parts, max_label=largest)[largest - 1]
    region = np.zeros_like(material)
    region[box] = ndimage.binary_fill_holes(parts[box] == largest)
    return region


def mixed_carbide_fraction(colours: Colours, labels: np.ndarray, bead: np.ndarray) -> float:
    """The carbide share of the bead's area, counting blends by their mixture.

    JPEG chroma, blur and anti-aliasing keep a region's mean colour but not its pixels:
    particles a few pixels across come back as pink-green blends that nearest-colour labels
    split unevenly. A bead-region pixel within MIXTURE_RADIUS of the bead, carbide or pore
    colour is that phase; one farther away is split between the three by least squares
    (shares >= 0, summing to 1), so near-pure pixels (noise clipped at 0 and 255) add no
    share. The outermost EDGE_BAND_PX pixels keep their labels: there a blend is the outline
    against HAZ or background.
    """
    bead_px = float(bead.sum())
    box = _bounding_box(bead)
    if box is None:
        return 0.0
    inside, window = bead[box], labels[box]
    carbide = (window == CARBIDE).astype(np.float64)
    ends = np.array([colours.legend[name] for name in ("bead", "carbide", "porosity")],
                    dtype=np.float64)
    pixels = colours.rgb[box].astype(np.float64)
    near = (_squared_norm(pixels[..., None, :] - ends) <= MIXTURE_RADIUS**2).any(axis=-1)
    interior = ndimage.binary_erosion(inside, iterations=EDGE_BAND_PX)
    blended = interior & np.isin(window, (BEAD, CARBIDE, POROSITY)) & ~near
    if blended.any():
        carbide[blended] = _unmix(pixels[blended], ends)[:, 0]
    return float(carbide[inside].sum()) / bead_px


def _unmix(pixels: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """(n, 2) shares of ends[1] and ends[2] in each pixel, the rest ends[0]: least squares
    on the two mixing directions, clipped to the triangle of the three colours."""
    directions = np.stack([ends[1] - ends[0], ends[2] - ends[0]], axis=1)
    shares = np.clip((pixels - ends[0]) @ np.linalg.pinv(directions).T, 0.0, 1.0)
    total = shares.sum(axis=1)
    over = total > 1.0
    shares[over] /= total[over, None]
    return shares


def _lower_outline(bead: np.ndarray) -> np.ndarray:
    """The pixel under the lowest bead pixel of every bead column: where the fusion line
    lies when the map draws one."""
    outline = np.zeros_like(bead)
    columns = np.nonzero(bead.any(axis=0))[0]
    lowest = bead.shape[0] - 1 - np.argmax(bead[::-1, columns], axis=0)
    below = lowest + 1 < bead.shape[0]
    outline[lowest[below] + 1, columns[below]] = True
    return outline


def _pores(labels: np.ndarray, bead: np.ndarray) -> np.ndarray:
    """Pore pixels: everything in the bead that is neither bead metal nor carbide.

    Dark blue differs from black mostly in chroma, which JPEG keeps least of, so a pore may
    come back nearly black; being enclosed by the bead is what makes it a pore.
    """
    return bead & ~np.isin(labels, (BEAD, CARBIDE))


def _without_specks(mask: np.ndarray, min_px: int) -> np.ndarray:
    parts, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return mask
    sizes = np.bincount(parts.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[parts]


def _farthest_from(line: np.ndarray, region: np.ndarray) -> tuple[float, tuple[int, int]]:
    """Largest distance in pixels from line to any pixel of region, and that pixel (row,
    column).

    The distance transform runs on the bounding box of both only: every line pixel is in
    it, so the distances are exact, and the box is a fraction of the picture.
    """
    box = _bounding_box(line | region)
    assert box is not None
    distance = np.where(region[box], ndimage.distance_transform_edt(~line[box]), -1.0)
    row, column = np.unravel_index(int(distance.argmax()), distance.shape)
    return float(distance[row, column]), (int(row) + box[0].start, int(column) + box[1].start)


TIP_COLUMNS = 6  # outermost bead columns whose outlines locate a toe the fusion line misses


def _substrate_surface(
    bead: np.ndarray, fusion: np.ndarray, haz: np.ndarray, unsure: np.ndarray
) -> Line | None:
    """The original substrate surface: a straight line (two points, x then y) or None when
    there is no fusion line.

    Outside the bead the substrate is untouched, so the top edge of the substrate-side
    phases (fusion line and HAZ) in the columns left and right of the bead is that surface.
    A line is fitted through those edges on both sides (so it may tilt), each side weighing
    the same, and points more than a pixel and a half off the line are dropped and the line
    refitted (a HAZ that curves down, a cut frame). Only edges level with the toe on their
    side count; where a side has none, the end of the fusion line (its toe) stands in.

    Blur and JPEG turn the edge between HAZ blue and black into a band of dark blue, which
    the clean-up leaves unclassified (`unsure`): the edge lies in the middle of that band, so
    each column's edge is halfway between the top of the substrate phases and the top of
    the unsure pixels touching them.
    """
    toes = _toes(fusion)
    if toes is None:
        return None
    columns = np.nonzero(bead.any(axis=0))[0]
    first, last = int(columns.min()), int(columns.max())
    # Where the fusion line does not reach past the bead (it ends under the bead's last
    # column, or a thin line broke up on a steep flank and lost its ends as specks), its
    # end lies below the surface: the bead's own outermost column, where cap and
    # penetration meet, is the toe.
    ends = []
    for toe, column, short in ((toes[0], first, toes[0][0] >= first - 1),
                               (toes[1], last, toes[1][0] <= last + 1)):
        ends.append(_bead_tip(bead, column, inward=1 if column == first else -1)
                    if short else toe)
    toes = (ends[0], ends[1])
    substrate = fusion | haz
    has = substrate.any(axis=0)
    top = np.argmax(substrate, axis=0).astype(np.float64)
    # Unsure pixels count when they reach down to the substrate without a gap of clean ones.
    ceiling = top.copy()
    rows = np.arange(substrate.shape[0])[:, None]
    for step in range(1, 4):
        above = (rows == (top - step)[None, :]) & unsure
        reaches = above.any(axis=0) & (ceiling == top - step + 1)
        ceiling[reaches] = top[reaches] - step
    top = (top + ceiling) / 2.0 - 0.5  # upper edge of the top pixel, halfway into the band
    xs = np.arange(substrate.shape[1], dtype=np.float64)
    sides = []
    for outside, toe in ((has & (xs < first), toes[0]), (has & (xs > last), toes[1])):
        # Only edges level with the toe (allowing for tilt) are the surface; a HAZ that
        # shows beside the bead only deep down is not.
        outside &= np.abs(top - toe[1]) <= 3.0 + 0.25 * np.abs(xs - toe[0])
        if np.count_nonzero(outside) >= 2:
            sides.append((xs[outside], top[outside]))
        else:
            sides.append((np.array([toe[0]]), np.array([toe[1]])))
    x = np.concatenate([s[0] for s in sides])
    y = np.concatenate([s[1] for s in sides])
    weight = np.concatenate([np.full(s[0].size, 1.0 / s[0].size) for s in sides])
    keep = np.ones(x.size, dtype=bool)
    for _ in range(3):
        slope, offset = _weighted_line(x[keep], y[keep], weight[keep])
        close = np.abs(y - (offset + slope * x)) <= 1.5
        # A side is never dropped whole: its toe would stand in for it anyway.
        if not (close & (x < first)).any() or not (close & (x > last)).any():
            break
        if np.array_equal(close, keep):
            break
        keep = close
    slope, offset = _weighted_line(x[keep], y[keep], weight[keep])
    left, right = float(x.min()), float(x.max())
    return (left, offset + slope * left), (right, offset + slope * right)


def _bead_tip(bead: np.ndarray, column: int, inward: int) -> tuple[float, float]:
    """Where the bead's upper and lower outlines meet at its outermost column: lines fitted
    to both over the last few columns, intersected; the middle of that column's pixels when
    they do not meet nearby."""
    rows = np.nonzero(bead[:, column])[0]
    fallback = (float(column), float(rows.mean()))
    xs, tops, bottoms = [], [], []
    for k in range(TIP_COLUMNS):
        x = column + inward * k
        if not 0 <= x < bead.shape[1]:
            break
        rows = np.nonzero(bead[:, x])[0]
        if rows.size == 0:
            break
        xs.append(float(x))
        tops.append(float(rows.min()) - 0.5)
        bottoms.append(float(rows.max()) + 0.5)
    if len(xs) < 3:
        return fallback
    x = np.array(xs)
    top_slope, top_offset = np.polyfit(x, tops, 1)
    bottom_slope, bottom_offset = np.polyfit(x, bottoms, 1)
    if abs(top_slope - bottom_slope) < 1e-6:
        return fallback
    meet = (bottom_offset - top_offset) / (top_slope - bottom_slope)
    if abs(meet - column) > TIP_COLUMNS or (meet - column) * inward > 0.5:
        return fallback  # they meet inside the bead or far outside it: no clean tip
    return float(meet), float(top_offset + top_slope * meet)


def _weighted_line(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Slope and offset of the weighted least-squares line y = offset + slope * x."""
    mx, my = float(np.average(x, weights=w)), float(np.average(y, weights=w))
    spread = float(np.average((x - mx) ** 2, weights=w))
    slope = float(np.average((x - mx) * (y - my), weights=w)) / spread if spread > 0 else 0.0
    return slope, my - slope * mx


def _toes(fusion: np.ndarray) -> Line | None:
    """The two ends of the fusion line (x, y): its leftmost and rightmost columns, at the
    upper edge of the line there (the line lies under the surface it meets at the toe)."""
    ys, xs = np.nonzero(fusion)
    if xs.size == 0 or xs.min() == xs.max():
        return None
    left, right = xs.min(), xs.max()
    return (
        (float(left), float(ys[xs == left].min()) - 0.5),
        (float(right), float(ys[xs == right].min()) - 0.5),
    )


def _height_above_baseline(mask: np.ndarray, line: Line) -> np.ndarray:
    """Signed distance in pixels above the line, for each pixel of mask."""
    (x1, y1), (x2, y2) = line
    length = float(np.hypot(x2 - x1, y2 - y1))
    ux, uy = (x2 - x1) / length, (y2 - y1) / length
    ys, xs = np.nonzero(mask)
    # Image rows grow downwards, so "up" is the normal (uy, -ux) of the toe-to-toe direction.
    return (xs - x1) * uy - (ys - y1) * ux


def _porosity(
    pores: np.ndarray, count: int, bead: np.ndarray, um_per_px: float
) -> dict[str, float]:
    sizes = np.bincount(pores.ravel())[1:] if count else np.zeros(0, dtype=np.int64)
    largest = float(sizes.max()) if sizes.size else 0.0
    return {
        "porosity_fraction": float(sizes.sum()) / float(bead.sum()),
        "max_pore_diameter_um": float(np.sqrt(4.0 * largest / np.pi)) * um_per_px,
        "pore_count": float(count),
    }


def _carbides(
    labels: np.ndarray,
    bead: np.ndarray,
    um_per_px: float,
    values: dict[str, float],
    missing: dict[str, str],
) -> Quadrats | None:
    """The carbide quantities into values (or their reasons into missing), and the
    QUADRAT_MM grid carbide_cv was taken over."""
    carbide = bead & (labels == CARBIDE)
    fraction = float(carbide.sum()) / float(bead.sum())
    values["carbide_fraction"] = fraction
    if fraction == 0.0:
        for name in CARBIDE_SPREAD:
            missing[name] = "no carbides in the bead"
        return None
    grids = {side: _quadrats(bead, carbide, um_per_px, side)
             for side in (QUADRAT_MM, FINE_QUADRAT_MM)}
    for name, side in (("carbide_cv", QUADRAT_MM), ("carbide_cv_fine", FINE_QUADRAT_MM)):
        cv = _quadrat_cv(grids[side])
        if cv is None:
            missing[name] = (
                f"fewer than two {side} mm quadrats fit at least "
                f"{QUADRAT_MIN_INSIDE:.0%} inside the bead"
            )
        else:
            values[name] = cv
    if "carbide_cv" in values and values.get("carbide_cv_fine", 0.0) > 0.0:
        # Spread at random, the variance falls with the quadrat's area, so doubling the side
        # halves the CV (ratio ~0.5) whatever the particles' size and share; a share that
        # varies over larger distances (clusters, settling) keeps the ratio near 1.
        values["carbide_cv_ratio"] = values["carbide_cv"] / values["carbide_cv_fine"]
    else:
        missing["carbide_cv_ratio"] = "needs both coefficients of variation"
    gradient = _thirds_gradient(bead, carbide, fraction)
    if gradient is None:
        missing["carbide_gradient"] = "the bead is less than three pixels high"
    else:
        values["carbide_gradient"] = gradient
    clustering = _clustering(bead, carbide, um_per_px)
    if clustering is None:
        missing["carbide_clustering"] = (
            "the bead is too small for carbide pairs two particle diameters and "
            f"{CLUSTER_RING_MM} mm more apart"
        )
    else:
        values["carbide_clustering"] = clustering
    return grids[QUADRAT_MM]


def _clustering(bead: np.ndarray, carbide: np.ndarray, um_per_px: float) -> float | None:
    """Pair-correlation excess of the carbide area: g - 1, where g is how much more often two
    bead pixels a given distance apart are both carbide than if the carbide were spread at
    random (g = 1), over distances from two particle diameters to that plus CLUSTER_RING_MM.

    A Ripley-type statistic on the carbide area rather than on particle centres, because
    touching particles merge in a map. Pairs are counted against the pairs of bead pixels at
    the same offset, so the bead's outline does not bias it. Clusters and carbides sunk to
    one side both put more carbide pairs close together than chance: g - 1 > 0.
    """
    parts, count = ndimage.label(carbide, structure=EIGHT_CONNECTED)
    sizes = np.bincount(parts.ravel())[1:]
    diameter = float(np.sqrt(4.0 * np.median(sizes) / np.pi))
    inner = 2.0 * diameter
    outer = inner + CLUSTER_RING_MM * 1000.0 / um_per_px
    box = _bounding_box(bead)
    if box is None:
        return None
    if outer >= min(box[0].stop - box[0].start, box[1].stop - box[1].start):
        return None  # the ring does not fit in the bead (a tiny bead, or tiny pixels)
    b = bead[box].astype(np.float64)
    c = carbide[box].astype(np.float64)
    pad = int(np.ceil(outer)) + 1
    shape = (b.shape[0] + pad, b.shape[1] + pad)
    pairs_bead = np.fft.irfft2(np.abs(np.fft.rfft2(b, shape)) ** 2, shape)
    pairs_carbide = np.fft.irfft2(np.abs(np.fft.rfft2(c, shape)) ** 2, shape)
    dy = np.fft.fftfreq(shape[0]) * shape[0]
    dx = np.fft.fftfreq(shape[1]) * shape[1]
    lag = np.hypot(dy[:, None], dx[None, :])
    ring = (lag >= inner) & (lag <= outer) & (pairs_bead > 0.5)
    total = float(pairs_bead[ring].sum())
    if total < float(b.sum()):  # fewer pairs than one per bead pixel: nothing to judge
        return None
    share = float(c.sum()) / float(b.sum())
    return float(pairs_carbide[ring].sum()) / total / share**2 - 1.0


def _quadrats(
    bead: np.ndarray, carbide: np.ndarray, um_per_px: float, side_mm: float
) -> Quadrats | None:
    """Square quadrats of side_mm over the bead; None when not one fits.

    The grid starts at the bead's bounding box so the result does not depend on where the
    bead sits in the picture.
    """
    side = max(int(round(side_mm * 1000.0 / um_per_px)), 1)
    rows, cols = np.nonzero(bead)
    top, left = int(rows.min()), int(cols.min())
    n_rows = (int(rows.max()) - top + 1) // side
    n_cols = (int(cols.max()) - left + 1) // side
    if n_rows == 0 or n_cols == 0:
        return None

    def per_quadrat(mask: np.ndarray) -> np.ndarray:
        window = mask[top : top + n_rows * side, left : left + n_cols * side]
        return window.reshape(n_rows, side, n_cols, side).sum(axis=(1, 3), dtype=np.int64)

    return Quadrats(top, left, side, per_quadrat(bead), per_quadrat(carbide))


def _quadrat_cv(grid: Quadrats | None) -> float | None:
    """Coefficient of variation (population) of carbide fraction over the usable quadrats."""
    if grid is None:
        return None
    usable = grid.usable
    if usable.sum() < 2:
        return None
    fractions = grid.carbide[usable] / grid.inside[usable]
    mean = float(fractions.mean())
    return float(fractions.std() / mean) if mean > 0 else 0.0


def _thirds_gradient(bead: np.ndarray, carbide: np.ndarray, overall: float) -> float | None:
    """(bottom-third fraction - top-third fraction) / overall, thirds of the bead's height."""
    rows = np.nonzero(bead.any(axis=1))[0]
    top, bottom = int(rows.min()), int(rows.max()) + 1
    if bottom - top < 3:
        return None
    edges = np.linspace(top, bottom, 4)
    row_index = np.arange(bead.shape[0])

    def band_fraction(lo: float, hi: float) -> float:
        band = (row_index >= lo) & (row_index < hi)
        inside = int(bead[band].sum())
        return float(carbide[band].sum()) / inside if inside else 0.0

    top_third = band_fraction(edges[0], edges[1])
    bottom_third = band_fraction(edges[2], edges[3])
    return (bottom_third - top_third) / overall
