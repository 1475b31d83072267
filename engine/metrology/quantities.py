"""Metrology of colour-segmented DED bead cross-sections: areas, heights, fractions, pores.

Every quantity is defined in docs/metrology.md (the names are part of the JSON contract). The
pipeline is: nearest-legend-colour classification -> clean-up of what JPEG, blur and noise
leave behind -> geometry relative to the baseline through the toes of the fusion line.
"""

from __future__ import annotations

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
    "carbide_gradient": "ratio",
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
# non-background pixels is far from every legend colour, blends or not (a dark photograph
# passes for blends of black and pink; generated maps blurred by 4 px stay under 0.6).
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
QUADRAT_MM = 0.25
QUADRAT_MIN_INSIDE = 0.75

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class NotASegmentationMap(ImageError):
    """The image's colours are not the legend's: a photo or a map with another legend."""


@dataclass(frozen=True)
class Measurement:
    """Quantities of one phase map, and for every quantity it lacks, why."""

    um_per_px: float
    quantities: dict[str, float] = field(default_factory=dict)
    unmeasurable: dict[str, str] = field(default_factory=dict)


def measure_image(
    image: Image.Image, legend: dict[str, tuple[int, int, int]], um_per_px: float
) -> Measurement:
    """Measure an RGB phase map drawn in the legend's colours."""
    return measure_labels(classify_phases(image, legend), um_per_px)


def classify_phases(
    image: Image.Image, legend: dict[str, tuple[int, int, int]]
) -> np.ndarray:
    """Label every pixel with its nearest legend phase (indices into PHASES).

    Raises NotASegmentationMap when the image is not drawn in the legend's colours.
    """
    missing = [name for name in PHASES if name not in legend]
    if missing:
        raise WorkspaceError(
            f"the legend in kb.toml lacks {', '.join(missing)}; metrology needs a colour "
            f"for each of {', '.join(PHASES)}"
        )
    colours = tuple(legend[name] for name in PHASES)
    table = _colour_table(colours)
    rgb = np.asarray(image.convert("RGB"))
    index = (
        (rgb[..., 0].astype(np.int32) >> _DROP) << (2 * _BITS)
        | (rgb[..., 1].astype(np.int32) >> _DROP) << _BITS
        | rgb[..., 2] >> _DROP
    )
    check_phase_map(index, table, colours)
    return _clean(table.nearest[index])


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
    far_share = float(np.count_nonzero(far)) / n
    foreign = far & ~table.blends[index]
    off_share = float(np.count_nonzero(foreign)) / n
    if off_share > MAX_OFF_LEGEND_SHARE or far_share > MAX_FAR_SHARE:
        what = (
            f"{off_share:.0%} of the non-background pixels are neither a legend colour nor a "
            "blend of two" if off_share > MAX_OFF_LEGEND_SHARE
            else f"{far_share:.0%} of the non-background pixels are far from every legend colour"
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


@dataclass(frozen=True)
class _ColourTable:
    """Per quantised colour: nearest phase, and the flags the phase-map check counts."""

    nearest: np.ndarray  # index into PHASES
    content: np.ndarray  # not background: far from, or nearest to a non-background colour
    far: np.ndarray  # farther than FAR_DISTANCE from every legend colour
    blends: np.ndarray  # within BLEND_DISTANCE of the blend of some two legend colours
    grey: np.ndarray  # all three channels within GREY_SPREAD of each other


@cache
def _colour_table(colours: tuple[tuple[int, int, int], ...]) -> _ColourTable:
    """The lookup table of a legend, over every colour at 6 bits per channel.

    A lookup is some ten times faster than measuring six distances per pixel, which is what
    keeps `kb measure` above 25 images a second on two cores.
    """
    levels = np.arange(2**_BITS) * 2.0**_DROP + (2**_DROP - 1) / 2.0
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
    grid = np.stack([r.ravel(), g.ravel(), b.ravel()], axis=1)
    palette = np.array(colours, dtype=np.float64)
    distances = np.linalg.norm(grid[:, None, :] - palette[None, :, :], axis=2)
    nearest = distances.argmin(axis=1).astype(np.uint8)
    far = distances.min(axis=1) > FAR_DISTANCE
    blends = np.zeros(len(grid), dtype=bool)
    for i in range(len(palette)):
        for j in range(i + 1, len(palette)):
            start, step = palette[i], palette[j] - palette[i]
            t = np.clip((grid - start) @ step / (float(step @ step) or 1.0), 0.0, 1.0)
            gap = np.linalg.norm(grid - (start + t[:, None] * step), axis=1)
            blends |= gap <= BLEND_DISTANCE
    return _ColourTable(
        nearest=nearest,
        content=far | (nearest != BACKGROUND),
        far=far,
        blends=blends,
        grey=(grid.max(axis=1) - grid.min(axis=1)) <= GREY_SPREAD,
    )


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
    if um_per_px <= 0:
        raise ValueError("um_per_px must be positive")
    values: dict[str, float] = {}
    missing: dict[str, str] = {}
    mm = um_per_px / 1000.0
    bead = _bead_region(labels)
    fusion = _without_specks(labels == FUSION_LINE, FUSION_SPECK_PX)
    bead_px = int(bead.sum())
    values["bead_area_mm2"] = bead_px * mm * mm

    toes = _toes(fusion)
    if bead_px == 0:
        # Nothing was deposited: there is no reinforcement, and nothing to take fractions of.
        values["reinforcement_area_mm2"] = 0.0
        values["reinforcement_height_mm"] = 0.0
        for name in ("dilution_fraction", "porosity_fraction", "max_pore_diameter_um",
                     "pore_count", "carbide_fraction", "carbide_cv", "carbide_gradient"):
            missing[name] = "no bead in the image"
    elif toes is None:
        reason = "no fusion line, so no toes and no baseline to measure from"
        for name in ("reinforcement_area_mm2", "reinforcement_height_mm", "dilution_fraction"):
            missing[name] = reason
    else:
        bead_above = _height_above_baseline(bead, toes)
        above_px = int((bead_above > 0).sum())
        values["reinforcement_area_mm2"] = above_px * mm * mm
        values["reinforcement_height_mm"] = max(float(bead_above.max()), 0.0) * mm
        values["dilution_fraction"] = (bead_px - above_px) / bead_px

    if fusion.any():
        haz = _without_specks(labels == HAZ, HAZ_SPECK_PX)
        if haz.any():
            values["haz_depth_mm"] = _farthest_from(fusion, haz) * mm
        else:
            values["haz_depth_mm"] = 0.0
    else:
        missing["haz_depth_mm"] = "no fusion line to measure the heat-affected zone from"

    if bead_px:
        values.update(_porosity(labels, bead, um_per_px))
        values.update(_carbides(labels, bead, um_per_px, missing))
    return Measurement(um_per_px, values, missing)


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


def _farthest_from(line: np.ndarray, region: np.ndarray) -> float:
    """Largest distance in pixels from line to any pixel of region.

    The distance transform runs on the bounding box of both only: every line pixel is in
    it, so the distances are exact, and the box is a fraction of the picture.
    """
    box = _bounding_box(line | region)
    return float(ndimage.distance_transform_edt(~line[box])[region[box]].max())


def _toes(fusion: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The two ends of the fusion line: its leftmost and rightmost pixels (x, y)."""
    ys, xs = np.nonzero(fusion)
    if xs.size == 0 or xs.min() == xs.max():
        return None
    left, right = xs.min(), xs.max()
    return (
        (float(left), float(ys[xs == left].mean())),
        (float(right), float(ys[xs == right].mean())),
    )


def _height_above_baseline(
    mask: np.ndarray, toes: tuple[tuple[float, float], tuple[float, float]]
) -> np.ndarray:
    """Signed distance in pixels above the line through the toes, for each pixel of mask."""
    (x1, y1), (x2, y2) = toes
    length = float(np.hypot(x2 - x1, y2 - y1))
    ux, uy = (x2 - x1) / length, (y2 - y1) / length
    ys, xs = np.nonzero(mask)
    # Image rows grow downwards, so "up" is the normal (uy, -ux) of the toe-to-toe direction.
    return (xs - x1) * uy - (ys - y1) * ux


def _porosity(labels: np.ndarray, bead: np.ndarray, um_per_px: float) -> dict[str, float]:
    pores, count = ndimage.label(_pores(labels, bead), structure=EIGHT_CONNECTED)
    sizes = np.bincount(pores.ravel())[1:] if count else np.zeros(0, dtype=np.int64)
    largest = float(sizes.max()) if sizes.size else 0.0
    return {
        "porosity_fraction": float(sizes.sum()) / float(bead.sum()),
        "max_pore_diameter_um": float(np.sqrt(4.0 * largest / np.pi)) * um_per_px,
        "pore_count": float(count),
    }


def _carbides(
    labels: np.ndarray, bead: np.ndarray, um_per_px: float, missing: dict[str, str]
) -> dict[str, float]:
    carbide = bead & (labels == CARBIDE)
    fraction = float(carbide.sum()) / float(bead.sum())
    values = {"carbide_fraction": fraction}
    if fraction == 0.0:
        missing["carbide_cv"] = "no carbides in the bead"
        missing["carbide_gradient"] = "no carbides in the bead"
        return values
    cv = _quadrat_cv(bead, carbide, um_per_px)
    if cv is None:
        missing["carbide_cv"] = (
            f"fewer than two {QUADRAT_MM} mm quadrats fit at least "
            f"{QUADRAT_MIN_INSIDE:.0%} inside the bead"
        )
    else:
        values["carbide_cv"] = cv
    gradient = _thirds_gradient(bead, carbide, fraction)
    if gradient is None:
        missing["carbide_gradient"] = "the bead is less than three pixels high"
    else:
        values["carbide_gradient"] = gradient
    return values


def _quadrat_cv(bead: np.ndarray, carbide: np.ndarray, um_per_px: float) -> float | None:
    """Coefficient of variation (population) of carbide fraction over square quadrats.

    The grid starts at the bead's bounding box so the result does not depend on where the
    bead sits in the picture.
    """
    side = max(int(round(QUADRAT_MM * 1000.0 / um_per_px)), 1)
    rows, cols = np.nonzero(bead)
    top, left = rows.min(), cols.min()
    n_rows = (rows.max() - top + 1) // side
    n_cols = (cols.max() - left + 1) // side
    if n_rows == 0 or n_cols == 0:
        return None

    def per_quadrat(mask: np.ndarray) -> np.ndarray:
        window = mask[top : top + n_rows * side, left : left + n_cols * side]
        return window.reshape(n_rows, side, n_cols, side).sum(axis=(1, 3), dtype=np.int64)

    inside = per_quadrat(bead)
    usable = inside >= QUADRAT_MIN_INSIDE * side * side
    if usable.sum() < 2:
        return None
    fractions = per_quadrat(carbide)[usable] / inside[usable]
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
