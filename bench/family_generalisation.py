"""How far the dual encoder's verdicts travel: per generator family, leave one family out.

For each family F of `kb synth --family` (engine/metrology/families.py), a dual encoder is
trained with domain randomisation over every other family (`kb train-vlr --family all
--hold-out F`) and evaluated on n fresh maps that all vary by F (`kb synth --family F`), in a
scratch workspace holding the example's rules/ with both roles bound to it: the figure is what
the model does on a kind of variation it never saw. With `--model DIR` nothing is trained:
that checkpoint (for instance the shipped one) is evaluated on every family instead, and on a
fresh set drawn with every family at once.

Each cell: balanced accuracy over the decided samples (review rate), for the hybrid
vision-language score and for the tree's final verdict (measurements included).

    .venv/bin/python bench/family_generalisation.py --model models/vlkb-dual-niwc --n 100
    .venv/bin/python bench/family_generalisation.py --n-images 4000 --epochs 15 --n 100 \\
        --json-out bench/results/family_generalisation_lofo.json

`--card DIR` also keeps the table in that checkpoint's training.json and model card (section
"Generalisation"), with this command; leaving families out, after every fold. The second
command trains one model per family with the shipped recipe: about 28 minutes each on 2
cores, so run it in the background with its output in a file (`--families` picks folds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from engine.evaluation.folder import evaluate_folder
from engine.metrology.families import FAMILIES
from engine.metrology.synthetic import criteria_of, write_dataset
from engine.session import VLKB
from engine.training.card_evaluation import scratch_workspace
from engine.training.model_card import record_generalisation
from engine.training.train import TrainConfig, train
from kb.rules import compile_rules

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
MODES = ("hybrid", "final")
CELL_NOTE = ("Each cell: balanced accuracy over the decided samples (review rate); `hybrid` "
             "is the fused vision-language score, `final` the tree's verdict.")
EVAL_SEED = 8_642  # used by this bench only


def evaluate_on(model: Path, families: tuple[str, ...], n: int, seed: int, work: Path) -> dict:
    """Per assessment and mode: balanced accuracy and review rate on n maps of these families."""
    images = work / "maps"
    write_dataset(images, n, seed, criteria=criteria_of(compile_rules(RULES)), families=families)
    workspace = scratch_workspace(work / "ws", model, RULES)
    evaluation = evaluate_folder(VLKB(workspace), images, images / "labels.csv")
    return {
        key: {mode: {"balanced_accuracy": blocks[mode]["balanced_accuracy"],
                     "review_rate": blocks[mode]["review_rate"], "n": blocks[mode]["n"]}
              for mode in MODES if mode in blocks}
        for key, blocks in evaluation.assessments.items()
    }


def markdown(rows: dict[str, dict]) -> str:
    """One row per evaluated set, one column per assessment and mode."""
    keys = sorted({key for figures in rows.values() for key in figures})
    head = ["test set", *(f"{key} {mode}" for key in keys for mode in MODES)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, figures in rows.items():
        cells = [name]
        for key in keys:
            for mode in MODES:
                block = figures.get(key, {}).get(mode)
                ba = block and block["balanced_accuracy"]
                cells.append("-" if ba is None else f"{ba:.3f} ({block['review_rate']:.0%})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="evaluate this checkpoint; train nothing")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help="comma-separated families to hold out (or test on)")
    parser.add_argument("--n", type=int, default=120, help="evaluation maps per family")
    parser.add_argument("--n-images", type=int, default=4000, help="training maps per fold")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--frame-on-content", action="store_true",
                        help="train each fold with the tower framed on the map's content")
    parser.add_argument("--keep", type=Path, help="keep each fold's checkpoint in this folder")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--card", type=Path,
                        help="keep the table in this checkpoint's training.json and card")
    args = parser.parse_args()
    families = tuple(f for f in args.families.split(",") if f)
    rows: dict[str, dict] = {}
    record: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "seconds": {}}
    with tempfile.TemporaryDirectory(prefix="vlkb-families-") as scratch:
        tmp = Path(scratch)
        for family in families:
            started = time.monotonic()
            if args.model is not None:
                model, name = args.model, family
            else:
                folder = args.keep or tmp
                model = folder / f"without-{family}"
                config = TrainConfig(
                    seed=args.seed, n_images=args.n_images, epochs=args.epochs,
                    families=tuple(f for f in FAMILIES if f != family),
                    frame_on_content=args.frame_on_content,
                )
                train(model, config, log=lambda line: None, evaluate_with=None, eval_n=0)
                name = f"{family} (held out)"
            rows[name] = evaluate_on(model, (family,), args.n, EVAL_SEED, tmp / f"eval-{family}")
            record["seconds"][family] = round(time.monotonic() - started, 1)
            print(f"{name}: {time.monotonic() - started:.0f} s", flush=True)
            if args.json_out:  # after every fold, so a stopped run keeps what it measured
                args.json_out.write_text(json.dumps({**record, "rows": rows}, indent=2) + "\n")
            if args.card and args.model is None:
                keep_in_card(args, rows)
        if args.model is not None:
            rows["all families, fresh seed"] = evaluate_on(
                args.model, FAMILIES, args.n, EVAL_SEED + 1, tmp / "eval-all"
            )
    record["rows"] = rows
    table = markdown(rows)
    print(table)
    if args.json_out:
        args.json_out.write_text(json.dumps({**record, "markdown": table}, indent=2) + "\n")
    if args.card:
        keep_in_card(args, rows)


def keep_in_card(args: argparse.Namespace, rows: dict[str, dict]) -> None:
    """The table so far in the checkpoint's training.json and card, with this command."""
    command = " ".join(["python bench/family_generalisation.py", *sys.argv[1:]])
    if args.model is not None:
        name, note = "Per generator family", (
            f"`kb evaluate` of this checkpoint on {args.n} fresh maps (seed {EVAL_SEED}) "
            "per family of `kb synth --family`, each family varied alone, and on a fresh "
            f"set (seed {EVAL_SEED + 1}) varied by every family at once.")
    else:
        name, note = "Leave one family out", (
            f"Per family F, a model trained as this one but without F ({args.n_images} "
            f"images x {args.epochs} epochs, seed {args.seed}) is evaluated on {args.n} "
            f"fresh maps varied by F alone (seed {EVAL_SEED}): how the recipe does on a "
            "kind of variation it never saw.")
    record_generalisation(args.card, name, command, note + " " + CELL_NOTE, markdown(rows))


if __name__ == "__main__":
    main()
