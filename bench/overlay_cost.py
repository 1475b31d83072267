"""What the measurement overlay costs `kb qualify`: time per phase map and bytes per record.

    .venv/bin/python bench/overlay_cost.py [--n 100] [--repeat 3] [--family all]

On generated 640 x 480 phase maps (seed 1): measuring alone (what `kb measure` does) against
measuring with the overlay (what `kb qualify` does for a workspace with measurement rules),
best of the repeats, and the size of the stored `overlay` JSON (median and largest).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from engine.metrology.families import parse_families
from engine.metrology.overlay import measure_with_overlay
from engine.metrology.quantities import NotASegmentationMap, measure_image
from engine.metrology.synthetic import write_dataset
from kb.config import DEFAULT_LEGEND


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--family", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_dataset(Path(folder), args.n, 1, families=parse_families(args.family))
        images = []
        for path in paths:
            image = Image.open(path).convert("RGB")
            try:  # a map degraded past the phase-map check is refused by both alike
                measure_image(image, DEFAULT_LEGEND, 10.0)
                images.append(image)
            except NotASegmentationMap:
                continue
    alone, with_overlay, sizes = [], [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        for image in images:
            measure_image(image, DEFAULT_LEGEND, 10.0)
        alone.append((time.perf_counter() - start) / len(images))
        start = time.perf_counter()
        documents = [measure_with_overlay(image, DEFAULT_LEGEND, 10.0)[1].to_dict()
                     for image in images]
        with_overlay.append((time.perf_counter() - start) / len(images))
    sizes = [len(json.dumps(d)) for d in documents]
    print(f"{platform.machine()}, Python {platform.python_version()}, {len(images)} of "
          f"{len(paths)} maps measurable, "
          f"families {args.family or ['none']}")
    print(f"measure alone: {min(alone) * 1000:.1f} ms per map")
    print(f"measure with overlay: {min(with_overlay) * 1000:.1f} ms per map "
          f"(+{(min(with_overlay) - min(alone)) * 1000:.1f} ms)")
    print(f"overlay JSON: median {int(np.median(sizes))} bytes, largest {max(sizes)} bytes")


if __name__ == "__main__":
    main()
