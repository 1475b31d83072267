"""The Ray executor on this machine: throughput, driver memory over a long run, and the rate
at which the one chain writer stores records.

    HF_HUB_OFFLINE=1 nice .venv/bin/python bench/ray_throughput.py \\
        [--n 96] [--long 10000] [--writes 300] [--parts throughput,writes,memory]
        [--json-out FILE]

Every part uses the repository's example workspace (kb.toml and rules/, both roles on the
shipped dual encoder models/vlkb-dual-niwc), copied into a temporary folder with a fresh
SQLite knowledge base per run, so no run finds another's embeddings cached.

1. Throughput (--n images, 640 x 480 phase maps from engine.metrology.synthetic, seed 1901):
   `qualify_paths` with the in-process executor, then on a local Ray cluster of all this
   machine's CPUs (started once, its start timed apart) with 1 and with 2 workers; wall time of
   each whole call, so the Ray figures include starting the actors and loading the model in
   each. Calibrated normalisation (the default; one pass).
2. Driver memory (--long images, 2 Ray workers): 96 x 96 crops at random places of 100 of the
   generated maps, so that 10,000 distinct files are quick to make (a crop is mostly not a
   whole bead, so most go to review: the verdicts do not matter here). `keep_results=False`,
   as `kb qualify --json` runs; the driver's VmRSS (/proc/self/status) every 250 stored
   records. Flat: the last quarter's mean within 5 % (and 50 MiB) of the first quarter's.
3. Chain write rate (--writes records): samples judged as a Ray worker judges them (with the
   vectors it hands back), then stored a chunk per transaction exactly as the driver stores
   them (`engine.qualify.store_chunk`, chunks of `engine.qualify.CHUNK`), on an SQLite file
   on local disk (journal and synchronous at SQLite's defaults) and on a PostgreSQL 15 server
   started for the run (tests/pg_server.py, with fsync on, unlike the tests' server).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `bench.`, `tests.` and the engine import

from bench.memory_batch import flatness, slope_per_1000, vm_rss_mb  # noqa: E402


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def workspace(root: Path, url: str | None = None) -> Path:
    """A synced copy of the example workspace with the shipped model, its own database."""
    from engine.session import VLKB
    from engine.sync import sync_workspace
    from tests.workspaces import use_database

    root.mkdir(parents=True)
    (root / "models").symlink_to(ROOT / "models", target_is_directory=True)
    shutil.copy(ROOT / "kb.toml", root / "kb.toml")
    shutil.copytree(ROOT / "rules", root / "rules")
    if url is not None:
        use_database(root, url)
    with VLKB.open(root) as vlkb:
        sync_workspace(vlkb)
    return root


def crops(maps: list[Path], folder: Path, n: int) -> list[Path]:
    """n distinct 96 x 96 crops at random places of the maps."""
    from PIL import Image

    rng = random.Random(7)
    folder.mkdir(parents=True)
    opened = [Image.open(p).convert("RGB") for p in maps]
    paths = []
    for i in range(n):
        image = opened[i % len(opened)]
        x, y = rng.randrange(image.width - 96), rng.randrange(image.height - 96)
        path = folder / f"crop-{i:05d}.png"
        image.crop((x, y, x + 96, y + 96)).save(path)
        paths.append(path)
    return paths


def throughput(tmp: Path, images: list[Path]) -> dict:
    import ray

    from engine.qualify import ExecutorOptions, QualifyOptions, qualify_paths
    from engine.session import VLKB

    runs: dict[str, dict] = {}

    def run(name: str, executor: ExecutorOptions) -> None:
        root = workspace(tmp / f"ws-{name}")
        with VLKB.open(root) as vlkb:
            started = time.perf_counter()
            outcome = qualify_paths(vlkb, images, QualifyOptions(executor=executor),
                                    keep_results=False)
            seconds = time.perf_counter() - started
        assert outcome.stored == len(images) and not outcome.failures, outcome.failures
        load = os.getloadavg()[0]  # this machine is shared: how busy it was meanwhile
        runs[name] = {"seconds": seconds, "images_per_s": len(images) / seconds,
                      "load_average_1min": load}
        say(f"  {name}: {seconds:.1f} s, {len(images) / seconds:.2f} images/s (load {load:.1f})")

    run("in-process", ExecutorOptions())
    started = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             log_to_driver=False)
    runs["ray cluster start"] = {"seconds": time.perf_counter() - started}
    for workers in (1, 2):
        run(f"ray, {workers} worker(s)", ExecutorOptions("ray", workers=workers))
    return runs


def driver_memory(tmp: Path, images: list[Path]) -> dict:
    from engine.qualify import ExecutorOptions, QualifyOptions, qualify_paths
    from engine.session import VLKB

    samples: list[tuple[int, float]] = []
    count = 0

    def stored(_result: object) -> None:
        nonlocal count
        count += 1
        if count % 250 == 0:
            samples.append((count, vm_rss_mb() or 0.0))

    root = workspace(tmp / "ws-long")
    options = QualifyOptions(executor=ExecutorOptions("ray", workers=2))
    before = vm_rss_mb()
    with VLKB.open(root) as vlkb:
        started = time.perf_counter()
        outcome = qualify_paths(vlkb, images, options, on_result=stored, keep_results=False)
        seconds = time.perf_counter() - started
    series = [mb for _, mb in samples]
    return {
        "images": len(images), "stored": outcome.stored, "failures": len(outcome.failures),
        "seconds": seconds, "images_per_s": len(images) / seconds,
        "rss_before_mb": before, "rss_samples": samples, **flatness(series),
        "slope_mb_per_1000": slope_per_1000(samples),
    }


def write_rate(tmp: Path, images: list[Path]) -> dict:
    """Records per second of the driver's store step on each backend."""
    from engine.judging import Judged, embed_chunk, judge_files
    from engine.qualify import CHUNK, QualifyOptions, _plan_run, chunks, store_chunk
    from engine.session import VLKB
    from tests import pg_server

    source = workspace(tmp / "ws-judge")
    with VLKB.open(source) as vlkb:
        row, plan, _ = _plan_run(vlkb, QualifyOptions())
        judged = [item for chunk in chunks(images)
                  for item in judge_files(plan, vlkb.models, chunk,
                                          lambda s: embed_chunk(vlkb.models, s, plan),
                                          keep_vectors=True)]
    assert all(isinstance(item, Judged) for item in judged)
    server = pg_server.start(durable=True)
    rates: dict[str, dict] = {}
    try:
        for backend, url in (("sqlite", None), ("postgresql", server.new_database("bench"))):
            root = workspace(tmp / f"ws-write-{backend}", url)
            with VLKB.open(root) as vlkb:  # synced: ruleset version 1, as where they were judged
                started = time.perf_counter()
                for start in range(0, len(judged), CHUNK):
                    store_chunk(vlkb.kb, row, judged[start : start + CHUNK])
                seconds = time.perf_counter() - started
            rates[backend] = {"records": len(judged), "seconds": seconds,
                              "records_per_s": len(judged) / seconds}
            say(f"  {backend}: {len(judged) / seconds:.1f} records/s")
    finally:
        server.stop()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=96, help="images of the throughput runs")
    parser.add_argument("--long", type=int, default=10_000, help="images of the memory run")
    parser.add_argument("--writes", type=int, default=300, help="records per write-rate run")
    parser.add_argument("--parts", default="throughput,writes,memory",
                        help="which of throughput, writes and memory to run (comma-separated)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    from engine.metrology.synthetic import write_dataset

    tmp = Path(tempfile.mkdtemp(prefix="vlkb-ray-bench-"))
    try:
        report: dict = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_average_at_start": os.getloadavg()},
        }
        wanted = [args.n] * ("throughput" in parts) + [args.writes] * ("writes" in parts)
        maps = write_dataset(tmp / "maps", n=max([*wanted, 100]), seed=1901)
        if "throughput" in parts:
            say(f"throughput, {args.n} images:")
            report["throughput"] = throughput(tmp, maps[: args.n])
        if "writes" in parts:
            say(f"chain write rate, {args.writes} records:")
            report["write_rate"] = write_rate(tmp, maps[: args.writes])
        if "memory" in parts:
            say(f"driver memory, {args.long} images on 2 workers:")
            memory = driver_memory(tmp, crops(maps[:100], tmp / "crops", args.long))
            report["driver_memory"] = memory
            say(f"  {memory['images_per_s']:.1f} images/s; driver RSS first quarter "
                f"{memory['first_quarter_mb']} MiB, last {memory['last_quarter_mb']} MiB, "
                f"flat: {memory['flat']}, slope {memory['slope_mb_per_1000']} MiB/1000")
        report["machine"]["load_average_at_end"] = os.getloadavg()
        text = json.dumps(report, indent=2)
        if args.json_out:
            args.json_out.write_text(text + "\n", encoding="utf-8")
        print(text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
