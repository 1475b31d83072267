"""Synthetic colour-segmented cross-sections of one DED Ni-WC bead, with truth and labels.

Each micrograph is drawn from a BeadSpec (reinforcement height, dilution, HAZ depth, pores,
carbides and how they are spread). The truth is measured on the exact label map with the
same metrology as real images, so truth.csv and the labels never disagree with the
definitions; what the images add on top (noise, blur, JPEG) is what metrology must survive.
Labels come from a workspace's measurement rules (`criteria_of`), never from limits written
here: the rules/ folder is the one place a limit lives.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from engine.metrology.quantities import (
    BACKGROUND,
    BEAD,
    CARBIDE,
    FUSION_LINE,
    HAZ,
    PHASES,
    POROSITY,
    QUANTITIES,
    measure_labels,
)
from kb.config import DEFAULT_LEGEND, Workspace, check_pixel_size_option
from kb.rules import MeasurementRule, Ruleset, compile_rules
from kb.vocabulary import meets

WIDTH, HEIGHT = 640, 480
DISTRIBUTIONS = ("uniform", "segregated", "clustered")
CARBIDE_SHAPES = ("round", "elongated", "angular")
HAZ_SHAPES = ("offset", "elliptic", "band")

# What labels are drawn from: per assessment key, the measurement rules that must all hold.
Criteria = Mapping[str, Sequence[MeasurementRule]]


@dataclass(frozen=True)
class BeadSpec:
    """What to draw; lengths in millimetres and micrometres, shares as fractions."""

    width_mm: float = 3.2
    height_mm: float = 0.9
    dilution: float = 0.04
    haz_mm: float = 0.6
    tilt_deg: float = 0.0
    porosity: float = 0.005
    max_pore_um: float = 80.0
    carbide: float = 0.38
    carbide_size_um: float = 45.0
    distribution: str = "uniform"
    # Families of variation (engine/metrology/families.py); the defaults draw today's bead.
    asymmetry: float = 0.0  # right half-width grows, left shrinks, by this share of the half
    skew: float = 0.0  # deepest point of the penetration, as a share of the half-width
    top_power: float = 0.5  # exponent of the cap profile (0.5: half-ellipse)
    penetration_power: float = 0.5  # exponent of the penetration profile
    depth_mm: float | None = None  # penetration depth; None derives it from dilution
    fusion_px: float = 3.0  # fusion line thickness
    haz_shape: str = "offset"
    haz_reach: float = 1.0  # elliptic HAZ: how far past the toes, as a share of haz_mm
    carbide_shape: str = "round"
    segregation: float = 5.0  # how strongly segregated carbides sink
    clusters: int = 4
    cluster_mm: float = 0.18
    pore_ratio: tuple[float, float] = (0.35, 0.8)  # other pores, as shares of the largest


@dataclass(frozen=True)
class Frame:
    """The picture around the bead: size in pixels, and where the bead's centre and the
    substrate surface sit, as shares of the width and height."""

    width: int = WIDTH
    height: int = HEIGHT
    centre: float = 0.5
    surface: float = 0.45


@dataclass(frozen=True)
class Degradation:
    """What a real acquisition and export pipeline does to a clean phase map."""

    noise_sigma: float = 0.0  # Gaussian, in 8-bit grey levels per channel
    blur_radius: float = 0.0  # Gaussian blur, pixels
    jpeg_quality: int | None = None  # None writes PNG
    subsampling: str = "4:2:0"  # JPEG chroma subsampling; 4:2:0 is what most tools write
    antialias: int = 1  # draw at this many times the resolution, then average down


@dataclass(frozen=True)
class Variant:
    """One micrograph to draw: the bead, its frame, what acquisition did to it, and which
    variation each chosen family picked (e.g. "bead-shape:tilted"; "default" for none)."""

    spec: BeadSpec
    frame: Frame
    degradation: Degradation
    family: str


def render_bead(
    spec: BeadSpec, um_per_px: float = 10.0, seed: int = 0, frame: Frame = Frame()
) -> np.ndarray:
    """Draw the exact label map (indices into metrology.PHASES) for one bead."""
    rng = np.random.default_rng(seed)
    px_per_mm = 1000.0 / um_per_px
    ys, xs = np.indices((frame.height, frame.width), dtype=np.float64)
    cx, surface = frame.width * frame.centre, frame.height * frame.surface
    tilt = np.deg2rad(spec.tilt_deg)
    # Coordinates along (u) and below (v) the tilted substrate surface, in pixels.
    u = (xs - cx) * np.cos(tilt) + (ys - surface) * np.sin(tilt)
    v = -(xs - cx) * np.sin(tilt) + (ys - surface) * np.cos(tilt)

    half_width = spec.width_mm * px_per_mm / 2.0
    height = spec.height_mm * px_per_mm
    # Both caps are half-ellipses of the same width, so areas scale with their heights.
    if spec.depth_mm is None:
        depth = height * spec.dilution / (1.0 - spec.dilution)
    else:
        depth = spec.depth_mm * px_per_mm
    if spec.asymmetry == 0.0:
        across = np.clip(1.0 - (u / half_width) ** 2, 0.0, None)
        under_bead = np.abs(u) < half_width
        left_toe = right_toe = half_width
    else:
        left_toe = half_width * (1.0 - spec.asymmetry)
        right_toe = half_width * (1.0 + spec.asymmetry)
        across = np.clip(1.0 - (u / np.where(u < 0, left_toe, right_toe)) ** 2, 0.0, None)
        under_bead = (u > -left_toe) & (u < right_toe)
    top = np.sqrt(across) if spec.top_power == 0.5 else across**spec.top_power
    if spec.skew == 0.0 and spec.penetration_power == 0.5 and spec.asymmetry == 0.0:
        bottom = top
    else:
        # The deepest point moves to skew x the half-width; each side keeps its own toe.
        deepest = spec.skew * (right_toe if spec.skew > 0 else left_toe)
        t = np.where(u < deepest, (u - deepest) / (deepest + left_toe),
                     (u - deepest) / (right_toe - deepest))
        bottom = np.clip(1.0 - t**2, 0.0, None) ** spec.penetration_power
    labels = np.full((frame.height, frame.width), BACKGROUND, dtype=np.uint8)
    bead = under_bead & (v >= -height * top) & (v < depth * bottom)
    labels[bead] = BEAD

    line_px = spec.fusion_px
    if spec.asymmetry == 0.0:
        reach = np.abs(u) <= half_width + line_px
    else:
        reach = (u >= -left_toe - line_px) & (u <= right_toe + line_px)
    fusion = reach & (v >= depth * bottom) & (v < depth * bottom + line_px)
    labels[fusion & ~bead] = FUSION_LINE
    if spec.haz_mm > 0:
        _draw_haz(labels, spec, u, v, depth, (left_toe, right_toe), px_per_mm)

    _scatter_carbides(labels, bead, v, spec, px_per_mm, rng)
    _scatter_pores(labels, bead, spec, um_per_px, rng)
    return labels


def _draw_haz(
    labels: np.ndarray,
    spec: BeadSpec,
    u: np.ndarray,
    v: np.ndarray,
    depth: float,
    toes: tuple[float, float],
    px_per_mm: float,
) -> None:
    """The heat-affected zone in the substrate: a band of even depth around the fusion line
    (offset), an ellipse reaching past the toes (elliptic), or a band under the bead only."""
    haz_px = spec.haz_mm * px_per_mm
    if spec.haz_shape == "offset":
        from_fusion = ndimage.distance_transform_edt(labels != FUSION_LINE)
        haz = (from_fusion <= haz_px) & (v > 0) & (labels == BACKGROUND)
    elif spec.haz_shape == "elliptic":
        left, right = toes[0] + spec.haz_reach * haz_px, toes[1] + spec.haz_reach * haz_px
        across = np.where(u < 0, u / left, u / right)
        deep = depth + spec.fusion_px + haz_px
        haz = (across**2 + (v / deep) ** 2 <= 1.0) & (v > 0) & (labels == BACKGROUND)
    elif spec.haz_shape == "band":
        from_fusion = ndimage.distance_transform_edt(labels != FUSION_LINE)
        haz = ((from_fusion <= haz_px) & (v > 0) & (labels == BACKGROUND)
               & (u > -toes[0]) & (u < toes[1]))
    else:
        raise ValueError(f"unknown HAZ shape {spec.haz_shape!r}")
    labels[haz] = HAZ


def _scatter_carbides(
    labels: np.ndarray,
    bead: np.ndarray,
    v: np.ndarray,
    spec: BeadSpec,
    px_per_mm: float,
    rng: np.random.Generator,
) -> None:
    """Add round WC particles until the carbide share of the bead reaches the target."""
    rows, cols = np.nonzero(bead)
    if rows.size == 0 or spec.carbide <= 0:
        return
    weights = _placement_weights(rows, cols, v, spec, px_per_mm, rng)
    radius = max(spec.carbide_size_um / 1000.0 * px_per_mm / 2.0, 0.8)
    target = spec.carbide * rows.size
    placed = 0
    while placed < target:
        batch = max(int((target - placed) / (np.pi * radius**2) * 0.7), 4)
        picks = rng.choice(rows.size, size=batch, p=weights)
        for pick in picks:
            size = radius * rng.uniform(0.7, 1.3)
            if spec.carbide_shape == "round":
                _stamp_disc(labels, bead, rows[pick], cols[pick], size, CARBIDE)
            else:
                _stamp_particle(labels, bead, rows[pick], cols[pick], size,
                                spec.carbide_shape, rng)
        placed = int((labels[bead] == CARBIDE).sum())


def _placement_weights(
    rows: np.ndarray,
    cols: np.ndarray,
    v: np.ndarray,
    spec: BeadSpec,
    px_per_mm: float,
    rng: np.random.Generator,
) -> np.ndarray:
    if spec.distribution == "uniform":
        weights = np.ones(rows.size)
    elif spec.distribution == "segregated":
        # Heavy WC sinks towards the fusion line while the pool is liquid.
        depth = v[rows, cols]
        span = max(float(depth.max() - depth.min()), 1.0)
        weights = np.exp(spec.segregation * (depth - depth.min()) / span)
    elif spec.distribution == "clustered":
        centres = rng.choice(rows.size, size=spec.clusters)
        spread = spec.cluster_mm * px_per_mm
        weights = np.zeros(rows.size)
        for c in centres:
            d2 = (rows - rows[c]) ** 2 + (cols - cols[c]) ** 2
            weights += np.exp(-d2 / (2.0 * spread**2))
        weights += 1e-3
    else:
        raise ValueError(f"unknown carbide distribution {spec.distribution!r}")
    return weights / weights.sum()


def _scatter_pores(
    labels: np.ndarray,
    bead: np.ndarray,
    spec: BeadSpec,
    um_per_px: float,
    rng: np.random.Generator,
) -> None:
    """Place round pores inside the bead: the largest first, then smaller ones to the share."""
    if spec.porosity <= 0 or not bead.any():
        return
    inner = ndimage.binary_erosion(bead, iterations=3)
    rows, cols = np.nonzero(inner)
    if rows.size == 0:
        return
    largest = spec.max_pore_um / um_per_px / 2.0
    target = spec.porosity * bead.sum()
    radius = largest
    for _ in range(400):
        if (labels[bead] == POROSITY).sum() >= target:
            break
        pick = rng.integers(rows.size)
        _stamp_disc(labels, inner, rows[pick], cols[pick], radius, POROSITY)
        radius = largest * rng.uniform(*spec.pore_ratio)


def _stamp_disc(
    labels: np.ndarray, allowed: np.ndarray, row: int, col: int, radius: float, phase: int
) -> None:
    r = int(np.ceil(radius))
    top, left = max(row - r, 0), max(col - r, 0)
    bottom, right = min(row + r + 1, labels.shape[0]), min(col + r + 1, labels.shape[1])
    yy, xx = np.ogrid[top:bottom, left:right]
    disc = (yy - row) ** 2 + (xx - col) ** 2 <= radius**2
    disc &= allowed[top:bottom, left:right]
    labels[top:bottom, left:right][disc] = phase


def drawn_dilution(variant: Variant, um_per_px: float = 10.0, zoom: int = 4) -> float:
    """The dilution of the shape as drawn: the share of the bead below the substrate surface
    the generator drew it on, counted on a map `zoom` times finer. No metrology choice moves
    it, so it checks that truth.csv (measured on the label map) means what it says."""
    frame, spec = variant.frame, variant.spec
    fine = Frame(frame.width * zoom, frame.height * zoom, frame.centre, frame.surface)
    shape = replace(spec, fusion_px=spec.fusion_px * zoom, carbide=0.0, porosity=0.0, haz_mm=0.0)
    labels = render_bead(shape, um_per_px / zoom, seed=0, frame=fine)
    ys, xs = np.nonzero(labels == BEAD)
    if xs.size == 0:
        return float("nan")
    tilt = np.deg2rad(spec.tilt_deg)
    cx, surface = fine.width * fine.centre, fine.height * fine.surface
    below = -(xs - cx) * np.sin(tilt) + (ys - surface) * np.cos(tilt) >= 0
    return float(below.mean())


def _stamp_particle(
    labels: np.ndarray,
    allowed: np.ndarray,
    row: int,
    col: int,
    radius: float,
    shape: str,
    rng: np.random.Generator,
) -> None:
    """An elongated (ellipse, aspect 1.5-3) or angular (rotated square or triangle) carbide
    of about the area of a disc of that radius, at a random angle."""
    angle = rng.uniform(0.0, np.pi)
    if shape == "elongated":
        aspect = rng.uniform(1.5, 3.0)
        a, b = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
    elif shape == "angular":
        a = b = radius * rng.uniform(1.0, 1.25)
    else:
        raise ValueError(f"unknown carbide shape {shape!r}")
    r = int(np.ceil(max(a, b) * 1.5))
    top, left = max(row - r, 0), max(col - r, 0)
    bottom, right = min(row + r + 1, labels.shape[0]), min(col + r + 1, labels.shape[1])
    yy, xx = np.ogrid[top:bottom, left:right]
    along = (xx - col) * np.cos(angle) + (yy - row) * np.sin(angle)
    across = -(xx - col) * np.sin(angle) + (yy - row) * np.cos(angle)
    if shape == "elongated":
        inside = (along / a) ** 2 + (across / b) ** 2 <= 1.0
    elif rng.random() < 0.5:
        inside = np.maximum(np.abs(along), np.abs(across)) <= a * 0.89
    else:  # a triangle: three half-planes
        inside = np.ones(np.broadcast(along, across).shape, dtype=bool)
        for k in range(3):
            phi = 2.0 * np.pi * k / 3.0
            inside &= along * np.cos(phi) + across * np.sin(phi) <= a * 0.67
    inside &= allowed[top:bottom, left:right]
    labels[top:bottom, left:right][inside] = CARBIDE


def paint(labels: np.ndarray, legend: Mapping[str, tuple[int, int, int]]) -> Image.Image:
    """The label map in the legend's colours."""
    palette = np.array([legend[name] for name in PHASES], dtype=np.uint8)
    return Image.fromarray(palette[labels], mode="RGB")


def degrade(image: Image.Image, how: Degradation, seed: int = 0) -> Image.Image:
    """Blur, then noise; JPEG is applied when the image is written."""
    if how.blur_radius > 0:
        image = image.filter(ImageFilter.GaussianBlur(how.blur_radius))
    if how.noise_sigma > 0:
        rng = np.random.default_rng(seed)
        pixels = np.asarray(image, dtype=np.float64)
        pixels = pixels + rng.normal(0.0, how.noise_sigma, pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), mode="RGB")
    return image


def encode(image: Image.Image, how: Degradation) -> tuple[bytes, str]:
    """File bytes and suffix: PNG, or JPEG at the requested quality."""
    buffer = io.BytesIO()
    if how.jpeg_quality is None:
        image.save(buffer, format="PNG", optimize=False)
        return buffer.getvalue(), ".png"
    image.save(buffer, format="JPEG", quality=how.jpeg_quality, subsampling=how.subsampling)
    return buffer.getvalue(), ".jpg"


def sample_specs(n: int, seed: int) -> list[BeadSpec]:
    """Draw n beads spread over good and bad parts of every criterion."""
    rng = np.random.default_rng(seed)

    def either(good: tuple[float, float], bad: tuple[float, float], p_good: float) -> float:
        low, high = good if rng.random() < p_good else bad
        return float(rng.uniform(low, high))

    specs = []
    for _ in range(n):
        specs.append(
            BeadSpec(
                width_mm=float(rng.uniform(2.6, 3.8)),
                height_mm=either((0.45, 1.3), (0.08, 0.25), 0.8),
                dilution=either((0.01, 0.04), (0.07, 0.2), 0.65),
                haz_mm=either((0.3, 0.85), (1.15, 1.7), 0.7),
                tilt_deg=float(rng.uniform(-2.0, 2.0)),
                porosity=either((0.0, 0.012), (0.03, 0.06), 0.7),
                max_pore_um=either((40.0, 120.0), (180.0, 260.0), 0.75),
                carbide=either((0.34, 0.5), (0.1, 0.25), 0.7),
                carbide_size_um=float(rng.uniform(30.0, 60.0)),
                distribution=str(rng.choice(DISTRIBUTIONS, p=(0.6, 0.2, 0.2))),
            )
        )
    return specs


def criteria_of(ruleset: Ruleset) -> dict[str, tuple[MeasurementRule, ...]]:
    """The measurement rules of every assessment that has some, by key: what labels follow."""
    return {key: a.measurements for key, a in sorted(ruleset.assessments.items()) if a.measurements}


def label_sample(quantities: Mapping[str, float], criteria: Criteria) -> dict[str, str]:
    """Expert labels from true quantities: an assessment accepts when all its rules hold
    (exactly: truth has no measurement uncertainty); an unmeasurable quantity rejects."""
    labels = {
        key: "accept"
        if all(r.quantity in quantities and meets(quantities[r.quantity], r.op, r.limit)
               for r in rules)
        else "reject"
        for key, rules in criteria.items()
    }
    labels["overall"] = "accept" if all(v == "accept" for v in labels.values()) else "reject"
    return labels


def write_dataset(
    outdir: Path,
    n: int,
    seed: int,
    um_per_px: float = 10.0,
    legend: Mapping[str, tuple[int, int, int]] = DEFAULT_LEGEND,
    degradation: Degradation = Degradation(),
    criteria: Criteria | None = None,
    families: Sequence[str] = (),
    masks: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write sample-NNNN images and truth.csv, and labels.csv when criteria are given; the
    same seed and families give the same bytes. The acquisition family, where chosen, draws
    each image's degradation in place of `degradation`."""
    from engine.metrology.families import sample_variants  # it builds on this module

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths, truth_rows, label_rows = [], [], []
    for index, variant in enumerate(sample_variants(n, seed, families, degradation)):
        sample_seed = seed * 100_003 + index
        labels, scale, image = draw_variant(variant, um_per_px, sample_seed, legend)
        truth = measure_labels(labels, scale)
        data, suffix = encode(image, variant.degradation)
        path = outdir / f"sample-{index:04d}{suffix}"
        path.write_bytes(data)
        paths.append(path)
        for key, kind in (masks or {}).items():
            folder = outdir / "masks" / key
            folder.mkdir(parents=True, exist_ok=True)
            marked = defect_mask(labels, scale, kind, image.size)
            Image.fromarray(marked.astype(np.uint8) * 255, mode="L").save(
                folder / f"{path.stem}.png")
        truth_rows.append(
            {"image": path.name, **{q: _cell(truth.quantities.get(q)) for q in QUANTITIES},
             "family": variant.family,
             **{f"spec_{k}": v for k, v in asdict(variant.spec).items()}}
        )
        if criteria is not None:
            label_rows.append({"image": path.name, **label_sample(truth.quantities, criteria)})
    _write_csv(outdir / "truth.csv", truth_rows)
    if criteria is not None:
        _write_csv(outdir / "labels.csv", label_rows)
        write_label_provenance(outdir / "labels.csv", criteria, n, seed, families)
    return paths


def write_label_provenance(
    labels_csv: Path, criteria: Criteria, n: int, seed: int, families: Sequence[str]
) -> Path:
    """labels.json beside labels.csv: the labels were drawn from the ground truth with these
    limits, so an evaluation can say where its measurement figures check the metrology only."""
    provenance = {
        "drawn_by": "kb synth",
        "from": "the generator's ground truth (truth.csv)",
        "n": n,
        "seed": seed,
        "families": list(families),
        "criteria": {
            key: [{"quantity": r.quantity, "op": r.op, "limit": r.limit} for r in rules]
            for key, rules in criteria.items()
        },
    }
    path = labels_csv.with_suffix(".json")
    path.write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return path


def draw_variant(
    variant: Variant,
    um_per_px: float,
    seed: int,
    legend: Mapping[str, tuple[int, int, int]] = DEFAULT_LEGEND,
) -> tuple[np.ndarray, float, Image.Image]:
    """The exact label map, its pixel size and the degraded picture of one variant.

    With anti-aliasing the bead is drawn at several times the resolution (that label map is
    the truth) and the painted picture is averaged down, as a renderer would.
    """
    spec, frame, how = variant.spec, variant.frame, variant.degradation
    k = max(int(how.antialias), 1)
    if k == 1:
        labels = render_bead(spec, um_per_px, seed=seed, frame=frame)
        return labels, um_per_px, degrade(paint(labels, legend), how, seed=seed)
    fine = Frame(frame.width * k, frame.height * k, frame.centre, frame.surface)
    labels = render_bead(replace(spec, fusion_px=spec.fusion_px * k), um_per_px / k, seed=seed,
                         frame=fine)
    image = paint(labels, legend).reduce(k)
    return labels, um_per_px / k, degrade(image, how, seed=seed)


# What `kb synth --masks` marks, by the quantities an assessment's rules measure: pores for
# porosity rules, carbide clusters for the carbide spread (EA-4 and EA-6 of the example).
MASK_KINDS = {"porosity_fraction": "pores", "max_pore_diameter_um": "pores",
              "carbide_cv": "carbide-clusters", "carbide_clustering": "carbide-clusters"}
CLUSTER_WINDOW_MM = 0.3  # the neighbourhood a carbide's local share is counted in
CLUSTER_FACTOR = 2.0  # a carbide is in a cluster where that share is this many times the bead's


def defect_mask(labels: np.ndarray, scale_um: float, kind: str, size: tuple[int, int]
                ) -> np.ndarray:
    """(height, width) bool at the picture's size: the pores, or the carbides lying where
    their local share is CLUSTER_FACTOR times the bead's mean (a cluster, not the spread)."""
    if kind == "pores":
        marked = labels == POROSITY
    else:
        carbide = labels == CARBIDE
        material = np.isin(labels, (BEAD, CARBIDE))
        window = max(3, int(round(CLUSTER_WINDOW_MM * 1000.0 / scale_um)))
        share = ndimage.uniform_filter(carbide.astype(np.float64), window)
        room = ndimage.uniform_filter(material.astype(np.float64), window)
        local = np.divide(share, room, out=np.zeros_like(share), where=room > 0.05)
        mean = carbide.sum() / max(int(material.sum()), 1)
        marked = carbide & (local > CLUSTER_FACTOR * mean) if mean > 0 else carbide & False
    width, height = size
    if marked.shape != (height, width):  # drawn finer (anti-aliasing): any marked subpixel
        k = marked.shape[0] // height
        marked = marked[: height * k, : width * k].reshape(height, k, width, k).any(axis=(1, 3))
    return marked


def mask_kinds(criteria: Criteria) -> dict[str, str]:
    """Which mask each assessment gets, from the quantities its rules measure."""
    kinds = {}
    for key, rules in criteria.items():
        for rule in rules:
            if rule.quantity in MASK_KINDS:
                kinds[key] = MASK_KINDS[rule.quantity]
                break
    return kinds


def write_workspace_dataset(
    outdir: Path,
    n: int,
    seed: int,
    workspace: Workspace | None,
    um_per_px: float = 10.0,
    degradation: Degradation = Degradation(),
    families: Sequence[str] = (),
    masks: bool = False,
) -> list[Path]:
    """`kb synth`: maps in the workspace's legend, labelled by its measurement rules; outside
    a workspace, in the default legend with truth.csv only (there are no limits to label by)."""
    check_pixel_size_option(um_per_px)
    if workspace is None:
        return write_dataset(
            outdir, n, seed, um_per_px, DEFAULT_LEGEND, degradation, families=families
        )
    criteria = criteria_of(compile_rules(workspace.rules_dir))
    return write_dataset(
        outdir, n, seed, um_per_px, workspace.config.legend, degradation, criteria or None,
        families, mask_kinds(criteria) if masks else None,
    )


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["image"])
        writer.writeheader()
        writer.writerows(rows)
