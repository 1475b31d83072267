"""Redraw the example workspace's reference images and the sample micrographs in examples/.

    .venv/bin/python examples/regenerate.py

Deterministic: running it again rewrites the same bytes, so git shows no change. Each
reference is a sound bead except for the property its assessment judges, so positive and
negative references of an assessment differ in what the expert looks at. As an expert would
pick them, the negatives show each way the criterion fails (a single oversized pore as well
as widespread porosity), some far from the limit and some close to it, and one positive sits
near the limit on the accepting side: references calibrate the z-scores, so they should
bracket the limit rather than show only the extremes.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from engine.metrology.quantities import measure_labels
from engine.metrology.synthetic import (
    BeadSpec,
    Degradation,
    criteria_of,
    encode,
    label_sample,
    paint,
    render_bead,
)
from kb.config import DEFAULT_LEGEND
from kb.rules import compile_rules

ROOT = Path(__file__).resolve().parent.parent
UM_PER_PX = 10.0

# Per assessment: changes to a sound bead that make it fail, one per negative reference.
FLAWS: dict[str, list[dict[str, object]]] = {
    "EA-1": [{"dilution": 0.16}, {"dilution": 0.11}, {"dilution": 0.09}],
    "EA-2": [{"haz_mm": 1.45}, {"haz_mm": 1.3}, {"haz_mm": 1.2}],
    "EA-3": [{"height_mm": 0.15}, {"height_mm": 0.22}, {"height_mm": 0.1}],
    "EA-4": [
        {"porosity": 0.045, "max_pore_um": 230.0},  # porous, with large pores
        {"porosity": 0.008, "max_pore_um": 220.0},  # one oversized pore in a dense bead
        {"porosity": 0.04, "max_pore_um": 100.0},  # many small pores
    ],
    "EA-5": [{"carbide": 0.16}, {"carbide": 0.22}, {"carbide": 0.12}],
    "EA-6": [{"distribution": "segregated"}, {"distribution": "clustered"},
             {"distribution": "segregated"}],
}

# Per assessment: one positive reference close to the limit but accepted; the others are sound.
NEAR_LIMIT: dict[str, dict[str, object]] = {
    "EA-1": {"dilution": 0.045},
    "EA-2": {"haz_mm": 0.85},
    "EA-3": {"height_mm": 0.5},
    "EA-4": {"porosity": 0.011, "max_pore_um": 115.0},
    "EA-5": {"carbide": 0.35},
    "EA-6": {},
}

# The sample micrographs of `make demo`: name -> changes to a sound bead.
SAMPLES: dict[str, dict[str, object]] = {
    "sound-bead-a": {},
    "sound-bead-b": {"width_mm": 2.8, "height_mm": 1.1, "tilt_deg": 1.2},
    "deep-dilution": FLAWS["EA-1"][0],
    "porous-bead": FLAWS["EA-4"][0],
    "clustered-carbides": {"distribution": "clustered"},
    "flat-deposit": FLAWS["EA-3"][0],
}


def sound_bead(rng: np.random.Generator) -> BeadSpec:
    """A bead that passes every assessment with some margin, varied in shape."""
    return BeadSpec(
        width_mm=float(rng.uniform(2.8, 3.6)),
        height_mm=float(rng.uniform(0.7, 1.1)),
        dilution=float(rng.uniform(0.02, 0.035)),
        haz_mm=float(rng.uniform(0.4, 0.75)),
        tilt_deg=float(rng.uniform(-1.5, 1.5)),
        porosity=float(rng.uniform(0.002, 0.008)),
        max_pore_um=float(rng.uniform(50.0, 100.0)),
        carbide=float(rng.uniform(0.38, 0.46)),
        carbide_size_um=float(rng.uniform(32.0, 45.0)),
    )


def draw(spec: BeadSpec, seed: int, path: Path) -> dict[str, str]:
    """Write one PNG and return its labels from the exact label map."""
    labels = render_bead(spec, UM_PER_PX, seed=seed)
    data, _ = encode(paint(labels, DEFAULT_LEGEND), Degradation())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    criteria = criteria_of(compile_rules(ROOT / "rules"))
    return label_sample(measure_labels(labels, UM_PER_PX).quantities, criteria)


def write_references() -> None:
    rng = np.random.default_rng(2024)
    for key, flaws in FLAWS.items():
        folder = ROOT / "rules" / "references" / key
        for polarity in ("positive", "negative"):
            for old in (folder / polarity).glob("*.png"):
                old.unlink()
        changes = [{}] * (len(flaws) - 1) + [NEAR_LIMIT[key]]
        for i, (change, flaw) in enumerate(zip(changes, flaws, strict=True)):
            good = sound_bead(rng)
            seed = int(rng.integers(1 << 30))
            name = "near-limit" if change else "sound"
            verdict = draw(dataclasses.replace(good, **change), seed,
                           folder / "positive" / f"{name}-{i + 1}.png")[key]
            assert verdict == "accept", (key, "positive", i)
            verdict = draw(dataclasses.replace(good, **flaw), seed,
                           folder / "negative" / f"flawed-{i + 1}.png")[key]
            assert verdict == "reject", (key, "negative", i)


def write_samples() -> None:
    rng = np.random.default_rng(7)
    rows = []
    for name, change in SAMPLES.items():
        spec = dataclasses.replace(sound_bead(rng), **change)
        labels = draw(spec, int(rng.integers(1 << 30)), ROOT / "examples" / f"{name}.png")
        rows.append({"image": f"{name}.png", **labels})
    with (ROOT / "examples" / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    write_references()
    write_samples()
    print("wrote rules/references/EA-*/ and examples/*.png, examples/labels.csv")
