"""MODEL_CARD.md of a trained dual encoder: how it was made and how `kb evaluate` judges it.

The card is rendered from the checkpoint's training.json alone, so it can be rewritten after a
re-evaluation on another fresh set (`kb model-card OUTDIR --seed S`) without
retraining, and a reader can trace every figure to the record.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from engine.encoders import text_tower
from engine.training.captions import CLAUSE_FRAMES, PHRASE_FRAMES
from engine.training.card_evaluation import (
    HYBRID_TARGET,
    ROBUSTNESS_TOLERANCE,
    ModelEvaluation,
    evaluate_model,
)
from engine.training.paraphrases import HELD_OUT
from kb.errors import VLKBError

TITLE = "# vlkb-dual-niwc: a dual encoder for colour-segmented Ni-WC DED micrographs"


def evaluate_checkpoint(outdir: Path, rules_dir: Path, n: int, seed: int) -> ModelEvaluation:
    """`kb evaluate` the saved checkpoint, loaded the way VLKB loads it, in a scratch folder."""
    with tempfile.TemporaryDirectory(prefix="vlkb-model-card-") as scratch:
        return evaluate_model(Path(outdir), Path(rules_dir), Path(scratch), n=n, seed=seed)


def reevaluate(outdir: Path, rules_dir: Path, n: int, seed: int) -> ModelEvaluation:
    """Evaluate a saved checkpoint on another fresh set; rewrite training.json's evaluation,
    the card and the checksums (e.g. after choosing between runs on a development seed)."""
    path = Path(outdir) / "training.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    if seed == record["config"]["seed"]:
        raise VLKBError(f"the evaluation seed must differ from the training seed {seed}")
    started = time.monotonic()
    evaluation = evaluate_checkpoint(Path(outdir), rules_dir, n, seed)
    record["seconds"]["evaluation"] = round(time.monotonic() - started, 1)
    record["evaluation"] = evaluation.to_dict()
    record["evaluation_command"] = (
        f"kb model-card OUTDIR --rules {rules_dir} --n {n} --seed {seed}"
    )
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    write_model_card(outdir)
    text_tower.write_checksums(outdir)
    return evaluation


def write_model_card(outdir: Path) -> Path:
    """(Re)write MODEL_CARD.md from training.json; the card is not under SHA256SUMS."""
    record = json.loads((Path(outdir) / "training.json").read_text(encoding="utf-8"))
    path = Path(outdir) / "MODEL_CARD.md"
    path.write_text(model_card(record), encoding="utf-8")
    return path


def model_card(record: dict) -> str:
    """The card: what the model is, how it was trained, the evaluation table, its limits."""
    lines = [TITLE, "", *_introduction(), "", "## Training", "", *_training(record), ""]
    if record.get("evaluation"):
        lines += ["## Evaluation", "", *_evaluation(record), ""]
    if record.get("generalisation"):
        lines += ["## Generalisation", "", *_generalisation(record), ""]
    if record.get("notes"):
        lines += ["## Development notes", "", *[f"- {note}" for note in record["notes"]], ""]
    lines += ["## Limits", "", *_limits(record["config"].get("families") or []), ""]
    return "\n".join(lines)


def _introduction() -> list[str]:
    return [
        "A transformers `VisionTextDualEncoderModel`: a small MobileNetV1 image tower trained by "
        "VLKB against the frozen all-MiniLM-L6-v2 sentence encoder (locked-text tuning). Load "
        "it with VLKB's `dual` backend; the text tower is not in this folder but the pinned "
        f"package `{text_tower.MINILM_L6_V2.pip_requirement}` (`text_tower.json`; the SHA-256 of "
        "its weights and tokenizer files is checked on load, `SHA256SUMS` covers this "
        "folder's files)."
    ]


def _training(record: dict) -> list[str]:
    c = record["config"]
    seconds = record["seconds"]
    machine = record["machine"]
    trained = sum(v for k, v in record["parameters"].items() if "frozen" not in k)
    command = f"- command: `{record['command'] or 'engine.training.train.train'}`"
    if record.get("evaluation_command"):
        command += f"; evaluation: `{record['evaluation_command']}`"
    return [
        command,
        f"- seed: {c['seed']}",
        _data_line(c),
        f"- captions: {record['captions']} sentences generated from templates "
        "(engine/training/captions.py): per assessment and polarity, metallurgical, plain-word and "
        "colour-aware wording, many words per slot, quantifiers and size words on both "
        f"polarities of an assessment, in {len(PHRASE_FRAMES) + len(CLAUSE_FRAMES)} "
        "framings; none is a prompt of the example workspace or of a paraphrase set",
        f"- image tower: MobileNetV1 (batch-normalised, depth multiplier "
        f"{c['depth_multiplier']}) on the whole map resized to {c['image_width']}x"
        f"{c['image_height']} (bilinear); projections to {c['projection_dim']}-d; "
        f"{trained / 1e6:.2f} M trained parameters; the text tower (22.7 M) is frozen and not "
        "saved",
        f"- stage 1, learning to see (the first {c['see_fraction']:.0%} of the steps): the "
        "phase share of every cell of a 1/8-resolution grid (soft cross-entropy, rare phases "
        f"weighted up, and {c['pore_weight']} x the squared error of the pore share on its "
        f"own), {c['aux_weight']} x the true quantities (tanh of the signed distance to each "
        "limit, and the pore count) and the accept labels from the pooled features; "
        "these heads are not saved",
        "- stage 2, learning to talk: adds, per assessment, the image against random handfuls "
        "(1-6) of positive vs negative captions (two-way contrast over net similarity; "
        "colour-free, plain-word, colour-aware and mixed handfuls) and "
        f"{c['image_loss_weight']} x the same against handfuls of same-label vs other-label "
        "images of the batch (how references are scored), each also after z-scoring the "
        f"deltas over the batch and with a separation term ({c['separation_weight']} x "
        f"softplus({c['separation_target']} - d')); inverse-frequency class weights, harder "
        "assessments weighted up; an assessment unmeasurable on an image (the carbide "
        "distribution of a flat bead) is left out for that image",
        f"- optimiser: AdamW, lr {c['learning_rate']}, weight decay {c['weight_decay']}, "
        f"batch {c['batch_size']}, {c['epochs']} epochs, {c['warmup_fraction']:.0%} warm-up "
        "then cosine, random horizontal mirroring; batch-norm statistics recomputed over "
        "2048 training images at the end",
        f"- epoch losses: {', '.join(f'{x:.3f}' for x in record['epoch_losses'])} (stage 1 "
        f"alone at first, so they jump where stage 2 starts; its first steps: "
        f"{record['first_steps_loss']:.3f})",
        f"- duration: {seconds.get('total', 0) / 60:.1f} min on {machine['cpus']} CPU cores "
        f"(torch {machine['torch']}, {machine['cpu_threads']} threads): data "
        f"{seconds.get('data', 0) / 60:.1f} min, training "
        f"{seconds.get('training', 0) / 60:.1f} min; the evaluation below took "
        f"{seconds.get('evaluation', 0) / 60:.1f} min more",
    ]


def _evaluation(record: dict) -> list[str]:
    evaluation = ModelEvaluation.from_dict(record["evaluation"])
    missed = evaluation.missed_targets()
    return [
        f"`kb evaluate` on a fresh generated set (`kb synth --n {evaluation.images} --seed "
        f"{evaluation.seed}`, a seed never used in training or development), in a scratch "
        "workspace holding the example's rules/ with both roles bound to this checkpoint: "
        "reference-calibrated z-scores, the rules' thresholds and review margins. Each cell is "
        "the balanced accuracy over the decided samples, with the review rate in brackets. "
        "`text` and `image`: one role alone; `hybrid`: their fused z-score; `final`: the "
        "tree's verdict, measurements included. EA-5 and EA-6 count only the beads the tree "
        "judges for carbides (EA-3 not rejected). The paraphrase columns are the text role "
        "after replacing every prompt with a set of plain-word paraphrases without colour "
        f"names (engine/training/paraphrases.py): `{HELD_OUT}` is the held-out check, written by a "
        "helper who saw only the criteria and read by the developers only after the caption "
        "banks and this model were frozen (its docstring tells its history); the others are "
        "development sets, reported and not judged.",
        "",
        evaluation.markdown(),
        "",
        "How well each wording ranks the images, whatever threshold the references set (a "
        "paraphrase that ranks as well as the shipped prompts but decides worse is let down "
        "by where its reference statistics put the threshold, not by its words):",
        "",
        evaluation.ranking_markdown(),
        "",
        f"Targets: hybrid >= {HYBRID_TARGET:.2f} on every assessment; `{HELD_OUT}` text "
        f"within {ROBUSTNESS_TOLERANCE:.2f} of the shipped prompts' text. "
        + ("All met." if not missed else "Missed: " + "; ".join(missed) + "."),
    ]


def record_generalisation(outdir: Path, name: str, command: str, note: str, table: str) -> None:
    """Keep one generalisation table (e.g. per generator family, or leave one family out) in
    training.json under `name`, replacing an older one of that name; rewrite the card and the
    checksums."""
    path = Path(outdir) / "training.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    tables = record.setdefault("generalisation", {})
    tables[name] = {"command": command, "note": note, "markdown": table}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    write_model_card(outdir)
    text_tower.write_checksums(outdir)


def _generalisation(record: dict) -> list[str]:
    """Each stored table with the command that measured it (bench/family_generalisation.py)."""
    lines: list[str] = []
    for name, table in record["generalisation"].items():
        lines += [f"### {name}", "", table["note"], "", f"`{table['command']}`", "",
                  table["markdown"], ""]
    return lines[:-1]


def _limits(families: list[str]) -> list[str]:
    seen = (
        f"- Trained on generated phase maps in the default legend at 10 um/px, varied by the "
        f"generator's families ({', '.join(families)}); other legends, pixel sizes, variation "
        "beyond the families' ranges and real micrographs are outside what it has seen."
        if families else
        "- Trained on generated phase maps in the default legend at 10 um/px; other legends, "
        "pixel sizes, degraded (JPEG, noisy) or real micrographs are outside what it has seen."
    )
    return [
        seen,
        "- Flat beads (EA-3 reject) have no measurable carbide distribution: the generator "
        "labels their EA-6 reject, training leaves them out of EA-6, and the detection tree "
        "does not judge EA-5/EA-6 for them.",
        "- Wording: prompts in other words than the captions' are scored through the frozen "
        "sentence encoder's sense of similarity; check a reworded prompt with `kb evaluate` "
        "before trusting it.",
    ]


def _data_line(c: dict) -> str:
    """What the model was trained on: the default generator, or domain randomisation."""
    families = c.get("families") or []
    framed = (
        "; the tower sees each map through the window `engine/encoders/framing.py` centres on "
        "its content (640x480 px or larger, the content never cut), in training and at run "
        "time alike, so margins and picture size do not change what it reads"
        if c.get("frame_on_content") else ""
    )
    if not families:
        return (
            f"- data: {c['n_images']} micrographs drawn by `engine.metrology.synthetic` "
            f"(`sample_specs({c['n_images']}, {c['seed']})`, 640x480 px at 10 um/px, default "
            "legend, PNG-exact), labelled from their ground truth with the example limits of "
            f"EA-1..EA-6 (`label_sample`){framed}"
        )
    return (
        f"- data: {c['n_images']} micrographs drawn by `engine.metrology.families` "
        f"(`sample_variants({c['n_images']}, {c['seed']}, {tuple(families)}, "
        f"share={c['family_share']})`: each image takes each of the families "
        f"{', '.join(families)} with probability {c['family_share']}, the rest drawn as the "
        "default generator draws them; 10 um/px, default legend), labelled from their ground "
        f"truth with the example limits of EA-1..EA-6 (`label_sample`){framed}"
    )
