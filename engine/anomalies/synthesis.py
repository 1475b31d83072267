"""`kb synth-anomalies SRC OUT`: defects drawn into good images the way DRAEM and CLIP-MDC
draw them, each with its mask, for a workspace that has good references and no defects.

A defect is a Perlin-noise blob (engine/anomalies/perlin.py) at a random scale and rotation,
thresholded into a mask, filled with a texture (engine/anomalies/textures.py) and blended
with the image by a random factor: out = image outside the mask, and
(1 - beta) * texture + beta * image inside it, beta drawn from [0, 0.8]. Every output has its
own random stream from (seed, output number), so the same sources and seed give the same
bytes, and an unreadable source changes nothing but which sources take turns.
"""

from __future__ import annotations

import csv
import io
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.anomalies.perlin import perlin_noise
from engine.anomalies.textures import TextureSource, texture_source
from engine.inputs import expand_inputs
from engine.results import SampleFailure
from engine.samples import load_sample
from kb.errors import ImageError, OptionError, VLKBError

SCALE_POWERS = 6  # lattice cells across the image: 2**0 .. 2**5, drawn per axis (DRAEM)
THRESHOLD = 0.5  # noise above this is the defect
MAX_BETA = 0.8  # how much of the image shows through the texture, at most
TRIES = 50  # noise draws per output before its area is accepted as impossible
FOREGROUND_DISTANCE = 30.0  # RGB distance from the border colour that makes a pixel content
MIN_FOREGROUND = 0.01  # --foreground on a picture with less content than this fails
MASKS = "masks"
MANIFEST = "anomalies.csv"


@dataclass(frozen=True)
class AnomalyOptions:
    """What to draw; every value checked here, whoever builds the options."""

    n: int
    seed: int = 0
    texture: str = "self"  # self, perlin or a folder of texture images
    min_area: float = 0.002  # share of the image (or its foreground) a defect covers, at least
    max_area: float = 0.3  # and at most
    foreground: bool = False  # keep defects off the picture's background (its border colour)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise OptionError("n", f"must be at least 1, not {self.n}")
        if self.seed < 0:
            raise OptionError("seed", f"must be 0 or more, not {self.seed}")
        for name in ("min_area", "max_area"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:  # also refuses NaN
                raise OptionError(name, f"must be a share of the image above 0 and at most 1, "
                                  f"not {value}")
        if self.min_area >= self.max_area:
            raise OptionError("min_area", f"{self.min_area} must be below --max-area "
                              f"{self.max_area}")


@dataclass(frozen=True)
class Anomaly:
    """One image written, its mask and how its defect was drawn (a row of the manifest)."""

    image: Path
    mask: Path
    source: str
    texture: str
    cells: tuple[int, int]  # lattice cells across and down
    angle_deg: float
    beta: float
    area: float  # share of the image the mask covers

    def row(self) -> dict[str, Any]:
        return {
            "image": self.image.name,
            "mask": f"{MASKS}/{self.mask.name}",
            "source": self.source,
            "texture": self.texture,
            "cells_x": self.cells[0],
            "cells_y": self.cells[1],
            "angle_deg": f"{self.angle_deg:.2f}",
            "beta": f"{self.beta:.4f}",
            "area": f"{self.area:.5f}",
        }


@dataclass
class AnomalyOutcome:
    """What a run wrote and which inputs failed, each failure one line naming its file."""

    written: list[Anomaly] = field(default_factory=list)
    failures: list[SampleFailure] = field(default_factory=list)
    manifest: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": [str(a.image) for a in self.written],
            "masks": [str(a.mask) for a in self.written],
            "manifest": str(self.manifest) if self.manifest else None,
            "failures": [f.to_dict() for f in self.failures],
        }


def synthesize_anomalies(
    sources: Sequence[str | Path], outdir: Path, options: AnomalyOptions
) -> AnomalyOutcome:
    """Write options.n defective images into outdir (output k from the k-th readable source,
    taking turns), masks/<stem>.png beside them (255 = defect) and anomalies.csv."""
    outdir = Path(outdir)
    paths, failures = expand_inputs(sources)
    _refuse_output_among_sources(outdir, sources)
    texture, texture_failures = texture_source(options.texture)
    outcome = AnomalyOutcome(failures=failures + texture_failures)
    good = []
    for path in paths:  # read once to know which take turns; drawn from a second read
        try:
            load_sample(path)
            good.append(path)
        except VLKBError as exc:
            outcome.failures.append(SampleFailure(str(path), str(exc)))
    if not good:
        return outcome
    try:
        (outdir / MASKS).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VLKBError(f"cannot write to {outdir}: {exc.strerror or exc}") from exc
    written: dict[int, Anomaly] = {}
    for first, path in enumerate(good):
        _draw_source(path, range(first, options.n, len(good)), outdir, texture, options,
                     written, outcome.failures)
    outcome.written = [written[k] for k in sorted(written)]
    if outcome.written:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(outcome.written[0].row()))
        writer.writeheader()
        writer.writerows(a.row() for a in outcome.written)
        outcome.manifest = _write(outdir / MANIFEST, buffer.getvalue().encode("utf-8"))
    return outcome


def draw_anomaly(
    image: np.ndarray,
    rng: np.random.Generator,
    texture: TextureSource,
    options: AnomalyOptions,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One defect in an RGB uint8 image: the new image, its mask and how it was drawn.

    ImageError when no noise draw gives a mask of the allowed area (or, with foreground,
    when the picture has almost no content to draw on).
    """
    height, width = image.shape[:2]
    allowed = _foreground(image) if options.foreground else np.ones((height, width), bool)
    room = int(np.count_nonzero(allowed))
    if room < MIN_FOREGROUND * height * width:
        raise ImageError("almost nothing but background (its border colour) to draw a defect "
                         "on; leave out --foreground for this image")
    for _ in range(TRIES):
        cells = (2 ** int(rng.integers(SCALE_POWERS)), 2 ** int(rng.integers(SCALE_POWERS)))
        angle = float(rng.uniform(-90.0, 90.0))
        mask = (perlin_noise((height, width), cells, angle, rng) > THRESHOLD) & allowed
        area = np.count_nonzero(mask) / room
        if options.min_area <= area <= options.max_area:
            break
    else:
        raise ImageError(f"no defect covering {options.min_area:g} to {options.max_area:g} of "
                         f"it in {TRIES} draws; widen --min-area / --max-area")
    picture = image.astype(np.float64)
    filling, what = texture.draw(picture, rng)
    if _is_grey(image):
        filling = np.repeat(filling.mean(axis=2, keepdims=True), 3, axis=2)
    beta = float(rng.uniform(0.0, MAX_BETA))
    inside = mask[..., None]
    blended = np.where(inside, (1.0 - beta) * filling + beta * picture, picture)
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    drawn = {"texture": what, "cells": cells, "angle_deg": angle, "beta": beta,
             "area": float(np.count_nonzero(mask)) / (height * width)}
    return out, mask, drawn


def _draw_source(
    path: Path,
    outputs: range,
    outdir: Path,
    texture: TextureSource,
    options: AnomalyOptions,
    written: dict[int, Anomaly],
    failures: list[SampleFailure],
) -> None:
    """The outputs one source takes its turn for, into written; the first failure of the
    source ends its turns (its other outputs would fail alike) and is one line."""
    try:
        image = np.asarray(load_sample(path).image, dtype=np.uint8)
    except VLKBError as exc:  # changed since it was first read
        failures.append(SampleFailure(str(path), str(exc)))
        return
    grey = _is_grey(image)
    for k in outputs:
        rng = np.random.default_rng([options.seed, k])
        try:
            out, mask, drawn = draw_anomaly(image, rng, texture, options)
        except ImageError as exc:
            failures.append(SampleFailure(str(path), f"{path}: {exc}"))
            return
        stem = f"{k:04d}-{path.stem}"
        picture = Image.fromarray(out[..., 0] if grey else out)
        image_path = outdir / f"{stem}.png"
        mask_path = outdir / MASKS / f"{stem}.png"
        _write(mask_path, _png(Image.fromarray(mask.astype(np.uint8) * 255)))
        _write(image_path, _png(picture))  # the image last: no image is ever without its mask
        written[k] = Anomaly(image_path, mask_path, str(path), drawn["texture"], drawn["cells"],
                             drawn["angle_deg"], drawn["beta"], drawn["area"])


def _foreground(image: np.ndarray) -> np.ndarray:
    """Pixels unlike the picture's border colour (the median of its outermost pixels)."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float64)
    colour = np.median(border, axis=0)
    return np.linalg.norm(image.astype(np.float64) - colour, axis=2) > FOREGROUND_DISTANCE


def _is_grey(image: np.ndarray) -> bool:
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())


def _refuse_output_among_sources(outdir: Path, sources: Sequence[str | Path]) -> None:
    """Defective images written into a folder of good ones would be read as good next time."""
    target = outdir.resolve()
    for source in sources:
        folder = Path(source).resolve()
        if folder.is_dir() and (target == folder or target.is_relative_to(folder)):
            raise VLKBError(f"{outdir} lies inside the source folder {source}: write the "
                            "defective images elsewhere, or they would be read as good ones")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    """Write a file whole or not at all (a temporary beside it, then renamed)."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise VLKBError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
