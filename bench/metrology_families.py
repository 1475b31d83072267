"""Mean absolute error of `kb measure` per generator family, for every quantity.

For each family, n micrographs are drawn as `kb synth --family NAME` draws them (and, in
the last row, as `--family all` draws them: every family at once), encoded as
they would be written (PNG or JPEG), decoded and measured; the error is against the truth
measured on the exact label map (truth.csv). Dilution and reinforcement height are also
compared with the bead's geometry itself (the area below the drawn substrate surface, counted
on a map drawn at four times the resolution), which no metrology choice can move: that column
is what a different generator's truth would say.

A second table checks EA-6 per family: on every bead the carbide group judges (EA-3 accepts
on the truth), does the example's EA-6 verdict from the measured quantities (and from the
truth) agree with how the generator spread the carbides (uniform: accept; sunk or clustered:
reject)? It also gives the range of each EA-6 quantity per spread, which the limits of
rules/assessments/EA-6.toml come from.

    .venv/bin/python bench/metrology_families.py --n 45 --seed 9001
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from engine.metrology.families import FAMILIES, sample_variants
from engine.metrology.quantities import (
    QUANTITIES,
    measure_image,
    measure_labels,
)
from engine.metrology.synthetic import (
    criteria_of,
    draw_variant,
    drawn_dilution,
    encode,
    label_sample,
)
from kb.config import DEFAULT_LEGEND
from kb.rules import compile_rules

UM_PER_PX = 10.0
RULES = criteria_of(compile_rules(Path(__file__).resolve().parent.parent / "rules"))
EA6_QUANTITIES = tuple(r.quantity for r in RULES["EA-6"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=45)
    parser.add_argument("--seed", type=int, default=9001)
    args = parser.parse_args()
    columns = [*QUANTITIES, "dilution vs geometry", "height vs geometry"]
    rows = []
    ea6_rows = []
    spread: dict[tuple[str, str], list[list[float]]] = {}
    start = time.perf_counter()
    for family in ("default", *FAMILIES, "all"):
        chosen = {"default": (), "all": FAMILIES}.get(family, (family,))
        errors: dict[str, list[float]] = {c: [] for c in columns}
        agree = {"measured": 0, "truth": 0, "judged": 0}
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
            if label_sample(truth, {"EA-3": RULES["EA-3"]})["EA-3"] == "accept":
                expected = "accept" if variant.spec.distribution == "uniform" else "reject"
                agree["judged"] += 1
                for what, values in (("measured", measured), ("truth", truth)):
                    ea6 = label_sample(values, {"EA-6": RULES["EA-6"]})["EA-6"]
                    agree[what] += ea6 == expected
                spread.setdefault((family, variant.spec.distribution), []).append(
                    [truth.get(q, float("nan")) for q in EA6_QUANTITIES])
        ea6_rows.append((family, agree))
        rows.append((family, {c: (float(np.mean(e)) if e else float("nan")) for c, e in
                              errors.items()}))
    print(f"n = {args.n} per family, seed {args.seed}, {time.perf_counter() - start:.0f} s\n")
    print("| family | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for family, mae in rows:
        print(f"| {family} | " + " | ".join(f"{mae[c]:.4g}" for c in columns) + " |")
    print("\nEA-6 verdicts that agree with how the carbides were spread (beads with EA-3 accepted)")
    print("\n| family | judged | from measurements | from truth |")
    print("| --- | --- | --- | --- |")
    for family, agree in ea6_rows:
        print(f"| {family} | {agree['judged']} | {agree['measured']} | {agree['truth']} |")
    print("\nEA-6 quantities on the truth, min / median / max, by how the carbides were spread")
    print("\n| family | spread | n | " + " | ".join(EA6_QUANTITIES) + " |")
    print("| --- | --- | --- |" + " --- |" * len(EA6_QUANTITIES))
    for (family, how), values in spread.items():
        a = np.array(values)
        cells = [f"{np.nanmin(c):.2f} / {np.nanmedian(c):.2f} / {np.nanmax(c):.2f}" for c in a.T]
        print(f"| {family} | {how} | {len(a)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
