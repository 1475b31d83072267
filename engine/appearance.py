"""What an image looks like to a model, for applicability, and how a legend shapes it.

A phase map's pixels stand for phases: acquisition noise, JPEG and blur change the pixels
but not the map VLKB reads from them. For a model trained over those changes
(`Encoder.acquisition_trained`), appearance is therefore taken of the map as read in the
legend (each classified pixel redrawn in its phase's pure colour); for any other model, of
the raw pixels, so noise it never saw keeps it from judging. An image that is not drawn in
the legend's colours is described as it is, and lies far from every reference.

The legend travels in the modality's name, so a cached vector always names the function
that produced it, and a changed legend is never answered from a stale cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from engine.metrology.quantities import (
    PHASES,
    UNCLASSIFIED,
    NotASegmentationMap,
    classify_phases,
)
from kb.config import RGB
from kb.embeddings import APPEARANCE, APPEARANCE_IN_LEGEND, IMAGE
from kb.rules import Ruleset

if TYPE_CHECKING:  # torch is imported by the command that loads a model, not by this module
    from engine.encoders.base import Encoder

Legend = Mapping[str, RGB]


def measured_legend(ruleset: Ruleset, legend: Legend) -> Legend | None:
    """The workspace's legend where its rules measure phase maps, else None (nothing is read
    as a map, and appearance is that of the raw pixels)."""
    return legend if any(a.measurements for a in ruleset.assessments.values()) else None


def appearance_modality(legend: Legend | None) -> str:
    """The cache's name for appearance read in this legend (or of the raw pixels)."""
    if legend is None:
        return APPEARANCE
    return APPEARANCE_IN_LEGEND + ",".join(
        "{:02x}{:02x}{:02x}".format(*legend[phase]) for phase in PHASES
    )


def model_appearance(encoder: Encoder, legend: Legend | None) -> str:
    """The appearance this model's applicability is measured in: read in the legend only for
    a model trained over acquisition variation, else of the raw pixels."""
    return appearance_modality(legend if encoder.acquisition_trained else None)


def legend_of(modality: str) -> dict[str, RGB] | None:
    """The legend an appearance modality reads images in; None for raw appearance."""
    if not modality.startswith(APPEARANCE_IN_LEGEND):
        return None
    colours = modality.removeprefix(APPEARANCE_IN_LEGEND).split(",")
    return {
        phase: (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16))
        for phase, c in zip(PHASES, colours, strict=True)
    }


def as_read(image: Image.Image, legend: Legend) -> Image.Image:
    """The phase map VLKB reads from the image, in the legend's pure colours; pixels it
    leaves unclassified keep their own. An image that is no phase map is returned as it is."""
    try:
        labels = classify_phases(image, dict(legend))
    except NotASegmentationMap:
        return image
    palette = np.array([legend[phase] for phase in PHASES], dtype=np.uint8)
    known = labels != UNCLASSIFIED
    drawn = np.array(image.convert("RGB"))
    drawn[known] = palette[labels[known]]
    return Image.fromarray(drawn)


def vectors_of(encoder: Encoder, modality: str, images: Sequence[Image.Image]) -> np.ndarray:
    """(n, dim) float32 unit rows: the images' embeddings or appearance, as `modality` says."""
    if modality == IMAGE:
        return encoder.embed_images(images)
    legend = legend_of(modality)
    if legend is None:
        return encoder.appearance(images)
    return encoder.appearance([as_read(image, legend) for image in images])
