"""Training VLKB's dual encoder: captions, identical preprocessing, a short real run, the CLI."""

from __future__ import annotations

import json
import math
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from engine.encoders import text_tower as dual
from engine.encoders.backends import load_encoder
from engine.encoders.vlkb_dual import VlkbDualEncoder
from engine.metrology.quantities import (
    BACKGROUND,
    BEAD,
    CARBIDE,
    PHASES,
    POROSITY,
    phase_cells,
)
from engine.metrology.synthetic import BeadSpec, Degradation, Frame, Variant, paint, render_bead
from engine.training.captions import (
    ASSESSMENTS,
    POLARITIES,
    caption_bank,
    is_plain,
    names_a_colour,
    normalise,
)
from engine.training.example import render_resized
from engine.training.model_card import record_generalisation
from engine.training.paraphrases import HELD_OUT, PARAPHRASES
from engine.training.train import TrainConfig, make_processor, to_pixel_values, train
from kb.config import DEFAULT_LEGEND, ModelSpec
from kb.errors import VLKBError

ROOT = Path(__file__).resolve().parent.parent

# A tower small enough to train in seconds: MobileNetV1 at its narrowest on 80x60 maps.
TINY = TrainConfig(
    seed=3,
    n_images=24,
    epochs=8,
    batch_size=8,
    learning_rate=3e-3,
    image_height=60,
    image_width=80,
    depth_multiplier=0.25,
    projection_dim=16,
    see_fraction=0.25,
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


def _paraphrases() -> list[str]:
    return [t for prompts in PARAPHRASES.values() for key in prompts.values()
            for p in POLARITIES for t in key[p]]


def test_caption_bank_covers_every_assessment_polarity_and_register() -> None:
    bank = caption_bank()
    assert len(bank) >= 6000
    assert len({normalise(c.text) for c in bank}) == len(bank)
    assert [c.text for c in bank] == [c.text for c in caption_bank()]  # the same every call
    for key in ASSESSMENTS:
        for polarity in POLARITIES:
            group = [c for c in bank if c.assessment == key and c.polarity == polarity]
            assert sum(c.colour for c in group) >= 40, (key, polarity)
            assert sum(c.plain for c in group) >= 60, (key, polarity)
            assert sum(not c.colour and not c.plain for c in group) >= 100, (key, polarity)
            assert all(names_a_colour(c.text) == c.colour for c in group)


def test_quantifiers_are_on_both_polarities() -> None:
    """No generic word decides a polarity: 'hardly any' accepts and rejects within EA-4."""
    bank = caption_bank()
    for key, word in (("EA-4", "hardly any"), ("EA-1", "hardly any"), ("EA-5", "few"),
                      ("EA-3", "a lot of"), ("EA-2", "deep"), ("EA-6", "most")):
        polarities = {c.polarity for c in bank if c.assessment == key and f" {word} " in
                      f" {normalise(c.text)} "}
        assert polarities == set(POLARITIES), (key, word, polarities)


def test_plain_and_colour_registers_are_told_apart() -> None:
    assert is_plain("the added metal sits on top of the plate")
    assert not is_plain("low dilution into the substrate")
    assert not is_plain("a green bead")  # colour words are a register of their own
    assert names_a_colour("dark blue spots in the bead") and not names_a_colour("a reddish")


def test_captions_never_contain_the_prompts_they_are_judged_with() -> None:
    captions = {normalise(c.text) for c in caption_bank()}
    shipped = _workspace_prompts()
    assert len(shipped) >= 30
    assert not captions & shipped
    paraphrased = {normalise(t) for t in _paraphrases()}
    assert len(paraphrased) == len(_paraphrases()) >= 3 * 2 * 2 * len(ASSESSMENTS)
    assert not captions & paraphrased
    assert not paraphrased & shipped


def test_paraphrase_sets_are_plain_colour_free_and_complete() -> None:
    assert HELD_OUT in PARAPHRASES
    for name, prompts in PARAPHRASES.items():
        assert set(prompts) == set(ASSESSMENTS), name
        for key in ASSESSMENTS:
            assert all(prompts[key][p] for p in POLARITIES), (name, key)
    for text in _paraphrases():
        assert not names_a_colour(text), text
        assert "dark" not in text and "haz" not in text.lower()


def test_training_preprocessing_is_the_encoders() -> None:
    """Maps resized in the worker processes and normalised in torch equal the processor's."""
    config = TrainConfig()
    processor = make_processor(config)
    spec = BeadSpec(porosity=0.04, max_pore_um=200.0, distribution="clustered")
    image = paint(render_bead(spec, 10.0, seed=5), DEFAULT_LEGEND)
    size = (config.image_height, config.image_width)
    resized, labels, quantities, cells = render_resized(
        Variant(spec, Frame(), Degradation(), "default"), 5, size, int(processor.resample)
    )
    assert cells is None
    raw = processor(images=[image], return_tensors="pt", do_rescale=False, do_normalize=False)
    np.testing.assert_array_equal(resized, raw["pixel_values"][0].numpy())  # the same pixels
    expected = processor(images=[image], return_tensors="pt")["pixel_values"].numpy()
    np.testing.assert_allclose(to_pixel_values(resized[None], processor), expected, atol=1e-6)
    assert labels["EA-4"] == "reject" and quantities["max_pore_diameter_um"] > 150


def test_phase_cells_are_each_phases_share_of_a_grid_cell() -> None:
    """A 4x6 map on a 2x3 grid, shares counted by hand."""
    labels = np.zeros((4, 6), dtype=np.uint8)  # background
    labels[0, 0] = POROSITY  # top-left cell: 1 pore pixel of 4
    labels[2:, 4:] = BEAD  # bottom-right cell: all bead
    labels[3, 2] = CARBIDE  # bottom-middle cell: 1 carbide pixel of 4
    cells = phase_cells(labels, (2, 3))
    assert cells.shape == (len(PHASES), 2, 3)
    np.testing.assert_allclose(cells.sum(axis=0), 1.0)
    assert cells[POROSITY, 0, 0] == 0.25 and cells[BACKGROUND, 0, 0] == 0.75
    assert cells[BEAD, 1, 2] == 1.0 and cells[CARBIDE, 1, 1] == 0.25
    assert cells[POROSITY].sum() == 0.25 and cells[BACKGROUND, 0, 1] == 1.0
    spec = BeadSpec(porosity=0.04)
    sample = render_resized(Variant(spec, Frame(), Degradation(), "default"), 5, (60, 80),
                            int(make_processor(TINY).resample), grid=(8, 10))
    assert sample.cells.shape == (len(PHASES), 8, 10)
    assert 0 < sample.cells[POROSITY].mean() < 0.1


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
    # The first epochs only learn to see, so each stage is compared with its own start.
    steps = TINY.n_images // TINY.batch_size
    talking = math.ceil(int(TINY.see_fraction * steps * TINY.epochs) / steps)
    assert 0 < talking < TINY.epochs - 1
    assert result.losses[talking - 1] < result.losses[0], result.losses
    assert result.losses[-1] < result.first_loss - 0.02, (result.first_loss, result.losses)
    assert result.losses[-1] < result.losses[talking], result.losses
    assert any("generated 24 micrographs" in line for line in lines)


def test_training_writes_a_loadable_checkpoint_and_card(tiny_run) -> None:
    outdir, result, _ = tiny_run
    assert not outdir.with_name(outdir.name + ".partial").exists()
    names = {p.name for p in outdir.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "text_tower.json",
            "SHA256SUMS", "training.json", "MODEL_CARD.md"} <= names
    encoder = load_encoder(ModelSpec(name="tiny", backend="dual", source=str(outdir)))
    assert isinstance(encoder, VlkbDualEncoder) and encoder.dim == TINY.projection_dim
    rows = encoder.embed_texts(["low dilution", "a porous bead"])
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    record = json.loads((outdir / "training.json").read_text())
    assert record["config"]["seed"] == TINY.seed and record["command"] == "pytest tiny run"
    evaluation = record["evaluation"]
    assert evaluation["images"] == 12 and evaluation["seed"] == 11
    assert set(evaluation["shipped"]) == set(ASSESSMENTS)
    assert set(evaluation["paraphrased"]) == set(PARAPHRASES)
    card = (outdir / "MODEL_CARD.md").read_text()
    assert "pytest tiny run" in card and "| EA-1 |" in card and "seed: 3" in card
    assert "kb synth --n 12 --seed 11" in card
    config = json.loads((outdir / "config.json").read_text())
    assert config["text_config"]["_name_or_path"] == dual.MINILM_L6_V2.upstream


def test_a_generalisation_table_is_kept_in_the_record_and_shown_on_the_card(
    tiny_run, tmp_path: Path
) -> None:
    outdir = tmp_path / "copy"
    shutil.copytree(tiny_run[0], outdir)
    record_generalisation(outdir, "Per generator family", "python bench/x.py --n 3", "Three.",
                          "| test set | EA-1 hybrid |\n| --- | --- |\n| haz | 0.950 (2%) |")
    record_generalisation(outdir, "Per generator family", "python bench/x.py --n 4", "Four.",
                          "| test set | EA-1 hybrid |\n| --- | --- |\n| haz | 0.900 (1%) |")
    stored = json.loads((outdir / "training.json").read_text())["generalisation"]
    assert list(stored) == ["Per generator family"] and stored["Per generator family"][
        "command"] == "python bench/x.py --n 4"
    card = (outdir / "MODEL_CARD.md").read_text()
    assert "## Generalisation" in card and "| haz | 0.900 (1%) |" in card
    assert "0.950" not in card and "`python bench/x.py --n 4`" in card
    load_encoder(ModelSpec(name="copy", backend="dual", source=str(outdir)))  # sums still hold


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


def test_training_images_can_be_drawn_as_any_family_varies_them() -> None:
    """A JPEG-degraded variant trains on what its file would hold, with the same truth."""
    size, resample = (60, 80), int(make_processor(TINY).resample)
    spec = BeadSpec(porosity=0.03)
    clean = render_resized(Variant(spec, Frame(), Degradation(), "default"), 5, size, resample)
    jpeg = Degradation(noise_sigma=6.0, jpeg_quality=70)
    degraded = render_resized(Variant(spec, Frame(), jpeg, "acquisition:jpeg"), 5, size, resample)
    assert degraded.labels == clean.labels and degraded.quantities == clean.quantities
    assert np.abs(degraded.pixels.astype(int) - clean.pixels).mean() > 1.0
    assert TrainConfig(families=("all",)).families == (
        "bead-shape", "haz", "carbides", "pores", "framing", "acquisition"
    )
    with pytest.raises(VLKBError, match="unknown family 'shiny'"):
        TrainConfig(families=("shiny",))
    code = CliRunner().invoke(app, ["train-vlr", "/tmp/never", "--hold-out", "haz"])
    assert code.exit_code != 0 and "give --family too" in code.output
