"""Images per second of the `cnn` image encoders on one CPU core at 224 px (issue 16, item 6).

    .venv/bin/python bench/cnn_encoders.py [--n 64] [--repeat 3] [--batch-size 16]

Each installed model (`kb models install --all`, run by `make install`) is loaded through the
production loader and embeds n generated 250 x 250 greyscale PNG-like images (decoded PIL
images: resizing, normalisation and the forward pass are timed, file reading is not) with
torch.set_num_threads(1); the best of `repeat` runs is printed, once per embedding mode.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.encoders import model_store
from engine.encoders.backends import load_encoder
from engine.encoders.cnn import CONFIG_FILE, EMBEDDINGS
from engine.encoders.cnn_install import CATALOGUE
from kb.config import ModelSpec


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(16)
    return [Image.fromarray(rng.integers(0, 256, (250, 250), dtype=np.uint8)) for _ in range(n)]


def _with_embedding(folder: Path, embedding: str, scratch: Path) -> Path:
    """A copy of the model folder whose config.json asks for another embedding mode."""
    copy = scratch / f"{folder.name}-{embedding}"
    copy.mkdir()
    for file in folder.iterdir():
        (copy / file.name).symlink_to(file)
    (copy / CONFIG_FILE).unlink()
    config = json.loads((folder / CONFIG_FILE).read_text()) | {"embedding": embedding}
    (copy / CONFIG_FILE).write_text(json.dumps(config))
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = _images(args.n)
    print(f"{platform.machine()}, {platform.python_version()}, torch {torch.__version__}, "
          f"1 thread, {args.n} images of 250 x 250 grey, batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in CATALOGUE:
            folder = model_store.installed_dir(name)
            if not folder.is_dir():
                print(f"{name}: not installed (run `kb models install {name}`)")
                continue
            for embedding in EMBEDDINGS:
                source = _with_embedding(folder, embedding, Path(tmp))
                spec = replace(ModelSpec(name, "cnn", str(source)), batch_size=args.batch_size)
                encoder = load_encoder(spec)
                encoder.embed_images(images[: args.batch_size])  # warm-up
                best = float("inf")
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    encoder.embed_images(images)
                    best = min(best, time.perf_counter() - start)
                print(f"{name:20s} {embedding:8s} dim {encoder.dim:5d}  "
                      f"{args.n / best:6.1f} images/s")


if __name__ == "__main__":
    main()
