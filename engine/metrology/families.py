"""Families of variation for `kb synth --family`: each widens one aspect of the generated
micrographs (bead shape, HAZ, carbides, pores, framing, acquisition) and leaves the rest as
the default generator draws it, so metrology and models can be checked family by family.

Each family draws from its own random stream (seeded by the dataset seed and the family), so
choosing one family never changes what another draws, and no family changes the default
generator: without families, a seed gives the bytes it always gave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from engine.metrology.synthetic import (
    CARBIDE_SHAPES,
    HAZ_SHAPES,
    BeadSpec,
    Degradation,
    Frame,
    Variant,
    sample_specs,
)

ACQUISITION = "acquisition"  # noise, blur, anti-aliasing and JPEG: how a map was exported
FAMILIES = ("bead-shape", "haz", "carbides", "pores", "framing", ACQUISITION)
BEAD_SHAPES = (
    "wide", "narrow", "flat", "tall", "tilted", "asymmetric", "skewed", "deep", "sunken"
)


def parse_families(names: Sequence[str]) -> tuple[str, ...]:
    """Family names in canonical order; `all` stands for every family. ValueError names an
    unknown one and lists the choices."""
    chosen: set[str] = set()
    for name in names:
        if name == "all":
            chosen.update(FAMILIES)
        elif name in FAMILIES:
            chosen.add(name)
        else:
            raise ValueError(
                f"unknown family {name!r}; choose from {', '.join(FAMILIES)} or all"
            )
    return tuple(f for f in FAMILIES if f in chosen)


def sample_variants(
    n: int, seed: int, families: Sequence[str] = (), degradation: Degradation | None = None,
    share: float = 1.0,
) -> list[Variant]:
    """n micrographs: the default generator's beads, varied by the chosen families.

    share: the chance that an image takes each chosen family, drawn independently per image
    and family (domain randomisation for training: 0.5 gives every mix of families, the
    default bead included). Every image draws every family's values whether it keeps them or
    not, so the share never changes what a kept family draws; 1.0 keeps all.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share {share} is not between 0 and 1")
    chosen = parse_families(families)
    specs = sample_specs(n, seed)
    how = Degradation() if degradation is None else degradation
    variants = [Variant(s, Frame(), how, "default") for s in specs]
    if not chosen:
        return variants
    keeps = {family: _kept(n, seed, family, share) for family in chosen}
    tags: list[list[str]] = [[] for _ in specs]
    for family in chosen:
        rng = np.random.default_rng([seed, 1 + FAMILIES.index(family)])
        draw = _DRAWS[family]
        for i, variant in enumerate(variants):
            drawn, tag = draw(variant, i, rng)
            if keeps[family][i]:
                variants[i] = drawn
                tags[i].append(f"{family}:{tag}")
    # The frame follows the bead last, once every family has shaped it.
    framing = keeps.get("framing", np.zeros(n, dtype=bool))
    rng = np.random.default_rng([seed, 100])
    framed = []
    for variant, around in zip(variants, framing, strict=True):
        if "framing" in chosen:
            frame = _frame_around(variant.spec, rng)  # drawn for every image, kept where chosen
        framed.append(replace(
            variant, frame=frame if around else _fitting_frame(variant.spec)
        ))
    return [replace(v, family=";".join(t) or "default")
            for v, t in zip(framed, tags, strict=True)]


def _kept(n: int, seed: int, family: str, share: float) -> np.ndarray:
    """Which images take this family; its own stream, so the share moves no family's draws."""
    if share >= 1.0:
        return np.ones(n, dtype=bool)
    rng = np.random.default_rng([seed, 200 + FAMILIES.index(family)])
    return rng.random(n) < share


def _either(rng: np.random.Generator, good: tuple[float, float], bad: tuple[float, float],
            p_good: float) -> float:
    low, high = good if rng.random() < p_good else bad
    return float(rng.uniform(low, high))


def _signed(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.choice((-1.0, 1.0)) * rng.uniform(low, high))


def _bead_shape(v: Variant, i: int, rng: np.random.Generator) -> tuple[Variant, str]:
    """Cycles through the shapes so that every few micrographs hold each of them."""
    kind = BEAD_SHAPES[i % len(BEAD_SHAPES)]
    s = v.spec
    u = rng.uniform
    changes: dict[str, object] = {
        "wide": {"width_mm": u(4.2, 5.4)},
        "narrow": {"width_mm": u(1.3, 2.2)},
        "flat": {"width_mm": u(3.5, 5.0), "height_mm": u(0.12, 0.4)},
        "tall": {"width_mm": u(1.8, 3.0), "height_mm": u(1.3, 1.9)},
        "tilted": {"tilt_deg": _signed(rng, 4.0, 12.0)},
        "asymmetric": {"asymmetry": _signed(rng, 0.15, 0.45)},
        "skewed": {"skew": _signed(rng, 0.3, 0.75), "penetration_power": u(0.4, 1.2)},
        "deep": {"dilution": u(0.2, 0.55), "penetration_power": u(0.6, 1.5)},
        "sunken": {"height_mm": -u(0.03, 0.25), "depth_mm": u(0.3, 0.8)},
    }[kind]
    return replace(v, spec=replace(s, **changes)), kind


def _haz(v: Variant, i: int, rng: np.random.Generator) -> tuple[Variant, str]:
    shape = str(rng.choice(HAZ_SHAPES))
    spec = replace(
        v.spec,
        haz_shape=shape,
        haz_mm=_either(rng, (0.1, 0.9), (1.1, 2.0), 0.7),
        haz_reach=float(rng.uniform(0.3, 1.5)),
        fusion_px=float(rng.uniform(1.0, 5.0)),
    )
    return replace(v, spec=spec), shape


def _carbides(v: Variant, i: int, rng: np.random.Generator) -> tuple[Variant, str]:
    distribution = str(rng.choice(("uniform", "segregated", "clustered"), p=(0.5, 0.25, 0.25)))
    size = float(rng.uniform(15.0, 110.0))
    spec = replace(
        v.spec,
        distribution=distribution,
        segregation=float(rng.uniform(3.0, 9.0)),
        clusters=int(rng.integers(2, 9)),
        # A cluster holds several particles: its spread is at least two particle sizes.
        cluster_mm=float(rng.uniform(0.08, 0.3)) + 2.0 * size / 1000.0,
        carbide_size_um=size,
        carbide_shape=str(rng.choice(CARBIDE_SHAPES)),
    )
    return replace(v, spec=spec), distribution


def _pores(v: Variant, i: int, rng: np.random.Generator) -> tuple[Variant, str]:
    low = float(rng.uniform(0.1, 0.5))
    spec = replace(
        v.spec,
        porosity=_either(rng, (0.0, 0.015), (0.025, 0.08), 0.7),
        max_pore_um=_either(rng, (20.0, 130.0), (170.0, 320.0), 0.75),
        pore_ratio=(low, low + float(rng.uniform(0.1, 0.5))),
    )
    return replace(v, spec=spec), "few-large" if low > 0.3 else "many-small"


def _acquisition(v: Variant, i: int, rng: np.random.Generator) -> tuple[Variant, str]:
    jpeg = None if rng.random() < 0.4 else int(rng.integers(60, 96))
    how = Degradation(
        noise_sigma=float(rng.uniform(0.0, 15.0)),
        blur_radius=float(rng.uniform(0.0, 1.5)),
        jpeg_quality=jpeg,
        subsampling=str(rng.choice(("4:2:0", "4:4:4"))),
        antialias=int(rng.choice((1, 2, 3))),
    )
    return replace(v, degradation=how), "png" if jpeg is None else "jpeg"


def _frame(v: Variant, i: int, rng: np.random.Generator) -> tuple[Variant, str]:
    return v, "margins"  # the frame itself is drawn last, around the finished bead


_DRAWS = {
    "bead-shape": _bead_shape,
    "haz": _haz,
    "carbides": _carbides,
    "pores": _pores,
    "framing": _frame,
    "acquisition": _acquisition,
}


def _extent_px(spec: BeadSpec, um_per_px: float = 10.0) -> tuple[float, float, float, float]:
    """Half-width, height above and depth below the surface (with the HAZ), in pixels."""
    px = 1000.0 / um_per_px
    half = spec.width_mm * px / 2.0 * (1.0 + abs(spec.asymmetry))
    above = max(spec.height_mm, 0.0) * px
    if spec.depth_mm is None:
        depth = spec.height_mm * spec.dilution / (1.0 - spec.dilution) * px
    else:
        depth = spec.depth_mm * px
    slope = abs(np.tan(np.deg2rad(spec.tilt_deg))) * half
    return half, above + slope, depth + spec.fusion_px + spec.haz_mm * px + slope, spec.haz_mm * px


def _fitting_frame(spec: BeadSpec) -> Frame:
    """The default frame, grown where a family's bead would not fit in it."""
    half, above, below, haz = _extent_px(spec)
    default = Frame()
    width = max(default.width, int(np.ceil(2.0 * (half + haz) + 40)))
    surface_row = max(default.height * default.surface, above + 20.0)
    height = max(default.height, int(np.ceil(surface_row + below + 20)))
    if (width, height) == (default.width, default.height):
        return default
    return Frame(width, height, 0.5, surface_row / height)


def _frame_around(spec: BeadSpec, rng: np.random.Generator) -> Frame:
    """A frame of random size with random margins around the bead; the HAZ may be cut."""
    half, above, below, haz = _extent_px(spec)
    left, right = rng.uniform(4.0, 220.0, size=2)
    top = rng.uniform(4.0, 150.0)
    bottom = rng.uniform(-0.5 * haz, 150.0)
    width = int(np.ceil(2.0 * half + left + right))
    height = max(int(np.ceil(above + below + top + bottom)), int(np.ceil(above + top)) + 8)
    return Frame(width, height, float((left + half) / width), float((top + above) / height))
