"""Training VLKB's dual encoder: captions, identical preprocessing, a short real run, the CLI."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from engine import dual
from engine.captions import (
    ASSESSMENTS,
    DEVELOPMENT_PARAPHRASES,
    POLARITIES,
    ROBUSTNESS_PROMPTS,
    caption_bank,
    names_a_colour,
    normalise,
)
from engine.encoders import DualEncoder, load_encoder
from engine.synth import BeadSpec, paint, render_bead, render_resized
from engine.train_vlr import TrainConfig, make_processor, to_pixel_values, train
from kb.config import DEFAULT_LEGEND, ModelSpec
from kb.errors import VLKBError

ROOT = Path(__file__).resolve().parent.parent

# A ViT small enough to train in seconds: 4x4 patches of 80x60 maps.
TINY = TrainConfig(
    seed=3,
    n_images=24,
    epochs=8,
    batch_size=8,
    learning_rate=3e-3,
    image_height=60,
    image_width=80,
    patch_size=20,
    hidden_size=32,
    layers=1,
    heads=2,
    projection_dim=16,
    draws=2,
    workers=1,
    captions_per_group=3,
)


def _workspace_prompts() -> set[str]:
    prompts = set()
    for path in (ROOT / "rules" / "assessments").glob("*.toml"):
        data = tomllib.loads(path.read_text())["prompts"]
        for table in (data, *data.get("variants", {}).values()):
            prompts |= {normalise(t) for p in POLARITIES for t in table.get(p, [])}
    return prompts


def _robustness_prompts() -> list[str]:
    sets = (ROBUSTNESS_PROMPTS, DEVELOPMENT_PARAPHRASES)
    return [t for s in sets for key in s.values() for p in POLARITIES for t in key[p]]


def test_caption_bank_covers_every_assessment_polarity_and_register() -> None:
    bank = caption_bank()
    assert len(bank) >= 2000
    assert len({normalise(c.text) for c in bank}) == len(bank)
    for key in ASSESSMENTS:
        for polarity in POLARITIES:
            group = [c for c in bank if c.assessment == key and c.polarity == polarity]
            assert sum(c.colour for c in group) >= 40 and sum(not c.colour for c in group) >= 100
            assert all(names_a_colour(c.text) == c.colour for c in group)


def test_captions_never_contain_the_prompts_they_are_judged_with() -> None:
    captions = {normalise(c.text) for c in caption_bank()}
    shipped = _workspace_prompts()
    assert len(shipped) >= 30
    assert not captions & shipped
    robust = {normalise(t) for t in _robustness_prompts()}
    assert len(robust) == 2 * 4 * len(ASSESSMENTS)
    assert not captions & robust
    assert not robust & shipped


def test_held_out_paraphrases_use_words_no_caption_uses() -> None:
    words = " ".join(normalise(c.text) for c in caption_bank())
    for phrase in ("filler", "hard bits", "air pocket", "torch"):
        assert phrase in " ".join(t for k in ROBUSTNESS_PROMPTS.values() for p in k.values()
                                  for t in p)
        assert phrase not in words, phrase


def test_robustness_prompts_are_plain_and_colour_free() -> None:
    for text in _robustness_prompts():
        assert not names_a_colour(text), text
        assert "dark" not in text and "haz" not in text.lower()


def test_training_preprocessing_is_the_encoders() -> None:
    """Maps resized in the worker processes and normalised in torch equal the processor's."""
    config = TrainConfig()
    processor = make_processor(config)
    spec = BeadSpec(porosity=0.04, max_pore_um=200.0, distribution="clustered")
    image = paint(render_bead(spec, 10.0, seed=5), DEFAULT_LEGEND)
    size = (config.image_height, config.image_width)
    resized, labels, quantities = render_resized(spec, 5, size, int(processor.resample))
    raw = processor(images=[image], return_tensors="pt", do_rescale=False, do_normalize=False)
    np.testing.assert_array_equal(resized, raw["pixel_values"][0].numpy())  # the same pixels
    expected = processor(images=[image], return_tensors="pt")["pixel_values"].numpy()
    np.testing.assert_allclose(to_pixel_values(resized[None], processor), expected, atol=1e-6)
    assert labels["EA-4"] == "reject" and quantities["max_pore_diameter_um"] > 150


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    outdir = tmp_path_factory.mktemp("train") / "tiny-dual"
    lines: list[str] = []
    result = train(
        outdir, TINY, log=lines.append, evaluate_with=ROOT / "rules", eval_n=12, eval_seed=11,
        command="pytest tiny run",
    )
    return outdir, result, lines


def test_short_training_run_lowers_the_loss(tiny_run) -> None:
    _, result, lines = tiny_run
    assert len(result.losses) == TINY.epochs
    assert result.losses[-1] < result.first_loss - 0.02, (result.first_loss, result.losses)
    assert result.losses[-1] < result.losses[0]
    assert any("generated 24 micrographs" in line for line in lines)


def test_training_writes_a_loadable_checkpoint_and_card(tiny_run) -> None:
    outdir, result, _ = tiny_run
    assert not outdir.with_name(outdir.name + ".partial").exists()
    names = {p.name for p in outdir.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "text_tower.json",
            "SHA256SUMS", "training.json", "MODEL_CARD.md"} <= names
    encoder = load_encoder(ModelSpec(name="tiny", backend="dual", source=str(outdir)))
    assert isinstance(encoder, DualEncoder) and encoder.dim == TINY.projection_dim
    rows = encoder.embed_texts(["low dilution", "a porous bead"])
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    record = json.loads((outdir / "training.json").read_text())
    assert record["config"]["seed"] == TINY.seed and record["command"] == "pytest tiny run"
    evaluation = record["evaluation"]
    assert evaluation["images"] == 12 and evaluation["seed"] == 11
    assert set(evaluation["shipped"]) == set(ASSESSMENTS)
    assert set(evaluation["paraphrased"]) == {"robust", "development"}
    card = (outdir / "MODEL_CARD.md").read_text()
    assert "pytest tiny run" in card and "| EA-1 |" in card and "seed: 3" in card
    assert "kb synth --n 12 --seed 11" in card
    config = json.loads((outdir / "config.json").read_text())
    assert config["text_config"]["_name_or_path"] == dual.MINILM_L6_V2.upstream


def test_training_is_reproducible_and_refuses_a_used_folder(tiny_run, tmp_path: Path) -> None:
    outdir, result, _ = tiny_run
    with pytest.raises(VLKBError, match="not an empty folder"):
        train(outdir, TINY, log=lambda _: None)
    with pytest.raises(VLKBError, match="evaluation seed must differ"):
        train(tmp_path / "x", TINY, evaluate_with=ROOT / "rules", eval_seed=TINY.seed)
    again = train(tmp_path / "again", TINY, log=lambda _: None)
    assert again.losses == pytest.approx(result.losses, abs=1e-5)
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
        outdir / "model.safetensors"
    ).read_bytes()


def test_cli_train_vlr_is_registered_and_refuses_a_used_folder(tmp_path: Path) -> None:
    runner = CliRunner()
    help_text = runner.invoke(app, ["train-vlr", "--help"]).output
    for option in ("--seed", "--n-images", "--epochs"):
        assert option in help_text
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    result = runner.invoke(app, ["train-vlr", str(tmp_path / "used"), "--seed", "1"])
    assert result.exit_code == 1
    assert "not an empty folder" in result.output
