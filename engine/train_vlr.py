"""Train VLKB's dual encoder: a small ViT against the frozen all-MiniLM-L6-v2 text tower.

`kb train-vlr OUTDIR --seed S` draws N micrographs with engine.synth, labels them from their
ground truth, and trains a ViT image tower and both projections with the sentence encoder
locked (locked-text tuning). The objective is the one VLKB scores with:

* text: for each assessment, the image must be closer to the mean of a random handful of
  captions of its label's polarity than to a handful of the other polarity (a two-way
  contrast over net similarity), with captions drawn from engine.captions' banks
  (colour-aware, colour-free, and mixed handfuls, like an assessment's prompt variants);
* image: the same contrast against random handfuls of the other images of the batch with
  the same and with the other label, which is how references are scored (`image` role).

The result is saved as a transformers VisionTextDualEncoderModel checkpoint without its text
encoder (text_tower.json names the pinned package instead), plus SHA256SUMS, training.json
and MODEL_CARD.md with the evaluation on a fresh generated set.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
    ViTConfig,
    ViTImageProcessorPil,
)

from engine import dual
from engine.captions import ASSESSMENTS, POLARITIES, caption_bank
from engine.model_card import evaluate_checkpoint, write_model_card
from engine.synth import EXAMPLE_CRITERIA, render_resized, sample_specs
from engine.vlr_eval import ModelEvaluation
from kb.errors import VLKBError

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes the trained weights; written to training.json and the card."""

    seed: int = 0
    n_images: int = 6000
    epochs: int = 14
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    # image tower: a ViT on the whole 640x480 map resized to 320x240 (10 -> 20 um per pixel),
    # in 40x40 patches (48 tokens): few tokens keep a CPU step short. 480x360 in 60x60
    # patches (same tokens, sharper pores) trained 30 % longer and judged EA-4 worse.
    image_height: int = 240
    image_width: int = 320
    patch_size: int = 40
    hidden_size: int = 192
    layers: int = 6
    heads: int = 3
    projection_dim: int = 256
    logit_scale_init: float = math.log(20.0)
    image_loss_weight: float = 0.5
    aux_weight: float = 2.0  # regression of the true quantities from the pooled features
    text_projection_lr_scale: float = 1.0  # < 1 keeps the text projection near its start
    draws: int = 4  # caption / reference handfuls per assessment and step
    flip: bool = True  # horizontal mirror: no quantity changes
    workers: int = 2
    captions_per_group: int = 0  # 0: the whole bank; else this many per (EA, polarity, register)


@dataclass
class TrainResult:
    outdir: Path
    config: TrainConfig
    seconds: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    first_loss: float = float("nan")  # mean loss over the first steps, before learning much
    parameters: dict[str, int] = field(default_factory=dict)


# --- data -------------------------------------------------------------------------------------


# Ground-truth quantities the auxiliary head regresses (standardised; missing ones masked).
AUX_QUANTITIES = (
    "dilution_fraction",
    "haz_depth_mm",
    "reinforcement_height_mm",
    "porosity_fraction",
    "max_pore_diameter_um",
    "pore_count",
    "carbide_fraction",
    "carbide_cv",
    "carbide_gradient",
)


def _render(job: tuple) -> tuple[np.ndarray, dict[str, str], dict[str, float]]:
    spec, seed, size, resample = job
    return render_resized(spec, seed, size, resample)


def generate(
    config: TrainConfig, processor: ViTImageProcessorPil, log: Log
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, 3, H, W) uint8 resized maps, (n, 6) bool accept labels and (n, q) true quantities
    (NaN where unmeasurable), rendered in worker processes."""
    size = (config.image_height, config.image_width)
    jobs = [
        (spec, config.seed * 100_003 + index, size, int(processor.resample))
        for index, spec in enumerate(sample_specs(config.n_images, config.seed))
    ]
    workers = max(1, min(config.workers, os.cpu_count() or 1))
    if workers > 1 and len(jobs) >= 32:
        # fork (where there is one) re-imports nothing; train() renders before torch computes
        # anything, and the workers only run numpy/scipy/PIL code.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with context.Pool(workers) as pool:
            rendered = pool.map(_render, jobs, chunksize=16)
    else:
        rendered = [_render(job) for job in jobs]
    pixels = np.stack([r[0] for r in rendered])
    labels = np.array([[r[1][key] == "accept" for key in ASSESSMENTS] for r in rendered])
    quantities = np.array(
        [[r[2].get(name, np.nan) for name in AUX_QUANTITIES] for r in rendered], dtype=np.float64
    )
    shares = ", ".join(f"{k} {labels[:, i].mean():.0%}" for i, k in enumerate(ASSESSMENTS))
    log(f"generated {len(jobs)} micrographs (accept share: {shares})")
    return pixels, labels, quantities


# How far past its limit a quantity has to be for the auxiliary target to saturate (tanh).
MARGIN_WIDTHS = {
    "dilution_fraction": 0.02,
    "haz_depth_mm": 0.2,
    "reinforcement_height_mm": 0.15,
    "porosity_fraction": 0.01,
    "max_pore_diameter_um": 40.0,
    "carbide_fraction": 0.06,
    "carbide_cv": 0.1,
}
RAW_TARGETS = ("pore_count", "carbide_gradient")


def judged_mask(quantities: np.ndarray) -> np.ndarray:
    """(n, 6): False where an assessment's quantity is unmeasurable (e.g. no carbide
    distribution in a flat bead): its label there says nothing about what the image shows."""
    columns = [
        np.all(
            [np.isfinite(quantities[:, AUX_QUANTITIES.index(name)]) for name, _, _ in limits],
            axis=0,
        )
        for limits in EXAMPLE_CRITERIA.values()
    ]
    return np.stack(columns, axis=1)


def aux_targets(quantities: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression targets and their mask (False where a quantity is unmeasurable).

    Per limit of the example criteria: tanh of the signed distance to the limit (positive on
    the accept side), so the features learn which side of each limit a bead is on, steeply
    near the limit and saturating far from it; plus two standardised raw quantities.
    """
    columns = []
    for limits in EXAMPLE_CRITERIA.values():
        for name, op, limit in limits:
            values = quantities[:, AUX_QUANTITIES.index(name)]
            sign = 1.0 if op == ">=" else -1.0
            columns.append(np.tanh(sign * (values - limit) / MARGIN_WIDTHS[name]))
    for name in RAW_TARGETS:
        values = quantities[:, AUX_QUANTITIES.index(name)]
        values = np.sqrt(np.clip(values, 0, None)) if name == "pore_count" else values
        std = np.nanstd(values)
        columns.append(np.clip((values - np.nanmean(values)) / (std if std > 0 else 1.0), -4, 4))
    targets = np.stack(columns, axis=1)
    mask = np.isfinite(targets)
    return torch.from_numpy(np.nan_to_num(targets)).float(), torch.from_numpy(mask)


AUX_OUTPUTS = sum(len(v) for v in EXAMPLE_CRITERIA.values()) + len(RAW_TARGETS)


def make_processor(config: TrainConfig) -> ViTImageProcessorPil:
    """Resize the whole map (bilinear, antialiased by PIL), scale to [-1, 1]."""
    return ViTImageProcessorPil(
        size={"height": config.image_height, "width": config.image_width},
        resample=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def to_pixel_values(batch: np.ndarray, processor: ViTImageProcessorPil) -> torch.Tensor:
    """The processor's rescale and normalise on already resized uint8 maps."""
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    scaled = torch.from_numpy(batch).float() * float(processor.rescale_factor)
    return (scaled - mean) / std


# --- model ------------------------------------------------------------------------------------


def build_model(config: TrainConfig, tower: dual.TextTower) -> VisionTextDualEncoderModel:
    vision = ViTConfig(
        image_size=[config.image_height, config.image_width],
        patch_size=config.patch_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        intermediate_size=4 * config.hidden_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model_config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision,
        tower.model.config,
        projection_dim=config.projection_dim,
        logit_scale_init_value=config.logit_scale_init,
    )
    model = VisionTextDualEncoderModel(config=model_config)
    # The frozen sentence encoder replaces the randomly initialised text model after
    # construction, so no weight initialisation ever touches the pretrained weights.
    model.text_model = tower.model
    model.text_model.requires_grad_(False)
    return model


# --- objective --------------------------------------------------------------------------------


def _is_kind(caption, kind: str) -> bool:
    if kind == "colour-free":
        return not caption.colour
    if kind == "everyday":
        return caption.everyday
    if kind == "colour":
        return caption.colour
    return True


class CaptionSampler:
    """Random handfuls of caption embeddings per (assessment, polarity), like prompt sets.

    A handful is all colour-free, all everyday words, all colour-aware, or any mix: prompt
    sets are written in one register or several, and everyday wording gets its own draws so
    the smaller bank is not drowned by the expert one.
    """

    KINDS = ("colour-free", "everyday", "colour", "any")

    def __init__(self, embeddings: torch.Tensor, captions: list, generator: torch.Generator):
        self.embeddings = embeddings
        self.generator = generator
        self.pools: dict[tuple[str, str, str], torch.Tensor] = {}
        for key in ASSESSMENTS:
            for polarity in POLARITIES:
                for kind in self.KINDS:
                    rows = [
                        i
                        for i, c in enumerate(captions)
                        if c.assessment == key and c.polarity == polarity and _is_kind(c, kind)
                    ]
                    self.pools[key, polarity, kind] = torch.tensor(rows)

    def draw(self, draws: int) -> torch.Tensor:
        """(6, draws, 2, count) caption indices: positive then negative handful."""
        kinds = self.KINDS
        out = []
        for key in ASSESSMENTS:
            per_key = []
            for _ in range(draws):
                kind = kinds[int(torch.randint(len(kinds), (1,), generator=self.generator))]
                count = int(torch.randint(1, 7, (1,), generator=self.generator))
                pair = []
                for polarity in POLARITIES:
                    pool = self.pools[key, polarity, kind]
                    pick = torch.randint(len(pool), (count,), generator=self.generator)
                    pair.append(pool[pick])
                per_key.append(torch.stack(pair))
            out.append(per_key)
        return out  # type: ignore[return-value]


def text_loss(
    z: torch.Tensor,
    projected: torch.Tensor,
    handfuls: list,
    accept: torch.Tensor,
    judged: torch.Tensor,
    scale: torch.Tensor,
    class_weights: torch.Tensor,
) -> torch.Tensor:
    """Two-way contrast per assessment: own-polarity prompt mean vs the other polarity's.

    Only images whose assessment could be measured count (judged): a flat bead has no carbide
    distribution, so it teaches nothing about EA-6.
    """
    per_assessment = []
    for k, per_key in enumerate(handfuls):
        rows = judged[:, k]
        if int(rows.sum()) < 2:
            continue
        target = (~accept[rows, k]).long()  # 0: positive prompts are right, 1: negative
        losses = []
        for pair in per_key:
            centres = F.normalize(torch.stack([projected[idx].mean(0) for idx in pair]), dim=-1)
            logits = scale * z[rows] @ centres.T
            losses.append(F.cross_entropy(logits, target, weight=class_weights[k]))
            losses.append(batch_z_loss(logits[:, 0] - logits[:, 1], target, class_weights[k]))
        per_assessment.append(torch.stack(losses).mean())
    return balance_tasks(torch.stack(per_assessment))


def batch_z_loss(delta: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The same verdict after z-scoring the deltas over the batch (the article's batch
    normalisation): accepted images above the batch mean, rejected ones below. It keeps each
    class's deltas tight, so batch z-scores do not split a class when the batch is unbalanced."""
    if delta.numel() < 4 or float(delta.detach().std()) == 0.0:
        return delta.sum() * 0.0
    z = (delta - delta.mean()) / (delta.std(unbiased=False) + 1e-6)
    logits = torch.stack([z, -z], dim=1) * 2.0
    return F.cross_entropy(logits, target, weight=weight)


def balance_tasks(losses: torch.Tensor) -> torch.Tensor:
    """Mean of per-assessment losses, each weighted by its share of the total (no gradient
    through the weights): the assessment the model is worst at gets the most attention."""
    weights = losses.detach() / losses.detach().mean().clamp(min=1e-8)
    return (weights * losses).mean()


def image_loss(
    z_all: torch.Tensor,
    accept_all: torch.Tensor,
    judged: torch.Tensor,
    scale: torch.Tensor,
    class_weights: torch.Tensor,
    draws: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """The same contrast against random handfuls of other batch images (reference sets)."""
    losses = []
    for k in range(accept_all.shape[1]):
        z, accept = z_all[judged[:, k]], accept_all[judged[:, k], k]
        if int(accept.sum()) < 3 or int((~accept).sum()) < 3:
            continue
        n = z.shape[0]
        others = ~torch.eye(n, dtype=torch.bool)
        target = (~accept).long()
        for _ in range(draws):
            share = float(torch.empty(1).uniform_(0.05, 0.2, generator=generator))
            keep = (torch.rand((n, n), generator=generator) < share) & others
            # row i: a positive handful of accepted images and a negative one of rejected
            positive = keep & accept.unsqueeze(0)
            negative = keep & ~accept.unsqueeze(0)
            valid = (positive.sum(1) > 0) & (negative.sum(1) > 0)
            if int(valid.sum()) == 0:
                continue
            centres_pos = F.normalize(positive.float() @ z, dim=-1)
            centres_neg = F.normalize(negative.float() @ z, dim=-1)
            logits = scale * torch.stack(
                [(z * centres_pos).sum(-1), (z * centres_neg).sum(-1)], dim=1
            )[valid]
            losses.append(F.cross_entropy(logits, target[valid], weight=class_weights[k]))
            losses.append(
                batch_z_loss(logits[:, 0] - logits[:, 1], target[valid], class_weights[k])
            )
    return torch.stack(losses).mean() if losses else z.sum() * 0.0


def _subsample(captions: list, per_group: int) -> list:
    """The first per_group captions of every (assessment, polarity, register) group."""
    kept, counts = [], {}
    for caption in captions:
        group = (caption.assessment, caption.polarity, caption.colour, caption.everyday)
        if counts.get(group, 0) < per_group:
            kept.append(caption)
            counts[group] = counts.get(group, 0) + 1
    return kept


def aux_loss(
    predicted: torch.Tensor, targets: torch.Tensor, measured: torch.Tensor
) -> torch.Tensor:
    """Huber loss over the measured quantities only."""
    errors = F.smooth_l1_loss(predicted, targets, reduction="none")
    return (errors * measured).sum() / measured.sum().clamp(min=1)


# --- training ---------------------------------------------------------------------------------


def train(
    outdir: Path,
    config: TrainConfig = TrainConfig(),
    log: Log = print,
    evaluate_with: Path | None = None,
    eval_n: int = 200,
    eval_seed: int = 4242,
    command: str | None = None,
) -> TrainResult:
    """Generate, train, save to outdir; evaluate on a fresh set if a rules folder is given.

    Everything is written to OUTDIR.partial first and renamed at the end, so a failed or
    interrupted run leaves no half-written checkpoint behind.
    """
    outdir = Path(outdir)
    if evaluate_with is not None and eval_seed == config.seed:
        raise VLKBError(f"the evaluation seed must differ from the training seed {config.seed}")
    if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())):
        raise VLKBError(f"{outdir} exists and is not an empty folder; choose a new OUTDIR")
    partial = outdir.with_name(outdir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    started = time.monotonic()
    result = TrainResult(outdir=outdir, config=config)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    processor = make_processor(config)
    pixels, accept_np, quantities = generate(config, processor, log)
    targets, measured = aux_targets(quantities)
    judged_all = torch.from_numpy(judged_mask(quantities))
    result.seconds["data"] = time.monotonic() - started
    tower = dual.load_text_tower()

    captions = caption_bank()
    if config.captions_per_group:
        captions = _subsample(captions, config.captions_per_group)
    caption_embeddings = tower.embed([c.text for c in captions]).clone()  # not an inference tensor
    sampler = CaptionSampler(caption_embeddings, captions, generator)
    log(f"embedded {len(captions)} training captions with the frozen text tower")

    model = build_model(config, tower)
    # Auxiliary head (not saved): the pooled image features regress the true quantities, a
    # dense signal from every image that speeds up learning what the captions talk about.
    aux_head = torch.nn.Linear(config.hidden_size, AUX_OUTPUTS)
    trainable = [p for n, p in model.named_parameters() if not n.startswith("text_model.")]
    trainable += list(aux_head.parameters())
    result.parameters = {
        "vision_model": sum(p.numel() for p in model.vision_model.parameters()),
        "projections": model.visual_projection.weight.numel()
        + model.text_projection.weight.numel(),
        "text_model (frozen, not saved)": sum(p.numel() for p in model.text_model.parameters()),
    }
    text_projection = model.text_projection.weight
    decay = [p for p in trainable if p.dim() >= 2 and p is not text_projection]
    no_decay = [p for p in trainable if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            {
                "params": [text_projection],
                "weight_decay": config.weight_decay,
                "lr": config.learning_rate * config.text_projection_lr_scale,
            },
        ],
        lr=config.learning_rate,
    )
    n = len(pixels)
    steps_per_epoch = max(1, n // config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(config.warmup_fraction * total))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    accept = torch.from_numpy(accept_np)
    counted = judged_all.float().sum(0).clamp(min=1)
    share = ((accept & judged_all).float().sum(0) / counted).clamp(0.02, 0.98)
    # inverse-frequency weights: balanced accuracy is what counts
    class_weights = torch.stack([0.5 / share, 0.5 / (1 - share)], dim=1)

    model.train()
    model.text_model.eval()
    train_start = time.monotonic()
    step = 0
    first: list[float] = []
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        epoch_losses = []
        for b in range(steps_per_epoch):
            index = order[b * config.batch_size : (b + 1) * config.batch_size]
            x = to_pixel_values(pixels[index.numpy()], processor)
            if config.flip:
                mirror = torch.rand(len(index), generator=generator) < 0.5
                x[mirror] = x[mirror].flip(-1)
            y = accept[index]
            pooled = model.vision_model(pixel_values=x).pooler_output
            z = F.normalize(model.visual_projection(pooled), dim=-1)
            projected = F.normalize(model.text_projection(caption_embeddings), dim=-1)
            scale = model.logit_scale.exp().clamp(max=100.0)
            judged = judged_all[index]
            handfuls = sampler.draw(config.draws)
            loss_t = text_loss(z, projected, handfuls, y, judged, scale, class_weights)
            loss_i = image_loss(z, y, judged, scale, class_weights, config.draws, generator)
            loss_q = aux_loss(aux_head(pooled), targets[index], measured[index])
            loss = loss_t + config.image_loss_weight * loss_i + config.aux_weight * loss_q
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            epoch_losses.append(float(loss.detach()))
            if step <= 5:
                first.append(float(loss.detach()))
            if step % 20 == 0 or step == total:
                elapsed = time.monotonic() - train_start
                parts = [float(x.detach()) for x in (loss, loss_t, loss_i, loss_q, scale)]
                log(
                    f"epoch {epoch + 1}/{config.epochs} step {step}/{total} loss {parts[0]:.4f} "
                    f"(text {parts[1]:.4f}, image {parts[2]:.4f}, quantities {parts[3]:.4f}, "
                    f"scale {parts[4]:.1f}) {elapsed / step:.2f} s/step, "
                    f"{elapsed / step * (total - step) / 60:.1f} min left"
                )
        result.losses.append(float(np.mean(epoch_losses)))
    result.first_loss = float(np.mean(first)) if first else float("nan")
    result.seconds["training"] = time.monotonic() - train_start

    save(model, processor, partial)
    result.seconds["total"] = time.monotonic() - started
    log(f"trained in {result.seconds['total'] / 60:.1f} min")

    evaluation = None
    if evaluate_with is not None and eval_n > 0:
        eval_start = time.monotonic()
        evaluation = evaluate_checkpoint(partial, evaluate_with, eval_n, eval_seed)
        result.seconds["evaluation"] = time.monotonic() - eval_start
        log(f"evaluated on {eval_n} fresh micrographs (seed {eval_seed})")
    write_training_record(partial, result, evaluation, command)
    if outdir.exists():
        outdir.rmdir()  # empty, checked above
    partial.rename(outdir)
    log(f"wrote {outdir}")
    return result


def save(
    model: VisionTextDualEncoderModel, processor: ViTImageProcessorPil, outdir: Path
) -> None:
    """The vision tower and projections (not the text tower), processor, text tower pin."""
    outdir.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("text_model.")}
    # not the local path of the installed package: the checkpoint is the same on every machine
    model.config.text_config._name_or_path = dual.MINILM_L6_V2.upstream
    model.save_pretrained(outdir, state_dict=state)
    processor.save_pretrained(outdir)
    reference = dual.reference_for(dual.MINILM_L6_V2)
    (outdir / dual.TEXT_TOWER_FILE).write_text(json.dumps(reference, indent=2) + "\n")


def write_training_record(
    outdir: Path, result: TrainResult, evaluation: ModelEvaluation | None, command: str | None
) -> None:
    """training.json (everything about the run), MODEL_CARD.md from it, SHA256SUMS last."""
    record = {
        "command": command,
        "config": asdict(result.config),
        "captions": len(caption_bank()),
        "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
        "epoch_losses": [round(x, 5) for x in result.losses],
        "first_steps_loss": round(result.first_loss, 5),
        "parameters": result.parameters,
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "evaluation": evaluation.to_dict() if evaluation else None,
    }
    (outdir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    write_model_card(outdir)
    dual.write_checksums(outdir)
