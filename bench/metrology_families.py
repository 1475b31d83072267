"""Mean absolute error of `kb measure` per generator family, for every quantity.

For each family, n micrographs are drawn as `kb synth --family NAME` draws them, encoded as
they would be written (PNG or JPEG), decoded and measured; the error is against the truth
measured on the exact label map (truth.csv). Dilution and reinforcement height are also
compared with the bead's geometry itself (the area below the drawn substrate surface, counted
on a map drawn at four times the resolution), which no metrology choice can move: that column
is what a different generator's truth would say.

    .venv/bin/python bench/metrology_families.py --n 45 --seed 9001
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from engine.metrology.families import FAMILIES, sample_variants
from engine.metrology.quantities import (
    QUANTITIES,
    measure_image,
    measure_labels,
)
from engine.metrology.synthetic import draw_variant, drawn_dilution, encode
from kb.config import DEFAULT_LEGEND

UM_PER_PX = 10.0
GEOMETRY_ZOOM = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=45)
    parser.add_argument("--seed", type=int, default=9001)
    args = parser.parse_args()
    columns = [*QUANTITIES, "dilution vs geometry", "height vs geometry"]
    rows = []
    start = time.perf_counter()
    for family in ("default", *FAMILIES):
        chosen = () if family == "default" else (family,)
        errors: dict[str, list[float]] = {c: [] for c in columns}
        for index, variant in enumerate(sample_variants(args.n, args.seed, chosen)):
            sample_seed = args.seed * 100_003 + index
            labels, scale, image = draw_variant(variant, UM_PER_PX, sample_seed)
            truth = measure_labels(labels, scale).quantities
            data, _ = encode(image, variant.degradation)
            measured = measure_image(Image.open(io.BytesIO(data)), DEFAULT_LEGEND,
                                     UM_PER_PX).quantities
            for name in QUANTITIES:
                if name in truth and name in measured:
                    errors[name].append(abs(measured[name] - truth[name]))
            dilution = drawn_dilution(variant, UM_PER_PX)
            height = max(variant.spec.height_mm, 0.0)  # the cap's apex above the surface
            if "dilution_fraction" in truth:
                errors["dilution vs geometry"].append(abs(truth["dilution_fraction"] - dilution))
                errors["height vs geometry"].append(
                    abs(truth["reinforcement_height_mm"] - height))
        rows.append((family, {c: (float(np.mean(e)) if e else float("nan")) for c, e in
                              errors.items()}))
    print(f"n = {args.n} per family, seed {args.seed}, {time.perf_counter() - start:.0f} s\n")
    print("| family | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for family, mae in rows:
        print(f"| {family} | " + " | ".join(f"{mae[c]:.4g}" for c in columns) + " |")


if __name__ == "__main__":
    main()
