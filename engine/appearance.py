"""What an image looks like to a model, for applicability, and how a legend shapes it.

A phase map's pixels stand for phases: acquisition noise, JPEG and blur change the pixels
but not the map VLKB reads from them, and margins, image size and the bead's shape change
how much of the picture each phase fills but not what each phase looks like. For a model
trained over those changes (`Encoder.acquisition_trained`), appearance is therefore taken
phase by phase of the map as read in the legend: each classified pixel is redrawn in its
phase's pure colour, and the model's appearance map is pooled over each phase's area
(background, HAZ, bead, carbide). For any other model it is the raw pixels' channel mean,
so noise it never saw keeps it from judging. An image that is not drawn in the legend has
no phases and lies as far from every reference as anything can.

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
    phase_cells,
)
from kb.config import RGB
from kb.embeddings import APPEARANCE, APPEARANCE_BY_PHASE, IMAGE
from kb.rules import Ruleset

if TYPE_CHECKING:  # torch is imported by the command that loads a model, not by this module
    from engine.encoders.base import Encoder

Legend = Mapping[str, RGB]

# The phases appearance is pooled over: the ones every map shows over many cells of the
# appearance map (a fusion line is a pixel or two wide, pores are few and small).
POOLED_PHASES = ("background", "haz", "bead", "carbide")
# A phase covering less than this many cells of the appearance map is taken as absent.
MIN_PHASE_CELLS = 2.0


def measured_legend(ruleset: Ruleset, legend: Legend) -> Legend | None:
    """The workspace's legend where its rules measure phase maps, else None (nothing is read
    as a map, and appearance is that of the raw pixels)."""
    return legend if any(a.measurements for a in ruleset.assessments.values()) else None


def appearance_modality(legend: Legend | None) -> str:
    """The cache's name for appearance read in this legend (or of the raw pixels)."""
    if legend is None:
        return APPEARANCE
    return APPEARANCE_BY_PHASE + ",".join(
        "{:02x}{:02x}{:02x}".format(*legend[phase]) for phase in PHASES
    )


def model_appearance(encoder: Encoder, legend: Legend | None) -> str:
    """The appearance this model's applicability is measured in: read in the legend only for
    a model trained over acquisition variation, else of the raw pixels."""
    return appearance_modality(legend if encoder.acquisition_trained else None)


def legend_of(modality: str) -> dict[str, RGB] | None:
    """The legend an appearance modality reads images in; None for raw appearance."""
    if not modality.startswith(APPEARANCE_BY_PHASE):
        return None
    colours = modality.removeprefix(APPEARANCE_BY_PHASE).split(",")
    return {
        phase: (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16))
        for phase, c in zip(PHASES, colours, strict=True)
    }


def read_in_legend(image: Image.Image, legend: Legend) -> tuple[Image.Image, np.ndarray | None]:
    """The phase map VLKB reads from the image, in the legend's pure colours (pixels it
    leaves unclassified keep their own), and its labels; an image that is no phase map is
    returned as it is, without labels."""
    try:
        labels = classify_phases(image, dict(legend))
    except NotASegmentationMap:
        return image, None
    palette = np.array([legend[phase] for phase in PHASES], dtype=np.uint8)
    known = labels != UNCLASSIFIED
    drawn = np.array(image.convert("RGB"))
    drawn[known] = palette[labels[known]]
    return Image.fromarray(drawn), labels


def pooled_by_phase(features: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """(len(POOLED_PHASES) * channels,): the (channels, h, w) map's mean over each pooled
    phase's area, each block a unit vector, a block of zeros for a phase the map lacks (and
    all zeros without labels)."""
    channels, height, width = features.shape
    blocks = np.zeros((len(POOLED_PHASES), channels), dtype=np.float64)
    if labels is None:
        return blocks.ravel()
    shares = phase_cells(labels, (height, width)).astype(np.float64)
    flat = features.reshape(channels, -1).astype(np.float64)
    for i, phase in enumerate(POOLED_PHASES):
        weights = shares[PHASES.index(phase)].ravel()
        if weights.sum() < MIN_PHASE_CELLS:
            continue
        mean = flat @ weights / weights.sum()
        norm = np.linalg.norm(mean)
        if norm > 0:
            blocks[i] = mean / norm
    return blocks.ravel()


def distances(samples: np.ndarray, references: np.ndarray, modality: str) -> np.ndarray:
    """(n, m) appearance distances in [0, 2]: 1 - cosine for unit rows; for appearance by
    phase, the mean of 1 - cosine over the phases both images show (1 where they share none,
    as far as an image can lie)."""
    samples, references = np.atleast_2d(samples), np.atleast_2d(references)
    if legend_of(modality) is None:
        return 1.0 - samples @ references.T
    phases = len(POOLED_PHASES)
    a = samples.reshape(len(samples), phases, -1)
    b = references.reshape(len(references), phases, -1)
    cosines = np.einsum("npc,mpc->nmp", a, b)
    shared = (np.abs(a).sum(axis=2) > 0)[:, None, :] & (np.abs(b).sum(axis=2) > 0)[None, :, :]
    count = shared.sum(axis=2)
    mean = np.where(shared, cosines, 0.0).sum(axis=2) / np.maximum(count, 1)
    return np.where(count > 0, 1.0 - mean, 1.0)


def vectors_of(encoder: Encoder, modality: str, images: Sequence[Image.Image]) -> np.ndarray:
    """(n, dim) float32 rows: the images' embeddings or appearance, as `modality` says (unit
    rows, or for appearance by phase one unit or zero block per pooled phase)."""
    if modality == IMAGE:
        return encoder.embed_images(images)
    legend = legend_of(modality)
    if legend is None:
        return encoder.appearance(images)
    read = [read_in_legend(image, legend) for image in images]
    maps = encoder.appearance_maps([image for image, _ in read])
    return np.stack([
        pooled_by_phase(features, labels) for features, (_, labels) in zip(maps, read, strict=True)
    ]).astype(np.float32)
