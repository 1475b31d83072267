"""The training objective of the dual encoder, checked against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from engine.training.captions import ASSESSMENTS, POLARITIES, Caption
from engine.training.objective import (
    CaptionSampler,
    batch_z_loss,
    label_loss,
    phase_loss,
    phase_weights,
    separation_loss,
)


def test_separation_is_softplus_of_the_wanted_minus_the_actual_d_prime() -> None:
    delta = torch.tensor([1.0, 3.0, -1.0, -3.0])  # accepts 1, 3; rejects -1, -3
    target = torch.tensor([0, 0, 1, 1])
    # class means 2 and -2, each population variance 1: d' = 4 / 1
    expected = math.log1p(math.exp(6.0 - 4.0))
    assert float(separation_loss(delta, target, wanted=6.0)) == pytest.approx(expected, rel=1e-5)
    # a delta that moves with another verdict (within-class spread) separates less
    mixed = torch.tensor([1.0, 5.0, -1.0, -5.0])
    assert float(separation_loss(mixed, target, 6.0)) > float(separation_loss(delta, target, 6.0))
    assert float(separation_loss(delta[:3], target[:3], 6.0)) == 0.0  # one reject: no spread


def test_batch_z_loss_adds_the_separation_term_only_when_asked() -> None:
    delta = torch.tensor([1.0, 3.0, -1.0, -3.0])
    target = torch.tensor([0, 0, 1, 1])
    weight = torch.tensor([1.0, 1.0])
    plain = batch_z_loss(delta, target, weight)
    both = batch_z_loss(delta, target, weight, separation=(0.5, 6.0))
    assert float(both - plain) == pytest.approx(0.5 * float(separation_loss(delta, target, 6.0)))


def test_phase_weights_are_inverse_shares_scaled_to_mean_one() -> None:
    cells = torch.zeros((1, 3, 1, 2))
    cells[0, 0] = 0.75  # shares over the set: 0.75, 0.2, 0.05
    cells[0, 1] = 0.2
    cells[0, 2] = 0.05
    weights = phase_weights(cells).flatten()
    inverse = torch.tensor([1 / 0.75, 1 / 0.2, 1 / 0.05])
    torch.testing.assert_close(weights, inverse / inverse.mean())


def test_phase_loss_is_weighted_soft_cross_entropy_plus_the_pore_error() -> None:
    cells = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)  # two phases; phase 1 is pores
    weights = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    predicted = torch.tensor([0.0, 0.0, 2.0]).view(1, 3, 1, 1)  # even shares; pore map 2.0
    # soft cross-entropy: -(0.5 * 1 * log .5 + 0.5 * 3 * log .5); pores: (2.0 - 10 * 0.5)^2
    expected = -(0.5 + 1.5) * math.log(0.5) + 4.0 * (2.0 - 5.0) ** 2
    loss = phase_loss(predicted, cells, weights, pore_index=1, pore_weight=4.0)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_label_loss_counts_judged_labels_only() -> None:
    logits = torch.tensor([[0.0, 100.0]])
    accept = torch.tensor([[True, False]])  # the second is badly wrong, but not judged
    judged = torch.tensor([[True, False]])
    assert float(label_loss(logits, accept, judged)) == pytest.approx(math.log(2.0), rel=1e-5)


def test_caption_sampler_draws_handfuls_of_the_right_assessment_and_polarity() -> None:
    captions = [
        Caption(key, polarity, f"{key} {polarity} {i}", colour=i == 0, plain=i == 1)
        for key in ASSESSMENTS for polarity in POLARITIES for i in range(3)
    ]
    sampler = CaptionSampler(captions, torch.Generator().manual_seed(0))
    handfuls = sampler.draw(draws=5, largest=4)
    assert len(handfuls) == len(ASSESSMENTS)
    for key, per_key in zip(ASSESSMENTS, handfuls, strict=True):
        assert len(per_key) == 5
        for pair in per_key:
            assert pair.shape[0] == 2 and 1 <= pair.shape[1] <= 4
            for polarity, rows in zip(POLARITIES, pair, strict=True):
                assert {captions[i].assessment for i in rows.tolist()} == {key}
                assert {captions[i].polarity for i in rows.tolist()} == {polarity}
    again = CaptionSampler(captions, torch.Generator().manual_seed(0)).draw(5, 4)
    assert all(torch.equal(a, b) for x, y in zip(handfuls, again, strict=True)
               for a, b in zip(x, y, strict=True))
    with pytest.raises(ValueError, match="no colour captions for EA-1 positive"):
        CaptionSampler([c for c in captions if not c.colour], torch.Generator())
