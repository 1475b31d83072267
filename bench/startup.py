"""Where the time of one short command goes: `kb qualify` of one image, `kb history` and
`kb add-reference` of one image, each beside `python -c "import torch"` measured in the same
run, and the slowest imports of the qualify path.

Issue 20's targets: `kb qualify` of one image with the shipped model at most 2.5x the torch
import; `kb history` at most 1 s; `kb add-reference KEY one.png` at most 2.5x the torch import.

    .venv/bin/python bench/startup.py [--repeat 5] [--json bench/results/startup.json]

Every command runs as a fresh process on a scratch copy of the example workspace (synced and
qualified once before timing, so the local banks are in the knowledge base), the way a person
runs it; the qualify after each add-reference refits EA-4's local bank. The best of
`--repeat` runs is reported, since the machine is shared and the slowest runs measure the
neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
KB = str(Path(sys.executable).with_name("kb"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}


def wall(command: list[str], cwd: Path) -> float:
    """Seconds one process takes from start to exit; it must succeed."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()[-400:]}")
    return seconds


def scratch_workspace(folder: Path) -> Path:
    """A copy of the example workspace with its own knowledge base, synced."""
    workspace = folder / "ws"
    workspace.mkdir(parents=True)
    for name in ("kb.toml", "rules", "models"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, workspace / name)
    wall([KB, "sync", "-w", str(workspace)], folder)
    return workspace


def fresh_reference(folder: Path, index: int) -> Path:
    """A new image each time (one pixel differs), so add-reference always adds a file."""
    pixels = np.asarray(Image.open(ROOT / "examples" / "sound-bead-a.png").convert("RGB")).copy()
    pixels[0, index % pixels.shape[1]] = (0, 0, 1)
    path = folder / f"reference-{index}.png"
    Image.fromarray(pixels).save(path)
    return path


def slowest_imports(module: str, top: int = 12) -> list[tuple[str, float]]:
    """(module, cumulative seconds) of the slowest imports under `module`, by -X importtime."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, check=True)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split("|"))
        rows.append((name.strip(), int(cumulative) / 1e6))
    return sorted(rows, key=lambda row: -row[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vlkb-startup-") as scratch:
        folder = Path(scratch)
        workspace = scratch_workspace(folder)
        sample = ROOT / "examples" / "porous-bead.png"
        timings: dict[str, list[float]] = {
            "import torch": [], "kb qualify (1 image)": [], "kb history": [],
            "kb add-reference (1 image)": [], "kb qualify after add-reference": []}
        wall([KB, "qualify", str(sample), "-w", str(workspace)], folder)  # fits the banks once
        for _ in range(args.repeat):
            timings["import torch"].append(wall([sys.executable, "-c", "import torch"], folder))
            timings["kb qualify (1 image)"].append(
                wall([KB, "qualify", str(sample), "-w", str(workspace)], folder))
            timings["kb history"].append(wall([KB, "history", "-w", str(workspace)], folder))
        for run in range(args.repeat):  # each new reference refits its assessment's local bank
            timings["kb add-reference (1 image)"].append(wall(
                [KB, "add-reference", "EA-4", "--positive", str(fresh_reference(folder, run)),
                 "-w", str(workspace)], folder))
            timings["kb qualify after add-reference"].append(
                wall([KB, "qualify", str(sample), "-w", str(workspace)], folder))
    best = {name: min(values) for name, values in timings.items()}
    torch_s = best["import torch"]
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                   f"Python {platform.python_version()}",
        "repeat": args.repeat,
        "best_s": best,
        "ratio_to_torch_import": {name: s / torch_s for name, s in best.items()},
        "slowest_imports_of_cli_qualify_path": slowest_imports("engine.qualify"),
    }
    print(f"{'command':<32} {'best s':>7} {'x torch import':>15}")
    for name, seconds in best.items():
        print(f"{name:<32} {seconds:7.2f} {seconds / torch_s:15.2f}")
    print("\nslowest imports under engine.qualify (cumulative s):")
    for name, seconds in report["slowest_imports_of_cli_qualify_path"]:
        print(f"  {seconds:6.2f}  {name}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
