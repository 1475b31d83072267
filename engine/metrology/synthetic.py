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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
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


@dataclass(frozen=True)
class Degradation:
    """What a real acquisition and export pipeline does to a clean phase map."""

    noise_sigma: float = 0.0  # Gaussian, in 8-bit grey levels per channel
    blur_radius: float = 0.0  # Gaussian blur, pixels
    jpeg_quality: int | None = None  # None writes PNG
    subsampling: str = "4:2:0"  # JPEG chroma subsampling; 4:2:0 is what most tools write


def render_bead(spec: BeadSpec, um_per_px: float = 10.0, seed: int = 0) -> np.ndarray:
    """Draw the exact label map (indices into metrology.PHASES) for one bead."""
    rng = np.random.default_rng(seed)
    px_per_mm = 1000.0 / um_per_px
    ys, xs = np.indices((HEIGHT, WIDTH), dtype=np.float64)
    cx, surface = WIDTH / 2.0, HEIGHT * 0.45
    tilt = np.deg2rad(spec.tilt_deg)
    # Coordinates along (u) and below (v) the tilted substrate surface, in pixels.
    u = (xs - cx) * np.cos(tilt) + (ys - surface) * np.sin(tilt)
    v = -(xs - cx) * np.sin(tilt) + (ys - surface) * np.cos(tilt)

    half_width = spec.width_mm * px_per_mm / 2.0
    height = spec.height_mm * px_per_mm
    # Both caps are half-ellipses of the same width, so areas scale with their heights.
    depth = height * spec.dilution / (1.0 - spec.dilution)
    across = np.clip(1.0 - (u / half_width) ** 2, 0.0, None)
    profile = np.sqrt(across)
    under_bead = np.abs(u) < half_width
    labels = np.full((HEIGHT, WIDTH), BACKGROUND, dtype=np.uint8)
    bead = under_bead & (v >= -height * profile) & (v < depth * profile)
    labels[bead] = BEAD

    line_px = 3.0
    fusion = (np.abs(u) <= half_width + line_px) & (v >= depth * profile) & (
        v < depth * profile + line_px
    )
    labels[fusion & ~bead] = FUSION_LINE
    if spec.haz_mm > 0:
        from_fusion = ndimage.distance_transform_edt(labels != FUSION_LINE)
        haz = (from_fusion <= spec.haz_mm * px_per_mm) & (v > 0) & (labels == BACKGROUND)
        labels[haz] = HAZ

    _scatter_carbides(labels, bead, v, spec, px_per_mm, rng)
    _scatter_pores(labels, bead, spec, um_per_px, rng)
    return labels


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
            _stamp_disc(labels, bead, rows[pick], cols[pick], radius * rng.uniform(0.7, 1.3),
                        CARBIDE)
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
        weights = np.exp(5.0 * (depth - depth.min()) / span)
    elif spec.distribution == "clustered":
        centres = rng.choice(rows.size, size=4)
        spread = 0.18 * px_per_mm
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
        radius = largest * rng.uniform(0.35, 0.8)


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
) -> list[Path]:
    """Write sample-NNNN images and truth.csv, and labels.csv when criteria are given; the
    same seed gives the same bytes."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    specs = sample_specs(n, seed)
    paths, truth_rows, label_rows = [], [], []
    for index, spec in enumerate(specs):
        sample_seed = seed * 100_003 + index
        labels = render_bead(spec, um_per_px, seed=sample_seed)
        truth = measure_labels(labels, um_per_px)
        image = degrade(paint(labels, legend), degradation, seed=sample_seed)
        data, suffix = encode(image, degradation)
        path = outdir / f"sample-{index:04d}{suffix}"
        path.write_bytes(data)
        paths.append(path)
        truth_rows.append(
            {"image": path.name, **{q: _cell(truth.quantities.get(q)) for q in QUANTITIES},
             **{f"spec_{k}": v for k, v in asdict(spec).items()}}
        )
        if criteria is not None:
            label_rows.append({"image": path.name, **label_sample(truth.quantities, criteria)})
    _write_csv(outdir / "truth.csv", truth_rows)
    if criteria is not None:
        _write_csv(outdir / "labels.csv", label_rows)
    return paths


def write_workspace_dataset(
    outdir: Path,
    n: int,
    seed: int,
    workspace: Workspace | None,
    um_per_px: float = 10.0,
    degradation: Degradation = Degradation(),
) -> list[Path]:
    """`kb synth`: maps in the workspace's legend, labelled by its measurement rules; outside
    a workspace, in the default legend with truth.csv only (there are no limits to label by)."""
    check_pixel_size_option(um_per_px)
    if workspace is None:
        return write_dataset(outdir, n, seed, um_per_px, DEFAULT_LEGEND, degradation)
    criteria = criteria_of(compile_rules(workspace.rules_dir))
    return write_dataset(
        outdir, n, seed, um_per_px, workspace.config.legend, degradation, criteria or None
    )


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["image"])
        writer.writeheader()
        writer.writerows(rows)
