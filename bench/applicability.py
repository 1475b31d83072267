"""How far images lie from the example's references, read in the legend and as raw pixels.

The figures behind APPLICABILITY_LIMIT (engine/evidence.py, docs/rules.md "Applicability"):
for every group of images, the largest and the 90th-percentile ratio of the distance to the
nearest reference over the references' spread, and how many exceed the limit, under the
shipped dual encoder. Groups: the example micrographs, fresh default maps, the same maps
exported with noise and JPEG, fresh maps of each generator family and of all at once, and
the images that must stay out (a photograph, uniform grey, another material's grain map), and
maps of other structures drawn in the example's legend (grains, a two-phase field, a flat
coating).

    .venv/bin/python bench/applicability.py --n 40 --json-out bench/results/applicability.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from engine.appearance import POOLED_PHASES, appearance_modality, vectors_of
from engine.encoders.backends import load_encoder
from engine.evidence import APPLICABILITY_LIMIT, ReferenceRange, leave_one_out_nearest
from engine.metrology.families import FAMILIES
from engine.metrology.synthetic import Degradation, write_dataset
from kb.config import DEFAULT_LEGEND, ModelSpec

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from foreign_images import (  # noqa: E402
    islands,
    layered_coating,
    photograph,
    uniform_grey,
    voronoi_grains,
)


def groups(root: Path, n: int) -> dict[str, list[Image.Image]]:
    def opened(paths: list[Path]) -> list[Image.Image]:
        return [Image.open(p).convert("RGB") for p in paths]

    found = {
        "examples": opened(sorted((REPO / "examples").glob("*.png"))),
        "fresh": opened(write_dataset(root / "fresh", n, seed=8101)),
        "noise 12 + JPEG 75": opened(write_dataset(
            root / "noisy", n, seed=8101,
            degradation=Degradation(noise_sigma=12.0, jpeg_quality=75))),
    }
    for k, family in enumerate((*FAMILIES, "all")):
        found[f"family {family}"] = opened(
            write_dataset(root / family, n, seed=8200 + k, families=(family,)))
    found["photograph"] = [photograph(seed=s) for s in range(3)]
    found["uniform grey"] = [uniform_grey(level) for level in (64, 128, 200)]
    found["other material"] = [voronoi_grains(seed=s) for s in range(3)]
    legend_colours = tuple(DEFAULT_LEGEND[phase] for phase in POOLED_PHASES)
    found["in legend: grains"] = [voronoi_grains(seed=s, colours=legend_colours)
                                  for s in range(3)]
    found["in legend: islands"] = [islands(DEFAULT_LEGEND, seed=s) for s in range(3)]
    found["in legend: coating"] = [layered_coating(DEFAULT_LEGEND, seed=s) for s in range(3)]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "vlkb-dual-niwc")
    parser.add_argument("--n", type=int, default=40, help="maps per generated group")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    encoder = load_encoder(ModelSpec(name="vlkb", backend="dual", source=str(args.model),
                                     batch_size=16))
    references = sorted((REPO / "rules" / "references").rglob("*.png"))
    ref_images = [Image.open(p).convert("RGB") for p in references]
    table: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        images = groups(Path(tmp), args.n)
        for reading, legend in (("by phase in the legend", DEFAULT_LEGEND), ("raw pixels", None)):
            modality = appearance_modality(legend)
            vectors = vectors_of(encoder, modality, ref_images).astype(np.float64)
            spread = float(leave_one_out_nearest(vectors, modality).max())
            labels = tuple(p.name for p in references)
            span = ReferenceRange(labels, vectors, spread, modality)
            for name, members in images.items():
                rows = vectors_of(encoder, modality, members).astype(np.float64)
                ratios = np.array([a.ratio for a in span.applicability(rows)])
                cell = {"n": len(ratios), "max": float(ratios.max()),
                        "p90": float(np.quantile(ratios, 0.9)),
                        "outside": int((ratios > APPLICABILITY_LIMIT).sum())}
                table.setdefault(name, {})[reading] = cell
                print(f"{reading:22s} {name:22s} n={cell['n']:3d} max {cell['max']:6.1f} "
                      f"p90 {cell['p90']:6.1f} outside {cell['outside']}", flush=True)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(
            {"command": " ".join(["bench/applicability.py", *sys.argv[1:]]),
             "limit": APPLICABILITY_LIMIT, "groups": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
