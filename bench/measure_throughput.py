"""Throughput of `kb measure` on generated 640 x 480 phase maps.

    .venv/bin/python bench/measure_throughput.py [--n 200] [--repeat 3]

Times two things: the whole command as a user runs it (`kb measure --json` on all files,
process start and model-free imports included) and the in-process loop (decode + classify
+ measure per file) that the command spends its time in. Prints images per second.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.metrology.measure import measure_paths
from engine.metrology.synthetic import write_dataset
from kb.config import Workspace
from kb.init import config_text

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "kb.toml").write_text(config_text(), encoding="utf-8")
        paths = write_dataset(root / "maps", n=args.n, seed=1)
        workspace = Workspace.open(root)

        loop = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            measured, failures = measure_paths(workspace, paths)
            loop.append(time.perf_counter() - start)
            assert len(measured) == args.n and not failures

        command = [str(Path(sys.executable).with_name("kb")), "measure", "--json", "-w", tmp]
        whole = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            subprocess.run([*command, *map(str, paths)], check=True, capture_output=True)
            whole.append(time.perf_counter() - start)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"images: {args.n} generated 640x480 PNG phase maps, best of {args.repeat}")
    print(f"in-process measure_paths: {args.n / min(loop):.1f} images/s")
    print(f"kb measure --json (whole command): {args.n / min(whole):.1f} images/s")


if __name__ == "__main__":
    main()
