"""The model card's evaluation helpers: prompt replacement in rules and the target check."""

from __future__ import annotations

import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest

from engine.training.card_evaluation import ModelEvaluation, with_prompts
from engine.training.model_card import model_card
from engine.training.paraphrases import HELD_OUT
from engine.training.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
NEW = {"positive": ["a sound part"], "negative": ["a bad part", 'a "quoted" flaw']}


def test_with_prompts_replaces_every_prompt_table_and_keeps_the_rest() -> None:
    original = (ROOT / "rules" / "assessments" / "EA-4.toml").read_text()
    before = tomllib.loads(original)
    assert before["prompts"]["variants"]  # the example has a colour variant to drop
    after = tomllib.loads(with_prompts(original, NEW))
    assert after["prompts"] == NEW
    assert {k: v for k, v in after.items() if k != "prompts"} == {
        k: v for k, v in before.items() if k != "prompts"
    }


def test_with_prompts_leaves_an_assessment_without_prompts_alone() -> None:
    text = 'key = "EA-9"\nname = "x"\n\n[decision]\nthreshold = 0.0\n'
    assert tomllib.loads(with_prompts(text, NEW)) == tomllib.loads(text)


def _block(ba: float, review: float = 0.1) -> dict:
    return {"n": 50, "balanced_accuracy": ba, "review_rate": review, "auroc": 0.9,
            "confusion": {"tp": 20, "fn": 2, "tn": 20, "fp": 3}}


def _evaluation(hybrid: float, text: float, robust: float) -> ModelEvaluation:
    modes = {"text": _block(text), "image": _block(0.95), "hybrid": _block(hybrid),
             "final": _block(0.99)}
    return ModelEvaluation(
        seed=5, images=50, accepts={"EA-1": 24, "EA-2": 30},
        shipped={"EA-1": modes, "EA-2": {**modes, "hybrid": _block(0.97)}},
        paraphrased={HELD_OUT: {"EA-1": _block(robust), "EA-2": _block(text)},
                     "plain-a": {"EA-1": _block(0.5), "EA-2": _block(0.5)}},
    )


def test_targets_are_checked_against_hand_computed_gaps() -> None:
    assert _evaluation(hybrid=0.93, text=0.90, robust=0.86).missed_targets() == []
    missed = _evaluation(hybrid=0.89, text=0.90, robust=0.84).missed_targets()
    assert missed == ["EA-1 hybrid 0.890 < 0.90", "EA-1 paraphrased text -0.060 below shipped"]
    assert _evaluation(0.93, 0.90, 0.84).paraphrase_gap("EA-1") == pytest.approx(-0.06)


def test_markdown_and_card_show_every_assessment_with_review_rates() -> None:
    evaluation = _evaluation(hybrid=0.89, text=0.90, robust=0.86)
    table = evaluation.markdown()
    assert "| EA-1 | 24 / 50 | 0.900 (10%) | 0.950 (10%) | 0.890 (10%) |" in table
    assert "| EA-2 | 30 / 50 |" in table and "-0.040" in table
    round_trip = ModelEvaluation.from_dict(evaluation.to_dict())
    assert round_trip.markdown() == table
    record = {
        "command": "kb train-vlr out", "captions": 10, "seconds": {"total": 60.0},
        "epoch_losses": [1.0], "first_steps_loss": 2.0, "parameters": {"vision_model": 10},
        "machine": {"cpus": 2, "cpu_threads": 2, "torch": "2.13.0"},
        "config": asdict(TrainConfig(n_images=8, epochs=1)),
        "evaluation": evaluation.to_dict(),
    }
    card = model_card(record)
    assert table in card and "Missed: EA-1 hybrid 0.890 < 0.90." in card
    assert "MobileNetV1" in card and "8 micrographs" in card
    # a development set that misses by far is reported, not judged
    assert "plain-a text" in table and "EA-1 paraphrased" not in card
