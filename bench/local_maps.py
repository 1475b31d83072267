"""What a `local` anomaly map costs: one 640 x 480 image on one core with the generic encoder.

    .venv/bin/python bench/local_maps.py [--model efficientnet-lite0] [--refs 10] [--n 20]

A bank is fitted from `--refs` generated phase maps (seed 1) with the defaults of a rules
[local] table (coreset 2000); then `--n` other maps (seed 2) are each timed from the picture
to its anomaly map, score and regions (patch features, nearest-neighbour distances,
upsampling and blur), with torch on one thread. Prints the median and the 90th percentile.
Target (issue 17, item 5): at most 150 ms.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.encoders.backends import load_encoder
from engine.local import LocalSettings, fit, score
from engine.metrology.synthetic import write_dataset
from kb.config import ModelSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet-lite0", help="an installed cnn model")
    parser.add_argument("--refs", type=int, default=10)
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    encoder = load_encoder(ModelSpec("bench", "cnn", f"vlkb:{args.model}"))
    with tempfile.TemporaryDirectory() as folder:
        refs = [Image.open(p).convert("RGB")
                for p in write_dataset(Path(folder) / "refs", args.refs, 1)]
        samples = [Image.open(p).convert("RGB")
                   for p in write_dataset(Path(folder) / "samples", args.n, 2)]
    model = fit(encoder.patch_grids(refs), [r.size for r in refs], LocalSettings())
    score(model, encoder.patch_grids(samples[:1])[0], samples[0].size)  # warm-up
    times = []
    for image in samples:
        start = time.perf_counter()
        score(model, encoder.patch_grids([image])[0], image.size)
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1000.0
    print(f"{platform.machine()}, Python {platform.python_version()}, torch threads "
          f"{torch.get_num_threads()}; model {args.model}, bank {len(model.bank)} patches from "
          f"{args.refs} maps; {args.n} maps of {samples[0].size[0]} x {samples[0].size[1]}")
    print(f"anomaly map per image: median {np.median(ms):.1f} ms, "
          f"90th percentile {np.percentile(ms, 90):.1f} ms, best {ms.min():.1f} ms")


if __name__ == "__main__":
    main()
