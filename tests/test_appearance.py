"""Appearance is read in the legend, phase by phase: the map VLKB reads, not the pixels that
carry it nor how much of the picture each phase fills."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from engine.appearance import (
    POOLED_PHASES,
    appearance_modality,
    distances,
    legend_of,
    pooled_by_phase,
    read_in_legend,
)
from engine.metrology.quantities import PHASES, UNCLASSIFIED
from engine.metrology.synthetic import Degradation, degrade, write_dataset
from kb.config import DEFAULT_LEGEND
from kb.embeddings import APPEARANCE, is_modality
from tests.foreign_images import photograph


def test_the_modality_names_the_legend_it_reads_in_and_gives_it_back() -> None:
    modality = appearance_modality(DEFAULT_LEGEND)
    assert is_modality(modality) and legend_of(modality) == dict(DEFAULT_LEGEND)
    other = {**DEFAULT_LEGEND, "carbide": (250, 100, 170)}
    assert appearance_modality(other) != modality
    assert appearance_modality(None) == APPEARANCE and legend_of(APPEARANCE) is None


def test_a_clean_map_reads_as_itself_and_a_noisy_copy_as_the_clean_map(tmp_path: Path) -> None:
    (path,) = write_dataset(tmp_path, 1, seed=515)
    clean = Image.open(path).convert("RGB")
    assert np.array_equal(np.asarray(read_in_legend(clean, DEFAULT_LEGEND)[0]), np.asarray(clean))
    noisy = degrade(clean, Degradation(noise_sigma=12.0))
    read = np.asarray(read_in_legend(noisy, DEFAULT_LEGEND)[0])
    same = (read == np.asarray(clean)).all(axis=2).mean()
    assert same > 0.99, same
    moved = np.abs(np.asarray(noisy, dtype=float) - np.asarray(clean, dtype=float)).mean()
    assert moved > 4.0, moved  # the pixels did change


def test_an_image_that_is_no_phase_map_is_described_as_it_is() -> None:
    photo = photograph()
    assert np.array_equal(np.asarray(read_in_legend(photo, DEFAULT_LEGEND)[0]), np.asarray(photo))


def test_pooling_by_phase_is_each_phases_unit_mean_and_zeros_for_a_missing_one() -> None:
    labels = np.full((4, 8), PHASES.index("background"), dtype=np.uint8)
    labels[2:, :] = PHASES.index("bead")
    labels[3, 7] = UNCLASSIFIED  # counts for no phase
    features = np.zeros((2, 2, 4), dtype=np.float32)  # (channels, h, w): one cell per 2x2 px
    features[:, 0, :] = np.array([3.0, 4.0])[:, None]  # the background's cells
    features[:, 1, :] = np.array([1.0, 0.0])[:, None]  # the bead's
    blocks = pooled_by_phase(features, labels).reshape(len(POOLED_PHASES), 2)
    by_phase = dict(zip(POOLED_PHASES, blocks, strict=True))
    assert np.allclose(by_phase["background"], [0.6, 0.8])
    assert np.allclose(by_phase["bead"], [1.0, 0.0])
    assert not by_phase["haz"].any() and not by_phase["carbide"].any()
    assert not pooled_by_phase(features, None).any()  # no phase map, no phases


def test_distance_by_phase_averages_over_the_phases_both_images_show() -> None:
    modality = appearance_modality(DEFAULT_LEGEND)
    phases, dim = len(POOLED_PHASES), 2

    def image(**blocks: tuple[float, float]) -> np.ndarray:
        row = np.zeros((phases, dim))
        for phase, vector in blocks.items():
            row[POOLED_PHASES.index(phase)] = np.asarray(vector) / np.linalg.norm(vector)
        return row.ravel()

    a = image(background=(1, 0), bead=(1, 0))
    b = image(background=(1, 0), bead=(0, 1), haz=(1, 0))  # the HAZ is not in a: left out
    c = image(carbide=(1, 0))  # nothing in common with a
    found = distances(np.stack([a]), np.stack([b, c, a]), modality)
    assert np.allclose(found, [[(0.0 + 1.0) / 2, 1.0, 0.0]])
    unit_a, unit_b = a / np.linalg.norm(a), b / np.linalg.norm(b)  # raw rows: 1 - dot
    assert np.allclose(distances(np.stack([unit_a]), np.stack([unit_a, unit_b]), APPEARANCE),
                       [[0.0, 1.0 - 1.0 / np.sqrt(6)]])
