"""Does a 2,000-image batch qualify in constant memory? RSS sampled along one long run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/memory_batch.py [--n 2000] [--small] [--cli]
        [--tracemalloc] [--json-out FILE]

The tiny test models (tests/model_factory.py) are bound to both roles of a copy of the example
workspace (kb.toml and rules/), which is synced, then the images are qualified in ONE call
(`--normalize batch` by default), in a fresh child process so that its RSS is the batch's alone:

- in-process: `engine.qualify.qualify_paths(vlkb, paths, ...)`, given what its signature
  offers: its `progress` callback (stage, done, total) and `on_result` callback note VmRSS (from
  /proc/self/status) every `--every` images of each stage, and `keep_results=False` (as
  `kb qualify --json` runs it; `--keep-results` to keep them). A thread also samples VmRSS every
  0.25 s. A forward hook counts the images CLIP embeds.
- `--cli`: the whole `kb qualify --json` command on the image folder (or, when the command does
  not take folders, on the files), its VmRSS read from /proc/PID/status every 0.25 s and its
  progress (image embeddings cached + qualifications stored) from its SQLite file every 2 s;
  samples before the first image is embedded (imports, model loading) are left out.

Flat means: mean RSS over the last quarter of the samples is within 5 % (and 50 MiB) of the
mean over the first quarter. Growth is also given per 1,000 images (least-squares slope over
the samples taken by image count). With `--tracemalloc` the child also compares Python
allocations at 25 % and at 100 % of the stored results (and after the call), and prints the
top lines: where the growth is held (tracemalloc sees Python and numpy allocations, not PIL's
or torch's own buffers).

Images: engine.metrology.synthetic phase maps (640 x 480 PNG, as the example micrographs) by
default;
`--small` writes 96 x 96 crops of them instead (faster to make, but a decoded image then weighs
27 KB instead of 900 KB, so growth that scales with decoded images looks 33x smaller).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `bench.`, `tests.` and the engine import

from bench.article_vs_vlkb import bind_models, say  # noqa: E402

FLAT_TOLERANCE = 0.05  # relative
FLAT_SLACK_MB = 50.0


def vm_rss_mb(pid: int | str = "self") -> float | None:
    """Resident set size in MiB from /proc/PID/status (None once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class Sampler(threading.Thread):
    """VmRSS of a process every `period` s until stopped: [(seconds, MiB, progress)].

    With `db` (a workspace's SQLite file) progress is read from outside, the way a user could:
    image embeddings cached plus qualifications stored so far (None while the file is locked).
    The file is read only every `db_period` s, so that the reads hardly delay the writer.
    """

    def __init__(
        self,
        pid: int | str = "self",
        period: float = 0.25,
        db: Path | None = None,
        db_period: float = 2.0,
    ) -> None:
        super().__init__(daemon=True)
        self.pid, self.period, self.db, self.db_period = pid, period, db, db_period
        self._read_at = -db_period
        self._last: int | None = None
        self.samples: list[tuple[float, float, int | None]] = []
        self._stop_event = threading.Event()
        self._start = time.perf_counter()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = vm_rss_mb(self.pid)
            if rss is None:
                break
            self.samples.append((time.perf_counter() - self._start, rss, self._progress()))
            self._stop_event.wait(self.period)

    def _progress(self) -> int | None:
        now = time.perf_counter() - self._start
        if self.db is None or now - self._read_at < self.db_period:
            return self._last
        self._read_at = now
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=0.05) as con:
                embedded = con.execute(
                    "SELECT COUNT(*) FROM embedding WHERE modality = 'image'"
                ).fetchone()[0]
                stored = con.execute("SELECT COUNT(*) FROM qualification").fetchone()[0]
            self._last = int(embedded) + int(stored)
        except sqlite3.Error:
            pass
        return self._last

    def stop(self) -> list[tuple[float, float, int | None]]:
        self._stop_event.set()
        self.join()
        return self.samples


class Recorder:
    """VmRSS every `every` images of each stage the engine reports (and tracemalloc snapshots)."""

    def __init__(self, every: int, total: int, snapshots: bool) -> None:
        self.every, self.total, self.snapshots_on = every, total, snapshots
        self.points: dict[str, list[tuple[int, float, float]]] = {}  # stage -> (n, s, MiB)
        self.snapshots: dict[str, tracemalloc.Snapshot] = {}
        self.start = time.perf_counter()
        self._last: dict[str, int] = {}

    def progress(self, stage: str, done: int, total: int) -> None:
        """The engine's progress callback: (stage, images done, images in the stage)."""
        last = self._last.get(stage, -self.every)
        if done - last >= self.every or done == total:
            self._last[stage] = done
            rss = vm_rss_mb() or 0.0
            self.points.setdefault(stage, []).append((done, time.perf_counter() - self.start, rss))
        if self.snapshots_on and stage == "stored":
            for mark, name in ((total // 4, "25%"), (total, "100%")):
                if done == mark and name not in self.snapshots:
                    self.snapshots[name] = tracemalloc.take_snapshot()

    def stored(self, result) -> None:
        """The engine's on_result callback: one more qualification stored."""
        self.count = getattr(self, "count", 0) + 1
        self.progress("stored", self.count, self.total)


def flatness(values: list[float]) -> dict:
    """Mean of the first and last quarter of a series and whether they agree."""
    if len(values) < 4:
        return {"first_quarter_mb": None, "last_quarter_mb": None, "flat": None}
    quarter = max(1, len(values) // 4)
    first = sum(values[:quarter]) / quarter
    last = sum(values[-quarter:]) / quarter
    flat = last - first <= max(FLAT_TOLERANCE * first, FLAT_SLACK_MB)
    return {"first_quarter_mb": first, "last_quarter_mb": last, "flat": flat}


def slope_per_1000(points: list[tuple[int, float]]) -> float | None:
    """Least-squares MiB per 1,000 images over (images, MiB) points."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return 1000 * sum((x - mx) * (y - my) for x, y in points) / sxx


# --------------------------------------------------------------------------------------------
# the child: one qualify_paths call over all images


def child(args: argparse.Namespace) -> dict:
    from engine.qualify import QualifyOptions, qualify_paths
    from engine.session import VLKB

    paths = [Path(p) for p in json.loads(Path(args.images).read_text())]
    vlkb = VLKB.open(Path(args.workspace))
    embedded = {"images": 0}
    for encoder in vlkb.models.encoders():
        if encoder.spec.backend == "clip":
            encoder.model.vision_model.register_forward_pre_hook(
                lambda module, a, kw: embedded.__setitem__(
                    "images", embedded["images"] + int(kw["pixel_values"].shape[0])
                ),
                with_kwargs=True,
            )
    n = len(paths)
    recorder = Recorder(args.every, n, args.tracemalloc)
    # Use what the engine offers: progress and per-result callbacks, results not kept in the
    # outcome (as `kb qualify --json` does). Without them only the timed samples remain.
    accepted = inspect.signature(qualify_paths).parameters
    extra = {}
    if "progress" in accepted:
        extra["progress"] = recorder.progress
    if "on_result" in accepted:
        extra["on_result"] = recorder.stored
    if "keep_results" in accepted:
        extra["keep_results"] = args.keep_results
    if args.tracemalloc:
        tracemalloc.start(12)
    rss_before = vm_rss_mb()
    sampler = Sampler()
    sampler.start()
    started = time.perf_counter()
    options = QualifyOptions(normalize=args.normalize)
    outcome = qualify_paths(vlkb, paths, options, **extra)
    seconds = time.perf_counter() - started
    samples = sampler.stop()
    rss_after = vm_rss_mb()
    stored = getattr(outcome, "stored", None)
    report = {
        "n": n,
        "seconds": seconds,
        "normalize": args.normalize,
        "engine_callbacks": sorted(extra),
        "keep_results": extra.get("keep_results", True),
        "stored": stored if stored is not None else len(outcome.results),
        "results_kept": len(outcome.results),
        "failures": len(outcome.failures),
        "images_embedded_clip": embedded["images"],
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "peak_rss_mb": max(rss for _, rss, _ in samples) if samples else None,
        "by_stage": recorder.points,
        "by_time": samples,
    }
    if args.tracemalloc:
        recorder.snapshots["after the call"] = tracemalloc.take_snapshot()
        report["tracemalloc"] = _tracemalloc_report(recorder.snapshots)
    del outcome
    return report


def _tracemalloc_report(snapshots: dict) -> dict:
    start = snapshots.get("25%")
    if start is None:
        return {"note": "no snapshot at 25 % of the stored results"}
    out: dict = {}
    for name in ("100%", "after the call"):
        end = snapshots.get(name)
        if end is None:
            continue
        stats = end.compare_to(start, "lineno")
        out[f"{name} vs 25%"] = {
            "total_diff_mb": sum(s.size_diff for s in stats) / 2**20,
            "top": [str(s) for s in stats[:12]],
        }
    return out


# --------------------------------------------------------------------------------------------
# orchestration


def make_images(directory: Path, n: int, small: bool) -> list[Path]:
    from PIL import Image

    from engine.metrology.synthetic import write_dataset

    paths = write_dataset(directory / "full", n=n, seed=11)
    if not small:
        return paths
    smaller = []
    for path in paths:
        with Image.open(path) as image:
            w, h = image.size
            crop = image.convert("RGB").crop((w // 2 - 48, h // 2 - 48, w // 2 + 48, h // 2 + 48))
        target = directory / "small" / path.name
        target.parent.mkdir(exist_ok=True)
        crop.save(target)
        smaller.append(target)
    return smaller


def make_workspace(tmp: Path) -> Path:
    from engine.session import VLKB
    from engine.sync import sync_workspace
    from tests.model_factory import build_tiny_clip, build_tiny_flava

    clip_dir = build_tiny_clip(tmp / "models" / "clip")
    flava_dir = build_tiny_flava(tmp / "models" / "flava")
    workspace = tmp / "ws"
    workspace.mkdir()
    shutil.copytree(ROOT / "rules", workspace / "rules")
    text = (ROOT / "kb.toml").read_text(encoding="utf-8")
    (workspace / "kb.toml").write_text(bind_models(text, clip_dir, flava_dir), encoding="utf-8")
    with VLKB.open(workspace) as vlkb:
        sync_workspace(vlkb)
    return workspace


def cli_run(workspace: Path, images: list[Path], folder: Path, env: dict) -> dict:
    """The whole `kb qualify --json` command, VmRSS sampled from outside; a folder if it may."""
    kb = str(Path(sys.executable).with_name("kb"))
    base = [kb, "qualify", "--normalize", "batch", "--json", "-w", str(workspace)]
    result: dict = {}
    for targets in ([str(folder)], [str(p) for p in images]):
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            started = time.perf_counter()
            process = subprocess.Popen([*base, *targets], stdout=out, stderr=err, env=env)
            sampler = Sampler(process.pid, db=workspace / "kb.sqlite")
            sampler.start()
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
            samples = sampler.stop()
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read().decode(errors="replace")
        if process.returncode != 0:
            result = {"error": (stderr.strip().splitlines() or ["failed"])[-1]}
            continue  # an older command that takes no folders: give it the files
        # Only the samples once the run is under way (the first image embedded), so that
        # process start, imports and model loading do not count as growth.
        known = [(t, mb, n) for t, mb, n in samples if n is not None]
        first = known[0][2] if known else 0
        running = [(n - first, mb) for _, mb, n in known if n > first]
        return {
            "targets": "folder" if len(targets) == 1 else "files",
            "seconds": seconds,
            "stored": len(json.loads(stdout)["qualifications"]),
            "json_mb": len(stdout) / 2**20,
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "by_time": samples,
            "flatness_while_running": flatness([mb for _, mb in running]),
            # progress counts each image twice in a batch run (embedded, then stored)
            "growth_mb_per_1000_progress": slope_per_1000(running),
        }
    return result


def analyse(api: dict) -> None:
    """Flatness and slope per stage (images the engine reported) and over time."""
    api["stages"] = {}
    for stage, points in api["by_stage"].items():
        pairs = [(count, rss) for count, _, rss in points]
        api["stages"][stage] = {
            **flatness([rss for _, rss in pairs]),
            "growth_mb_per_1000": slope_per_1000(pairs),
            "samples": len(pairs),
        }
    api["flatness_by_time"] = flatness([rss for _, rss, _ in api["by_time"]])


def orchestrate(args: argparse.Namespace) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    report: dict = {"n": args.n, "images": "96x96 crops" if args.small else "640x480 synth"}
    with tempfile.TemporaryDirectory(prefix="vlkb-membench-") as name:
        tmp = Path(name)
        say("building tiny models and syncing a copy of the example workspace ...")
        workspace = make_workspace(tmp)
        say(f"writing {args.n} images ...")
        started = time.perf_counter()
        images = make_images(tmp / "images", args.n, args.small)
        report["image_generation_s"] = time.perf_counter() - started
        listing = tmp / "images.json"
        listing.write_text(json.dumps([str(p) for p in images]))
        api_ws = tmp / "ws-api"
        shutil.copytree(workspace, api_ws)
        say("qualify_paths over all images in one call (child process) ...")
        out = tmp / "child.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child",
                   "--workspace", str(api_ws), "--images", str(listing), "--out", str(out),
                   "--every", str(args.every), "--normalize", args.normalize]
        if args.tracemalloc:
            command.append("--tracemalloc")
        if args.keep_results:
            command.append("--keep-results")
        subprocess.run(command, check=True, env=env)
        api = json.loads(out.read_text())
        analyse(api)
        report["api"] = api
        if args.cli:
            cli_ws = tmp / "ws-cli"
            shutil.copytree(workspace, cli_ws)
            say("kb qualify --json over all images (one command) ...")
            report["cli"] = cli_run(cli_ws, images, images[0].parent, env)
    return report


def _flat_line(f: dict) -> str:
    if f["flat"] is None:
        return "too few samples"
    verdict = "flat" if f["flat"] else "GROWS"
    return (f"first quarter {f['first_quarter_mb']:.0f} MiB, last quarter "
            f"{f['last_quarter_mb']:.0f} MiB -> {verdict}")


def print_summary(report: dict) -> None:
    api = report["api"]
    print(f"{report['n']} images ({report['images']}), tiny test models, one qualify_paths call "
          f"(normalize={api['normalize']}, keep_results={api['keep_results']}, "
          f"callbacks used: {', '.join(api['engine_callbacks']) or 'none'})")
    print(f"qualify_paths: {api['seconds']:.1f} s ({api['n'] / api['seconds']:.1f} images/s), "
          f"{api['stored']} stored, {api['results_kept']} kept in the outcome, "
          f"{api['failures']} failures, {api['images_embedded_clip']} images embedded by CLIP")
    print(f"RSS before {api['rss_before_mb']:.0f} MiB, peak {api['peak_rss_mb']:.0f} MiB, "
          f"after {api['rss_after_mb']:.0f} MiB")
    for stage, points in api["by_stage"].items():
        summary = api["stages"][stage]
        growth = summary["growth_mb_per_1000"]
        print(f"stage {stage!r}: {_flat_line(summary)}; slope "
              f"{'n/a' if growth is None else f'{growth:+.1f} MiB per 1000 images'}")
        print("   " + "  ".join(f"{count}:{rss:.0f}" for count, _, rss in points))
    print(f"by time (every 0.25 s): {_flat_line(api['flatness_by_time'])}")
    for name, entry in api.get("tracemalloc", {}).items():
        if isinstance(entry, dict) and "top" in entry:
            print(f"tracemalloc {name}: {entry['total_diff_mb']:+.1f} MiB; top lines:")
            for line in entry["top"]:
                print(f"  {line}")
    cli = report.get("cli")
    if cli and "error" in cli:
        print(f"kb qualify command: failed: {cli['error']}")
    elif cli:
        print(f"kb qualify command ({cli['targets']}): {cli['seconds']:.1f} s, {cli['stored']} "
              f"stored, peak RSS {cli['peak_rss_mb']:.0f} MiB, JSON {cli['json_mb']:.1f} MiB; "
              f"once running: {_flat_line(cli['flatness_while_running'])}; slope "
              f"{cli['growth_mb_per_1000_progress'] or 0:+.1f} MiB per 1000 steps "
              "(a step: one image embedded or one qualification stored)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--every", type=int, default=100, help="RSS sample every N paths")
    parser.add_argument("--small", action="store_true", help="96x96 images instead of 640x480")
    parser.add_argument("--cli", action="store_true", help="also run the kb qualify command")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--normalize", choices=["batch", "calibrated"], default="batch")
    parser.add_argument(
        "--keep-results", action="store_true", help="let qualify_paths keep every result"
    )
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workspace", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        Path(args.out).write_text(json.dumps(child(args)))
        return
    report = orchestrate(args)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    print_summary(report)


if __name__ == "__main__":
    main()
