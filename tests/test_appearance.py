"""Appearance is read in the legend: the map VLKB reads, not the pixels that carry it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from engine.appearance import appearance_modality, as_read, legend_of
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
    assert np.array_equal(np.asarray(as_read(clean, DEFAULT_LEGEND)), np.asarray(clean))
    noisy = degrade(clean, Degradation(noise_sigma=12.0))
    read = np.asarray(as_read(noisy, DEFAULT_LEGEND))
    same = (read == np.asarray(clean)).all(axis=2).mean()
    assert same > 0.99, same
    moved = np.abs(np.asarray(noisy, dtype=float) - np.asarray(clean, dtype=float)).mean()
    assert moved > 4.0, moved  # the pixels did change


def test_an_image_that_is_no_phase_map_is_described_as_it_is() -> None:
    photo = photograph()
    assert np.array_equal(np.asarray(as_read(photo, DEFAULT_LEGEND)), np.asarray(photo))
