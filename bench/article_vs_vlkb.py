"""Per-image cost of the article's procedure against `kb qualify`, on the same images.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/article_vs_vlkb.py [--generated 12] [--rounds 1]
        [--threads 1] [--normalize batch] [--profile] [--json-out FILE]

Both sides use full-size CLIP ViT-B/32 and FLAVA-full architectures with random weights
(bench/model_builders.py; same FLOPs and memory as the trained checkpoints) and the six
assessments of the example workspace (rules/, prompts with their colour variants, the
positive and negative reference images).

(a) `article`: the procedure of the article's script, written out plainly below. For every
    assessment it embeds every positive and negative reference image with FLAVA and every prompt
    with CLIP, one at a time, then embeds every sample image with FLAVA and with CLIP, one at a
    time, computes the net similarities and z-scores them over the images. Six assessments, so
    every sample is embedded six times by each model. (The script's bugs are not reproduced:
    the CLIP embedding is `pooler_output`, FLAVA's the CLS token of its projected sequence.)
(b) `vlkb`: `engine.qualify.qualify_paths` with `--normalize batch` semantics in a workspace
    whose kb.toml binds text = "clip" and image = "flava" to the random models, after a
    `kb sync` that embeds and caches the prompts and references (timed apart: a one-off cost
    per ruleset and model). The whole `kb qualify --json` command is timed as well.

Every part runs in a fresh child process, so each peak RSS (ru_maxrss, via wait4) is that
part's alone. Every child gets the same number of torch threads (`--threads`, default 1: on a
CPU shared with other jobs, two OpenMP threads stall whenever one is descheduled, which hurts
the article's many small single-image forwards far more than VLKB's batches and would inflate
the speed-up). Wall time and CPU time (time.process_time, all threads) are both reported; the
CPU-time ratio is the one least disturbed by other processes on the machine.

Model forward time is the time spent inside the forward of the models' top-level submodules
(vision/text towers and projections), taken with torch forward hooks, in wall and in process
CPU time: nothing in the engine is patched, and those submodules never call one another, so the
sum counts each forward once. Image preprocessing (the image processor's resize and normalise)
is timed apart by wrapping each loaded encoder's processor object. As a check that VLKB really
embeds each image once per model, the hooks also count the images that pass through each
vision tower, and the net similarities and z-scores of (a) and (b) are compared: they must
agree to float precision.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `bench.` and the engine import from the repo

from bench.model_builders import DEFAULT_MODELS_DIR, ensure_models  # noqa: E402

ROLE_MODEL = {"text": "clip", "image": "flava"}
TARGET_SPEEDUP = 6.0
TARGET_FORWARD_SHARE = 0.70
TARGET_PEAK_RSS_GB = 2.5


# --------------------------------------------------------------------------------------------
# Timing helpers shared by both sides


@dataclass
class ForwardTimer:
    """Wall time and calls inside the forward of each model's direct children.

    CLIPModel.get_image_features runs vision_model then visual_projection; FlavaModel's runs
    image_model then image_projection; the text side likewise. Direct children are never
    nested in one another, so summing their forward times counts each forward exactly once.
    """

    seconds: float = 0.0  # wall time
    cpu_seconds: float = 0.0  # CPU time of the whole process (all torch threads) meanwhile
    calls: int = 0
    images: dict[str, int] = field(default_factory=dict)  # rows through each vision tower
    _started: dict[int, tuple[float, float]] = field(default_factory=dict)

    def attach(self, model, name: str) -> None:
        vision = {"vision_model", "image_model"}
        for child_name, child in model.named_children():
            child.register_forward_pre_hook(self._pre)
            child.register_forward_hook(self._post)
            if child_name in vision:
                child.register_forward_pre_hook(self._counter(name), with_kwargs=True)

    def _pre(self, module, args) -> None:
        self._started[id(module)] = (time.perf_counter(), time.process_time())

    def _post(self, module, args, output) -> None:
        wall, cpu = self._started.pop(id(module))
        self.seconds += time.perf_counter() - wall
        self.cpu_seconds += time.process_time() - cpu
        self.calls += 1

    def _counter(self, name: str):
        def count(module, args, kwargs) -> None:
            pixels = kwargs.get("pixel_values", args[0] if args else None)
            self.images[name] = self.images.get(name, 0) + int(pixels.shape[0])

        return count


class TimedCall:
    """Wraps a callable attribute of one object (an image processor) and sums its wall time."""

    def __init__(self, target) -> None:
        self._target = target
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self._target(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    def __getattr__(self, name: str):
        return getattr(self._target, name)


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# --------------------------------------------------------------------------------------------
# (a) The article's procedure, plainly: no cache, no batching, every assessment from scratch


class ArticleModels:
    """CLIP and FLAVA with their tokenizers and image processors, loaded directly."""

    def __init__(self, clip_dir: Path, flava_dir: Path) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, FlavaModel

        torch.set_grad_enabled(False)
        self.clip = CLIPModel.from_pretrained(clip_dir, dtype=torch.float32).eval()
        self.flava = FlavaModel.from_pretrained(flava_dir, dtype=torch.float32).eval()
        self.clip_tokenizer = AutoTokenizer.from_pretrained(clip_dir)
        # The same PIL image processors VLKB loads, so preprocessing costs the same on both sides.
        self.clip_processor = AutoImageProcessor.from_pretrained(clip_dir, backend="pil")
        self.flava_processor = AutoImageProcessor.from_pretrained(flava_dir, backend="pil")

    def image_embedding(self, path: Path, model: str):
        """Open the file, preprocess, one forward pass, L2-normalise: (1, dim)."""
        from PIL import Image

        image = Image.open(path).convert("RGB")
        if model == "clip":
            pixels = self.clip_processor(images=image, return_tensors="pt")["pixel_values"]
            vector = self.clip.get_image_features(pixel_values=pixels).pooler_output
        else:
            pixels = self.flava_processor(images=image, return_tensors="pt")["pixel_values"]
            sequence = self.flava.get_image_features(pixel_values=pixels).pooler_output
            vector = sequence[:, 0]  # (B, 197, 768) projected tokens; the embedding is the CLS
        return vector / vector.norm(dim=-1, keepdim=True)

    def text_embedding(self, text: str):
        """CLIP text embedding of one prompt, L2-normalised: (1, dim)."""
        encoded = self.clip_tokenizer(text, padding=True, truncation=True, return_tensors="pt")
        vector = self.clip.get_text_features(
            input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
        ).pooler_output
        return vector / vector.norm(dim=-1, keepdim=True)


def mean_direction(vectors):
    import torch

    mean = torch.cat(vectors).mean(dim=0, keepdim=True)
    return mean / mean.norm(dim=-1, keepdim=True)


def read_assessment(path: Path, rules_dir: Path) -> dict:
    """Prompts (all variants) and reference image files of one assessment TOML."""
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    prompts = doc.get("prompts", {})
    sets = [prompts, *prompts.get("variants", {}).values()]
    refs = rules_dir / "references" / doc["key"]
    return {
        "key": doc["key"],
        "pos_texts": [t for s in sets for t in s.get("positive", [])],
        "neg_texts": [t for s in sets for t in s.get("negative", [])],
        "pos_imgs": sorted((refs / "positive").glob("*.png")),
        "neg_imgs": sorted((refs / "negative").glob("*.png")),
    }


def zscores(values):
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    std = values.std()  # population standard deviation, as the article
    return np.zeros_like(values) if std == 0 else (values - values.mean()) / std


def article_procedure(models: ArticleModels, rules_dir: Path, images: Sequence[Path]) -> dict:
    """For each assessment: references, prompts and every image embedded again; z-score fusion."""
    results = {}
    for path in sorted((rules_dir / "assessments").glob("*.toml")):
        a = read_assessment(path, rules_dir)
        pos_img = mean_direction([models.image_embedding(p, "flava") for p in a["pos_imgs"]])
        neg_img = mean_direction([models.image_embedding(p, "flava") for p in a["neg_imgs"]])
        pos_txt = mean_direction([models.text_embedding(t) for t in a["pos_texts"]])
        neg_txt = mean_direction([models.text_embedding(t) for t in a["neg_texts"]])
        delta_flava, delta_clip = [], []
        for image in images:
            z_flava = models.image_embedding(image, "flava")
            z_clip = models.image_embedding(image, "clip")
            delta_flava.append(float(z_flava @ pos_img.T - z_flava @ neg_img.T))
            delta_clip.append(float(z_clip @ pos_txt.T - z_clip @ neg_txt.T))
        z_flava, z_clip = zscores(delta_flava), zscores(delta_clip)
        hybrid = z_clip + z_flava
        results[a["key"]] = {
            "delta": {"clip": delta_clip, "flava": delta_flava},
            "z": {"clip": z_clip.tolist(), "flava": z_flava.tolist()},
            "accept": [bool(h >= 0) for h in hybrid],
        }
    return results


def child_article(args: argparse.Namespace) -> dict:
    images = [Path(p) for p in json.loads(Path(args.images).read_text())]
    started = time.perf_counter()
    models = ArticleModels(Path(args.clip), Path(args.flava))
    load_s = time.perf_counter() - started
    timer = ForwardTimer()
    timer.attach(models.clip, "clip")
    timer.attach(models.flava, "flava")
    started, cpu = time.perf_counter(), time.process_time()
    results = article_procedure(models, Path(args.workspace) / "rules", images)
    total, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "load_s": load_s,
        "seconds": total,
        "cpu_s": cpu,
        "forward_s": timer.seconds,
        "forward_cpu_s": timer.cpu_seconds,
        "forward_calls": timer.calls,
        "images_embedded": timer.images,
        "n_images": len(images),
        "assessments": results,
        "peak_rss": peak_rss_bytes(),
    }


# --------------------------------------------------------------------------------------------
# (b) VLKB: qualify_paths in a synced workspace


def child_vlkb(args: argparse.Namespace) -> dict:
    from engine.qualify import QualifyOptions, qualify_paths
    from engine.session import VLKB

    images = [Path(p) for p in json.loads(Path(args.images).read_text())]
    started = time.perf_counter()
    vlkb = VLKB.open(Path(args.workspace))
    encoders = vlkb.models.encoders()
    load_s = time.perf_counter() - started
    timer = ForwardTimer()
    processors = []
    for encoder in encoders:
        timer.attach(encoder.model, encoder.spec.backend)
        encoder.processor = TimedCall(encoder.processor)  # this object only; engine untouched
        processors.append(encoder.processor)
    options = QualifyOptions(normalize=args.normalize)
    profiler = cProfile.Profile() if args.profile else None
    started, cpu = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    outcome = qualify_paths(vlkb, images, options)
    if profiler:
        profiler.disable()
    total, cpu = time.perf_counter() - started, time.process_time() - cpu
    if outcome.failures:
        raise SystemExit(f"qualify failed on {len(outcome.failures)} file(s): {outcome.failures}")
    report = {
        "load_s": load_s,
        "seconds": total,
        "cpu_s": cpu,
        "forward_s": timer.seconds,
        "forward_cpu_s": timer.cpu_seconds,
        "forward_calls": timer.calls,
        "preprocess_s": sum(p.seconds for p in processors),
        "images_embedded": timer.images,
        "n_images": len(images),
        "assessments": _vlkb_scores(outcome, images),
        "peak_rss": peak_rss_bytes(),
    }
    if profiler:
        report["profile"] = {
            order: _profile_text(profiler, order) for order in ("tottime", "cumulative")
        }
    return report


def _vlkb_scores(outcome, images: Sequence[Path]) -> dict:
    """delta and z per assessment and model, in the order of `images` (None where absent)."""
    order = {str(p.resolve()): i for i, p in enumerate(images)}
    found: dict = {}
    for result in outcome.results:
        index = order[result.sample_path]
        for node in result.nodes:
            for ev in node.evidence:
                if getattr(ev, "role", None) not in ROLE_MODEL or ev.delta is None:
                    continue
                entry = found.setdefault(node.key, {"delta": {}, "z": {}})
                for kind, value in (("delta", ev.delta), ("z", ev.z)):
                    column = entry[kind].setdefault(ROLE_MODEL[ev.role], [None] * len(images))
                    column[index] = value
    return found


def _profile_text(profiler: cProfile.Profile, order: str, lines: int = 30) -> str:
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer)
    stats.strip_dirs().sort_stats(order).print_stats(lines)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Orchestration: workspace, images, child processes


@dataclass
class Run:
    seconds: float
    cpu_seconds: float  # user + system time of the child
    peak_rss: int  # bytes
    stdout: str
    stderr: str


def run_measured(command: list[str], env: dict[str, str]) -> Run:
    """Run a child to completion; its wall time and its own peak RSS (wait4 rusage)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        run = Run(
            seconds,
            usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss * 1024,
            out.read().decode(),
            err.read().decode(),
        )
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{run.stderr[-3000:]}")
    return run


def bind_models(kb_toml: str, clip_dir: Path, flava_dir: Path) -> str:
    """kb.toml text with [models.*] source pointing at local folders and both roles bound."""
    wanted = {
        "models.clip": {"source": str(clip_dir)},
        "models.flava": {"source": str(flava_dir)},
        "roles": {"text": "clip", "image": "flava"},
    }
    section, lines = None, []
    for line in kb_toml.splitlines():
        header = re.match(r"\s*\[([^\[\]]+)\]\s*(#.*)?$", line)
        if header:
            section = header.group(1).strip()
        key = re.match(r"\s*([A-Za-z_]+)\s*=", line)
        if key and section in wanted and key.group(1) in wanted[section]:
            line = f"{key.group(1)} = {json.dumps(wanted[section][key.group(1)])}"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    parsed = tomllib.loads(text)
    for name, values in wanted.items():
        table = parsed
        for part in name.split("."):
            table = table.get(part, {})
        if any(table.get(k) != v for k, v in values.items()):
            raise SystemExit(f"could not bind {name} in kb.toml; expected {values}")
    return text


def prepare(tmp: Path, generated: int, clip_dir: Path, flava_dir: Path) -> tuple[Path, list[Path]]:
    """A workspace copied from the repo root, bound to the models; the images to qualify."""
    from engine.metrology.synthetic import write_dataset

    workspace = tmp / "ws-synced"
    workspace.mkdir()
    shutil.copytree(ROOT / "rules", workspace / "rules")
    text = (ROOT / "kb.toml").read_text(encoding="utf-8")
    (workspace / "kb.toml").write_text(bind_models(text, clip_dir, flava_dir), encoding="utf-8")
    images_dir = tmp / "images"
    images_dir.mkdir()
    images = []
    for path in sorted((ROOT / "examples").glob("*.png")):
        images.append(Path(shutil.copy2(path, images_dir / path.name)))
    if generated:
        images += write_dataset(images_dir / "generated", n=generated, seed=5)
    return workspace, images


def fresh_copy(synced: Path, name: str) -> Path:
    """The synced workspace before any qualification: sample embeddings not cached yet."""
    target = synced.parent / name
    shutil.copytree(synced, target)
    return target


def compare(article: dict, vlkb: dict, with_z: bool) -> dict:
    """Largest |difference| of delta (and z, for batch statistics) between the procedures."""
    worst = {"delta": 0.0, "z": 0.0 if with_z else None, "pairs": 0}
    for key, a in article.items():
        b = vlkb.get(key, {})
        for kind in ("delta", "z") if with_z else ("delta",):
            for model, values in a[kind].items():
                for x, y in zip(values, b.get(kind, {}).get(model, []), strict=False):
                    if y is not None:
                        worst[kind] = max(worst[kind], abs(x - y))
                        worst["pairs"] += kind == "delta"
    return worst


def machine(threads: int) -> dict:
    import torch
    import transformers

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "transformers": transformers.__version__,
        "date": date.today().isoformat(),
    }


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def orchestrate(args: argparse.Namespace) -> dict:
    clip_dir, flava_dir = ensure_models(args.models_dir)
    threads = str(args.threads)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": threads,  # torch's intra-op threads, in every child alike
        "MKL_NUM_THREADS": threads,
    }
    python, kb = sys.executable, str(Path(sys.executable).with_name("kb"))
    me = str(Path(__file__).resolve())
    report: dict = {"machine": machine(args.threads), "normalize": args.normalize, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="vlkb-bench-") as name:
        tmp = Path(name)
        synced, images = prepare(tmp, args.generated, clip_dir, flava_dir)
        listing = tmp / "images.json"
        listing.write_text(json.dumps([str(p) for p in images]))
        report["n_images"] = len(images)
        say(f"{len(images)} images; syncing the workspace (kb sync, both models) ...")
        sync = run_measured([kb, "sync", "--json", "-w", str(synced)], env)
        report["sync"] = {
            "seconds": sync.seconds, "cpu_s": sync.cpu_seconds, "peak_rss": sync.peak_rss
        }

        def child(kind: str, workspace: Path, out: Path, *extra: str) -> dict:
            command = [python, me, "--child", kind, "--workspace", str(workspace),
                       "--images", str(listing), "--out", str(out),
                       "--normalize", args.normalize, *extra]
            run = run_measured(command, env)
            data = json.loads(out.read_text())
            data["process_s"], data["process_peak_rss"] = run.seconds, run.peak_rss
            data["loadavg_after"] = round(os.getloadavg()[0], 2)
            return data

        for r in range(args.rounds):
            step = f"round {r + 1}/{args.rounds}"
            say(f"{step}: (b) qualify_paths ...")
            vlkb = child("vlkb", fresh_copy(synced, f"ws-api-{r}"), tmp / f"vlkb-{r}.json")
            say(f"{step}: (a) the article's procedure ...")
            article = child("article", synced, tmp / f"article-{r}.json",
                            "--clip", str(clip_dir), "--flava", str(flava_dir))
            say(f"{step}: (b) kb qualify --json command ...")
            cli_ws = fresh_copy(synced, f"ws-cli-{r}")
            cli = run_measured(
                [kb, "qualify", "--normalize", args.normalize, "--json", "-w", str(cli_ws),
                 *map(str, images)],
                env,
            )
            qualified = len(json.loads(cli.stdout)["qualifications"])
            if qualified != len(images):
                raise SystemExit(f"kb qualify stored {qualified} of {len(images)} images")
            report["rounds"].append({
                "vlkb": {k: v for k, v in vlkb.items() if k != "assessments"},
                "article": {k: v for k, v in article.items() if k != "assessments"},
                "cli": {
                    "seconds": cli.seconds,
                    "cpu_s": cli.cpu_seconds,
                    "peak_rss": cli.peak_rss,
                    "loadavg_after": round(os.getloadavg()[0], 2),
                },
                "agreement": compare(
                    article["assessments"], vlkb["assessments"], args.normalize == "batch"
                ),
            })
        if args.profile:
            say("profiling one more (b) run under cProfile ...")
            profiled = child("vlkb", fresh_copy(synced, "ws-profile"), tmp / "profile.json",
                             "--profile")
            report["profile"] = profiled["profile"]
            report["profile_run_s"] = profiled["seconds"]
    report["summary"] = summarise(report)
    return report


def summarise(report: dict) -> dict:
    n = report["n_images"]
    rounds = report["rounds"]

    def med(fn) -> float:
        return median([fn(r) for r in rounds])

    speedup = med(lambda r: r["article"]["seconds"] / r["vlkb"]["seconds"])
    speedup_cpu = med(lambda r: r["article"]["cpu_s"] / r["vlkb"]["cpu_s"])
    share = med(lambda r: r["vlkb"]["forward_s"] / r["vlkb"]["seconds"])
    share_cpu = med(lambda r: r["vlkb"]["forward_cpu_s"] / r["vlkb"]["cpu_s"])
    peak = max(max(r["vlkb"]["process_peak_rss"], r["cli"]["peak_rss"]) for r in rounds)
    return {
        "article_s_per_image": med(lambda r: r["article"]["seconds"] / n),
        "article_cpu_s_per_image": med(lambda r: r["article"]["cpu_s"] / n),
        "vlkb_s_per_image": med(lambda r: r["vlkb"]["seconds"] / n),
        "vlkb_cpu_s_per_image": med(lambda r: r["vlkb"]["cpu_s"] / n),
        "cli_s_per_image": med(lambda r: r["cli"]["seconds"] / n),
        "speedup": speedup,
        "speedup_cpu": speedup_cpu,
        "forward_share": share,
        "forward_share_cpu": share_cpu,
        "preprocess_share": med(lambda r: r["vlkb"]["preprocess_s"] / r["vlkb"]["seconds"]),
        "article_forward_share": med(lambda r: r["article"]["forward_s"] / r["article"]["seconds"]),
        "vlkb_peak_rss_gb": peak / 1e9,
        "article_peak_rss_gb": max(r["article"]["process_peak_rss"] for r in rounds) / 1e9,
        "max_delta_difference": max(r["agreement"]["delta"] for r in rounds),
        "max_z_difference": max((r["agreement"]["z"] or 0.0) for r in rounds),
        "targets": {
            "speed-up >= 6x (wall and CPU time)": min(speedup, speedup_cpu) >= TARGET_SPEEDUP,
            "forward share >= 70% (wall and CPU time)": min(share, share_cpu)
            >= TARGET_FORWARD_SHARE,
            "peak RSS <= 2.5 GB": peak / 1e9 <= TARGET_PEAK_RSS_GB,
        },
    }


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_summary(report: dict) -> None:
    s, m, n = report["summary"], report["machine"], report["n_images"]
    print(f"machine: {m['nproc']} x {m['cpu']}, Python {m['python']}, torch {m['torch']} "
          f"({m['torch_threads']} intra-op threads), transformers {m['transformers']}")
    print(f"images: {n} (6 examples + {n - 6} generated), rounds: {len(report['rounds'])}, "
          f"(b) with --normalize {report['normalize']}")
    sync = report["sync"]
    print(f"one-off kb sync (both models, whole command): {sync['seconds']:.1f} s wall, "
          f"{sync['cpu_s']:.1f} s CPU")
    for i, r in enumerate(report["rounds"], 1):
        a, b, c = r["article"], r["vlkb"], r["cli"]
        print(f"round {i}: (a) {a['seconds']:.1f} s wall / {a['cpu_s']:.1f} s CPU, "
              f"images embedded {a['images_embedded']}, load avg {a['loadavg_after']}")
        print(f"         (b) qualify_paths {b['seconds']:.1f} s wall / {b['cpu_s']:.1f} s CPU, "
              f"images embedded {b['images_embedded']}, forward {b['forward_s']:.1f} s, "
              f"preprocess {b['preprocess_s']:.2f} s, model load {b['load_s']:.1f} s, "
              f"load avg {b['loadavg_after']}")
        print(f"         (b) kb qualify command {c['seconds']:.1f} s wall / {c['cpu_s']:.1f} s "
              f"CPU, load avg {c['loadavg_after']}")
    print(f"(a) article:            {s['article_s_per_image']:.3f} s/image wall, "
          f"{s['article_cpu_s_per_image']:.3f} s/image CPU "
          f"(forward share {s['article_forward_share']:.0%})")
    print(f"(b) qualify_paths:      {s['vlkb_s_per_image']:.3f} s/image wall, "
          f"{s['vlkb_cpu_s_per_image']:.3f} s/image CPU")
    print(f"(b) kb qualify command: {s['cli_s_per_image']:.3f} s/image wall "
          "(process start, imports and model load included)")
    print(f"speed-up (a)/(b): {s['speedup']:.2f}x wall, {s['speedup_cpu']:.2f}x CPU "
          f"(target >= {TARGET_SPEEDUP:g}x)")
    print(f"forward share of (b): {s['forward_share']:.1%} wall, "
          f"{s['forward_share_cpu']:.1%} CPU (target >= 70%); "
          f"image preprocessing {s['preprocess_share']:.1%} wall")
    print(f"peak RSS of (b): {s['vlkb_peak_rss_gb']:.2f} GB (target <= 2.5 GB); "
          f"(a): {s['article_peak_rss_gb']:.2f} GB")
    z = (f"max |z diff| {s['max_z_difference']:.2e}" if report["normalize"] == "batch"
         else "z not compared (calibrated statistics are not the article's batch statistics)")
    print(f"(a) vs (b) agreement: max |delta diff| {s['max_delta_difference']:.2e}, {z}")
    for target, met in s["targets"].items():
        print(f"  {target}: {'met' if met else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generated", type=int, default=12, help="generated images to add")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--normalize", choices=["batch", "calibrated"], default="batch",
        help="(b)'s z-score statistics (batch: the article's; z agreement is checked then only)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads in every child (default 1)"
    )
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--profile", action="store_true", help="one more (b) run under cProfile")
    parser.add_argument("--json-out", type=Path, help="write the whole report as JSON")
    parser.add_argument("--child", choices=["article", "vlkb"], help=argparse.SUPPRESS)
    parser.add_argument("--workspace", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    parser.add_argument("--flava", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        result = child_article(args) if args.child == "article" else child_vlkb(args)
        Path(args.out).write_text(json.dumps(result))
        return
    report = orchestrate(args)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    print_summary(report)
    if "profile" in report:
        print("\ncProfile of one (b) run (with profiler overhead), by own time:")
        print(report["profile"]["tottime"])


if __name__ == "__main__":
    main()
