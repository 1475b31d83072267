"""Redraw the example workspace's reference images and the sample micrographs in examples/.

    .venv/bin/python examples/regenerate.py

Deterministic: running it again rewrites the same bytes, so git shows no change. Each
reference is a sound bead except for the one property its assessment judges, so positive
and negative references of an assessment differ in what the expert looks at.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from engine.metrology import measure_labels
from engine.synth import BeadSpec, Degradation, encode, label_sample, paint, render_bead
from kb.config import DEFAULT_LEGEND

ROOT = Path(__file__).resolve().parent.parent
UM_PER_PX = 10.0

# What makes a bead fail each assessment (one change to an otherwise sound bead).
FLAWS: dict[str, dict[str, object]] = {
    "EA-1": {"dilution": 0.16},
    "EA-2": {"haz_mm": 1.45},
    "EA-3": {"height_mm": 0.15},
    "EA-4": {"porosity": 0.045, "max_pore_um": 230.0},
    "EA-5": {"carbide": 0.16},
    "EA-6": {"distribution": "segregated"},
}

# The sample micrographs of `make demo`: name -> changes to a sound bead.
SAMPLES: dict[str, dict[str, object]] = {
    "sound-bead-a": {},
    "sound-bead-b": {"width_mm": 2.8, "height_mm": 1.1, "tilt_deg": 1.2},
    "deep-dilution": FLAWS["EA-1"],
    "porous-bead": FLAWS["EA-4"],
    "clustered-carbides": {"distribution": "clustered"},
    "flat-deposit": FLAWS["EA-3"],
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
    return label_sample(measure_labels(labels, UM_PER_PX).quantities)


def write_references(count: int = 3) -> None:
    rng = np.random.default_rng(2024)
    for key, flaw in FLAWS.items():
        folder = ROOT / "rules" / "references" / key
        for polarity in ("positive", "negative"):
            for old in (folder / polarity).glob("*.png"):
                old.unlink()
        for i in range(count):
            good = sound_bead(rng)
            seed = int(rng.integers(1 << 30))
            verdict = draw(good, seed, folder / "positive" / f"sound-{i + 1}.png")[key]
            assert verdict == "accept", (key, "positive", i)
            bad = dataclasses.replace(good, **flaw)
            verdict = draw(bad, seed, folder / "negative" / f"flawed-{i + 1}.png")[key]
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
