"""The article's formulas against numbers worked out by hand."""

import math

import numpy as np
import pytest

from engine.scoring import (
    Normalization,
    decide,
    fuse,
    judge_measurement,
    l2_normalize,
    leave_one_out_deltas,
    mean_direction,
    net_similarity,
    population_stats,
    zscore,
)


def test_mean_direction_renormalises_the_mean_of_unit_vectors():
    # (1,0) and (0,2) -> unit (1,0), (0,1) -> mean (.5,.5) -> (1/sqrt2, 1/sqrt2)
    centre = mean_direction(np.array([[1.0, 0.0], [0.0, 2.0]]))
    assert centre == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2)])


def test_net_similarity_is_cosine_to_positive_minus_cosine_to_negative():
    image = np.array([[3.0, 4.0]])  # unit: (0.6, 0.8)
    delta = net_similarity(image, np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    assert delta == pytest.approx([0.6 - 0.8])


def test_zero_vectors_do_not_become_nan():
    assert np.all(l2_normalize(np.zeros((2, 3))) == 0)


def test_population_std_and_zscore():
    stats = population_stats(np.array([1.0, 2.0, 3.0, 4.0]), "batch")
    assert stats.mu == 2.5
    assert stats.sigma == pytest.approx(math.sqrt(1.25))  # ddof = 0, as the article
    assert zscore(4.0, stats) == pytest.approx(1.5 / math.sqrt(1.25))


def test_zscore_with_no_spread_is_zero():
    assert zscore(np.array([0.3, 0.3]), Normalization(0.3, 0.0, "batch", 2)).tolist() == [0, 0]


def test_leave_one_out_excludes_the_reference_from_its_own_mean():
    pos = np.array([[1.0, 0.0], [0.0, 1.0]])
    neg = np.array([[-1.0, 0.0]])
    deltas = leave_one_out_deltas(pos, neg)
    # reference (1,0) vs remaining positive (0,1): cos 0; vs negative (-1,0): cos -1 -> +1
    # reference (0,1) vs remaining positive (1,0): cos 0; vs negative: cos 0 -> 0
    # the single negative has no leave-one-out mean and is skipped
    assert deltas.tolist() == pytest.approx([1.0, 0.0])


def test_leave_one_out_deltas_of_negatives_keep_the_positive_minus_negative_sign():
    pos = np.array([[1.0, 0.0]])
    neg = np.array([[0.0, 1.0], [0.0, 1.0]])
    # negative (0,1): cos to positive 0, to the other negative 1 -> delta -1
    assert leave_one_out_deltas(pos, neg).tolist() == pytest.approx([-1.0, -1.0])


def test_fusion_zsum_and_weighted():
    z = {"text": 1.0, "image": -0.5}
    assert fuse(z, "zsum", {}) == pytest.approx(0.5)
    assert fuse(z, "weighted", {"text": 3.0, "image": 1.0}) == pytest.approx((3 - 0.5) / 4)
    with pytest.raises(ValueError):
        fuse(z, "median", {})


@pytest.mark.parametrize(
    ("score", "margin", "expected"),
    [
        (0.5, 0.0, "accept"),
        (0.0, 0.0, "accept"),
        (-0.01, 0.0, "reject"),
        (0.2, 0.25, "review"),
        (-0.2, 0.25, "review"),
        (0.3, 0.25, "accept"),
        (-0.3, 0.25, "reject"),
    ],
)
def test_decision_with_symmetric_review_band(score, margin, expected):
    assert decide(score, 0.0, margin) == expected


@pytest.mark.parametrize(
    ("value", "op", "limit", "uncertainty", "expected"),
    [
        (0.04, "<=", 0.05, 0.0, "accept"),
        (0.05, "<=", 0.05, 0.0, "accept"),
        (0.06, "<=", 0.05, 0.0, "reject"),
        (0.05, "<", 0.05, 0.0, "reject"),
        (0.31, ">=", 0.30, 0.0, "accept"),
        (0.29, ">=", 0.30, 0.0, "reject"),
        (0.30, ">", 0.30, 0.0, "reject"),
        (0.31, ">", 0.30, 0.0, "accept"),
        (0.049, "<=", 0.05, 0.005, "review"),
        (0.054, "<=", 0.05, 0.005, "review"),
        (0.056, "<=", 0.05, 0.005, "reject"),
        (0.044, "<=", 0.05, 0.005, "accept"),
    ],
)
def test_measurement_rules_and_review_band(value, op, limit, uncertainty, expected):
    assert judge_measurement(value, op, limit, uncertainty) == expected
