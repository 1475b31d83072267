"""Train VLKB's dual encoder: a small CNN image tower against the frozen MiniLM text tower.

`kb train-vlr OUTDIR --seed S` draws N micrographs with engine.metrology.synthetic, labels them
from their ground truth, and trains a MobileNetV1 image tower and both projections with the sentence
encoder locked (locked-text tuning), in two stages (engine.training.objective has the losses):

1. learning to see (the first `see_fraction` of the steps): the image tower alone learns the
   phase map of each micrograph on a 1/8-resolution grid (pores weighted up), the true
   quantities and the accept labels, all known exactly for generated maps;
2. learning to talk: the contrastive objectives VLKB scores with are added (image against
   caption handfuls, image against handfuls of other images), the stage-1 losses stay.

The tower is a batch-normalised CNN because pores are a fraction of a percent of the pixels:
batch normalisation scales such a sparse feature up to the size of the others, where the
layer-normalised ViT and ConvNeXt towers tried first learned pores late or not at all.

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
    MobileNetV1Config,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
    ViTImageProcessorPil,
)

from engine.encoders import text_tower
from engine.metrology.families import parse_families, sample_variants
from engine.metrology.quantities import PHASES, POROSITY
from engine.training.captions import ASSESSMENTS, caption_bank
from engine.training.card_evaluation import CARD_SEED, ModelEvaluation
from engine.training.example import EXAMPLE_CRITERIA, TrainingSample, render_resized
from engine.training.model_card import evaluate_checkpoint, write_model_card
from engine.training.objective import (
    CaptionSampler,
    aux_loss,
    image_loss,
    label_loss,
    phase_loss,
    phase_weights,
    text_loss,
)
from kb.errors import VLKBError

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes the trained weights; written to training.json and the card."""

    seed: int = 0
    n_images: int = 7000
    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    # image tower: MobileNetV1 on the whole 640x480 map resized to 320x240 (20 um per pixel)
    image_height: int = 240
    image_width: int = 320
    depth_multiplier: float = 0.25
    projection_dim: int = 256
    logit_scale_init: float = math.log(20.0)
    see_fraction: float = 0.15  # share of the steps in stage 1 (learning to see)
    image_loss_weight: float = 0.5
    separation_weight: float = 1.0  # the d' term of engine.training.objective.separation_loss
    separation_target: float = 6.0
    aux_weight: float = 2.0  # true quantities (and labels, times label_weight) from pooled
    label_weight: float = 1.0
    phase_weight: float = 1.0  # the phase map on the 1/8 grid
    pore_weight: float = 10.0  # the pore share of each cell, once more on its own
    draws: int = 4  # caption / reference handfuls per assessment and step
    flip: bool = True  # horizontal mirror: no quantity changes
    workers: int = 2
    captions_per_group: int = 0  # 0: the whole bank; else this many per (EA, polarity, register)
    # Domain randomisation over kb synth's families of variation (engine/metrology/families.py):
    # each image takes each family with probability family_share; () draws the default bead.
    families: tuple[str, ...] = ()
    family_share: float = 0.5
    # The tower sees each map through a window centred on its content (engine/encoders/
    # framing.py), in training and at run time alike, so margins and picture size do not
    # change what it reads.
    frame_on_content: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "families", parse_families(self.families))
        except ValueError as exc:
            raise VLKBError(f"--family: {exc}") from exc
        if not 0.0 < self.family_share <= 1.0:
            raise VLKBError(f"--family-share {self.family_share} is not in (0, 1]")


@dataclass
class TrainResult:
    outdir: Path
    config: TrainConfig
    seconds: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    first_loss: float = float("nan")  # mean over the first steps of the stage-2 objective
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
    "carbide_gradient",
    "carbide_clustering",
    "carbide_cv_ratio",
)


@dataclass
class TrainingData:
    """Generated micrographs as the image processor resizes them, with their ground truth."""

    pixels: np.ndarray  # (n, 3, H, W) uint8
    accept: np.ndarray  # (n, 6) bool, per assessment
    quantities: np.ndarray  # (n, len(AUX_QUANTITIES)), NaN where unmeasurable
    cells: np.ndarray  # (n, len(PHASES), H/8, W/8) phase shares per grid cell


def _render(job: tuple) -> TrainingSample:
    variant, seed, size, resample, grid, framed = job
    return render_resized(variant, seed, size, resample, grid=grid, frame_on_content=framed)


def generate(config: TrainConfig, processor: ViTImageProcessorPil, log: Log) -> TrainingData:
    """Render the training set in worker processes (numpy, scipy and PIL only)."""
    size, grid = (config.image_height, config.image_width), grid_of(config)
    variants = sample_variants(
        config.n_images, config.seed, config.families, share=config.family_share
    )  # without families: the default generator's beads, as the shipped model was trained
    jobs = [
        (variant, config.seed * 100_003 + index, size, int(processor.resample), grid,
         config.frame_on_content)
        for index, variant in enumerate(variants)
    ]
    n = len(jobs)
    data = TrainingData(
        pixels=np.empty((n, 3, *size), dtype=np.uint8),
        accept=np.empty((n, len(ASSESSMENTS)), dtype=bool),
        quantities=np.empty((n, len(AUX_QUANTITIES)), dtype=np.float64),
        cells=np.empty((n, len(PHASES), *grid), dtype=np.float32),
    )

    def store(index: int, sample: TrainingSample) -> None:  # filled in place: one copy in memory
        data.pixels[index] = sample.pixels
        data.accept[index] = [sample.labels[key] == "accept" for key in ASSESSMENTS]
        data.quantities[index] = [sample.quantities.get(q, np.nan) for q in AUX_QUANTITIES]
        data.cells[index] = sample.cells

    workers = max(1, min(config.workers, os.cpu_count() or 1))
    if workers > 1 and n >= 32:
        # fork (where there is one) re-imports nothing; train() renders before torch computes
        # anything, and the workers only run numpy/scipy/PIL code.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with context.Pool(workers) as pool:
            for index, sample in enumerate(pool.imap(_render, jobs, chunksize=16)):
                store(index, sample)
    else:
        for index, job in enumerate(jobs):
            store(index, _render(job))
    shares = ", ".join(f"{k} {data.accept[:, i].mean():.0%}" for i, k in enumerate(ASSESSMENTS))
    varied = sum(v.family != "default" for v in variants)
    mix = f"; {varied} varied by {', '.join(config.families)}" if config.families else ""
    log(f"generated {len(jobs)} micrographs (accept share: {shares}{mix})")
    return data


def grid_of(config: TrainConfig) -> tuple[int, int]:
    """The 1/8-resolution grid of the phase map: the size of the tower's stride-8 features
    (each stride-2 convolution of MobileNetV1 rounds up)."""
    def eighth(n: int) -> int:
        for _ in range(3):
            n = (n + 1) // 2
        return n

    return eighth(config.image_height), eighth(config.image_width)


# How far past its limit a quantity has to be for the auxiliary target to saturate (tanh).
MARGIN_WIDTHS = {
    "dilution_fraction": 0.02,
    "haz_depth_mm": 0.2,
    "reinforcement_height_mm": 0.15,
    "porosity_fraction": 0.01,
    "max_pore_diameter_um": 40.0,
    "carbide_fraction": 0.06,
    "carbide_gradient": 0.3,
    "carbide_clustering": 0.05,
    "carbide_cv_ratio": 0.08,
}
RAW_TARGETS = ("pore_count",)
AUX_OUTPUTS = sum(len(v) for v in EXAMPLE_CRITERIA.values()) + len(RAW_TARGETS)


def judged_mask(quantities: np.ndarray) -> np.ndarray:
    """(n, 6): False where an assessment's quantity is unmeasurable (e.g. no carbide
    distribution in a flat bead): its label there says nothing about what the image shows."""
    columns = [
        np.all(
            [np.isfinite(quantities[:, AUX_QUANTITIES.index(r.quantity)]) for r in rules],
            axis=0,
        )
        for rules in EXAMPLE_CRITERIA.values()
    ]
    return np.stack(columns, axis=1)


def aux_targets(quantities: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression targets and their mask (False where a quantity is unmeasurable).

    Per limit of the example criteria: tanh of the signed distance to the limit (positive on
    the accept side), so the features learn which side of each limit a bead is on, steeply
    near the limit and saturating far from it; plus the standardised square root of the pore
    count.
    """
    columns = []
    for rules in EXAMPLE_CRITERIA.values():
        for r in rules:
            values = quantities[:, AUX_QUANTITIES.index(r.quantity)]
            sign = 1.0 if r.op == ">=" else -1.0
            columns.append(np.tanh(sign * (values - r.limit) / MARGIN_WIDTHS[r.quantity]))
    for name in RAW_TARGETS:
        values = quantities[:, AUX_QUANTITIES.index(name)]
        values = np.sqrt(np.clip(values, 0, None)) if name == "pore_count" else values
        std = np.nanstd(values)
        columns.append(np.clip((values - np.nanmean(values)) / (std if std > 0 else 1.0), -4, 4))
    targets = np.stack(columns, axis=1)
    mask = np.isfinite(targets)
    return torch.from_numpy(np.nan_to_num(targets)).float(), torch.from_numpy(mask)


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


def vision_config(config: TrainConfig) -> MobileNetV1Config:
    vision = MobileNetV1Config(
        depth_multiplier=config.depth_multiplier,
        min_depth=8,
        tf_padding=False,
        image_size=config.image_width,
    )
    # VisionTextDualEncoderModel sizes the visual projection from `hidden_size`: the channels
    # MobileNetV1 pools at its end.
    vision.hidden_size = max(int(1024 * config.depth_multiplier), vision.min_depth)
    return vision


def build_model(config: TrainConfig, tower: text_tower.TextTower) -> VisionTextDualEncoderModel:
    model_config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision_config(config),
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


class SeeingHeads(torch.nn.Module):
    """Stage-1 heads, not saved: the phase map from the stride-8 features, and quantities and
    labels from the pooled ones."""

    def __init__(self, model: VisionTextDualEncoderModel, config: TrainConfig) -> None:
        super().__init__()
        vision = model.vision_model
        was_training = vision.training
        with torch.no_grad():
            probe = torch.zeros(1, 3, config.image_height, config.image_width)
            states = vision.eval()(pixel_values=probe, output_hidden_states=True)
        vision.train(was_training)
        grid = grid_of(config)
        self.tap = max(
            i for i, h in enumerate(states.hidden_states) if tuple(h.shape[-2:]) == grid
        )
        channels = states.hidden_states[self.tap].shape[1]
        # logits of the phase shares, then the pore share once more (engine.training.objective)
        self.phases = torch.nn.Conv2d(channels, len(PHASES) + 1, kernel_size=1)
        pooled = model.config.vision_config.hidden_size
        self.quantities = torch.nn.Linear(pooled, AUX_OUTPUTS + len(ASSESSMENTS))


# --- training ---------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything a training run holds between steps: data, targets, model, optimiser."""

    config: TrainConfig
    processor: ViTImageProcessorPil
    data: TrainingData
    targets: torch.Tensor
    measured: torch.Tensor
    judged: torch.Tensor
    accept: torch.Tensor
    cells: torch.Tensor
    phase_weights: torch.Tensor
    class_weights: torch.Tensor
    caption_embeddings: torch.Tensor
    sampler: CaptionSampler
    model: VisionTextDualEncoderModel
    heads: SeeingHeads
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    steps_per_epoch: int
    total_steps: int
    seeing_steps: int


@dataclass(frozen=True)
class StepLosses:
    """The losses of one optimiser step, detached, for the log."""

    total: float
    text: float
    image: float
    seeing: float
    scale: float


def prepare(config: TrainConfig, log: Log, result: TrainResult) -> Run:
    """Seed, generate the data and its targets, embed the captions, build model and optimiser.

    The order of the random draws is part of the reproducibility contract: the same seed
    gives the same bytes, so nothing here may be reordered.
    """
    started = time.monotonic()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    processor = make_processor(config)
    data = generate(config, processor, log)
    targets, measured = aux_targets(data.quantities)
    judged = torch.from_numpy(judged_mask(data.quantities))
    cells = torch.from_numpy(data.cells)
    weights_of_phases = phase_weights(cells)
    result.seconds["data"] = time.monotonic() - started

    tower = text_tower.load_text_tower()
    captions = caption_bank()
    if config.captions_per_group:
        captions = _subsample(captions, config.captions_per_group)
    caption_embeddings = tower.embed([c.text for c in captions]).clone()  # not an inference tensor
    sampler = CaptionSampler(captions, generator)
    log(f"embedded {len(captions)} training captions with the frozen text tower")

    model = build_model(config, tower)
    heads = SeeingHeads(model, config)
    trainable = [p for n, p in model.named_parameters() if not n.startswith("text_model.")]
    trainable += list(heads.parameters())
    result.parameters = {
        "vision_model": sum(p.numel() for p in model.vision_model.parameters()),
        "projections": model.visual_projection.weight.numel()
        + model.text_projection.weight.numel(),
        "text_model (frozen, not saved)": sum(p.numel() for p in model.text_model.parameters()),
    }
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in trainable if p.dim() >= 2],
             "weight_decay": config.weight_decay},
            {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )
    steps_per_epoch = max(1, len(data.pixels) // config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(config.warmup_fraction * total))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    accept = torch.from_numpy(data.accept)
    counted = judged.float().sum(0).clamp(min=1)
    share = ((accept & judged).float().sum(0) / counted).clamp(0.02, 0.98)
    return Run(
        config=config, processor=processor, data=data, targets=targets, measured=measured,
        judged=judged, accept=accept, cells=cells, phase_weights=weights_of_phases,
        # inverse-frequency weights: balanced accuracy is what counts
        class_weights=torch.stack([0.5 / share, 0.5 / (1 - share)], dim=1),
        caption_embeddings=caption_embeddings, sampler=sampler, model=model, heads=heads,
        trainable=trainable, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at), generator=generator,
        steps_per_epoch=steps_per_epoch, total_steps=total,
        seeing_steps=int(config.see_fraction * total),
    )


def step(run: Run, index: torch.Tensor, number: int) -> StepLosses:
    """One optimiser step on the micrographs `index`; stage 1 until `seeing_steps`."""
    config, model, heads = run.config, run.model, run.heads
    x = to_pixel_values(run.data.pixels[index.numpy()], run.processor)
    target_cells = run.cells[index]
    if config.flip:
        mirror = torch.rand(len(index), generator=run.generator) < 0.5
        x[mirror] = x[mirror].flip(-1)
        target_cells[mirror] = target_cells[mirror].flip(-1)
    y, judged = run.accept[index], run.judged[index]
    vision = model.vision_model(pixel_values=x, output_hidden_states=True)
    pooled = vision.pooler_output
    aux = heads.quantities(pooled)
    loss_see = config.aux_weight * (
        aux_loss(aux[:, :AUX_OUTPUTS], run.targets[index], run.measured[index])
        + config.label_weight * label_loss(aux[:, AUX_OUTPUTS:], y, judged)
    ) + config.phase_weight * phase_loss(
        heads.phases(vision.hidden_states[heads.tap]), target_cells,
        run.phase_weights, POROSITY, config.pore_weight,
    )
    z = F.normalize(model.visual_projection(pooled), dim=-1)
    scale = model.logit_scale.exp().clamp(max=100.0)
    handfuls = run.sampler.draw(config.draws)
    if number < run.seeing_steps:
        loss_t = loss_i = z.sum() * 0.0
    else:
        separation = (config.separation_weight, config.separation_target)

        def project(idx: torch.Tensor) -> torch.Tensor:
            return F.normalize(model.text_projection(run.caption_embeddings[idx]), dim=-1)

        loss_t = text_loss(z, project, handfuls, y, judged, scale, run.class_weights,
                           separation)
        loss_i = image_loss(z, y, judged, scale, run.class_weights, config.draws,
                            run.generator, separation)
    loss = loss_t + config.image_loss_weight * loss_i + loss_see
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.trainable, 1.0)
    run.optimizer.step()
    run.scheduler.step()
    return StepLosses(*(float(v.detach()) for v in (loss, loss_t, loss_i, loss_see, scale)))


def fit(run: Run, log: Log, result: TrainResult) -> None:
    """All epochs, then batch-norm statistics over the training images; losses into result."""
    config, model = run.config, run.model
    model.train()
    model.text_model.eval()
    started = time.monotonic()
    number = 0
    first: list[float] = []
    n = len(run.data.pixels)
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=run.generator)
        epoch_losses = []
        for b in range(run.steps_per_epoch):
            losses = step(run, order[b * config.batch_size : (b + 1) * config.batch_size], number)
            if number >= run.seeing_steps and len(first) < 5:  # the full objective's start
                first.append(losses.total)
            number += 1
            epoch_losses.append(losses.total)
            if number % 20 == 0 or number == run.total_steps:
                _log_step(log, epoch, config.epochs, number, run.total_steps, losses,
                          time.monotonic() - started)
        result.losses.append(float(np.mean(epoch_losses)))
    result.first_loss = float(np.mean(first)) if first else float("nan")
    recalibrate_batch_norm(model.vision_model, run.data.pixels, run.processor, run.generator)
    result.seconds["training"] = time.monotonic() - started


def _log_step(log: Log, epoch: int, epochs: int, number: int, total: int, losses: StepLosses,
              elapsed: float) -> None:
    log(
        f"epoch {epoch + 1}/{epochs} step {number}/{total} loss {losses.total:.4f} "
        f"(text {losses.text:.4f}, image {losses.image:.4f}, seeing {losses.seeing:.4f}, "
        f"scale {losses.scale:.1f}) {elapsed / number:.2f} s/step, "
        f"{elapsed / number * (total - number) / 60:.1f} min left"
    )


def checkpoint(
    run: Run,
    outdir: Path,
    partial: Path,
    result: TrainResult,
    log: Log,
    evaluate_with: Path | None,
    eval_n: int,
    eval_seed: int,
    command: str | None,
) -> None:
    """Save into `partial`, evaluate there, write the record and card, then rename to outdir."""
    save(run.model, run.processor, partial)
    evaluation = None
    if evaluate_with is not None and eval_n > 0:
        eval_start = time.monotonic()
        evaluation = evaluate_checkpoint(partial, evaluate_with, eval_n, eval_seed)
        result.seconds["evaluation"] = time.monotonic() - eval_start
        log(f"evaluated on {eval_n} fresh micrographs (seed {eval_seed})")
    write_training_record(partial, result, evaluation, command)
    if outdir.exists():
        outdir.rmdir()  # empty, checked before training started
    partial.rename(outdir)
    log(f"wrote {outdir}")


def train(
    outdir: Path,
    config: TrainConfig = TrainConfig(),
    log: Log = print,
    evaluate_with: Path | None = None,
    eval_n: int = 200,
    eval_seed: int = CARD_SEED,
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
    run = prepare(config, log, result)
    fit(run, log, result)
    result.seconds["total"] = time.monotonic() - started
    log(f"trained in {result.seconds['total'] / 60:.1f} min")
    checkpoint(run, outdir, partial, result, log, evaluate_with, eval_n, eval_seed, command)
    return result


def _subsample(captions: list, per_group: int) -> list:
    """The first per_group captions of every (assessment, polarity, register) group."""
    kept, counts = [], {}
    for caption in captions:
        group = (caption.assessment, caption.polarity, caption.colour, caption.plain)
        if counts.get(group, 0) < per_group:
            kept.append(caption)
            counts[group] = counts.get(group, 0) + 1
    return kept


@torch.no_grad()
def recalibrate_batch_norm(
    vision: torch.nn.Module, pixels: np.ndarray, processor: ViTImageProcessorPil,
    generator: torch.Generator, images: int = 2048, batch: int = 64,
) -> None:
    """Population statistics in every BatchNorm layer, averaged over training images.

    transformers' MobileNetV1 keeps TensorFlow's momentum (0.9997) in torch's sense, so its
    running statistics are those of the last batch alone; a cumulative average over a couple
    of thousand images is what inference should normalise with.
    """
    norms = [m for m in vision.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average
    vision.train()
    order = torch.randperm(len(pixels), generator=generator)[:images].numpy()
    for start in range(0, len(order), batch):
        vision(pixel_values=to_pixel_values(pixels[order[start : start + batch]], processor))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    vision.eval()


def save(
    model: VisionTextDualEncoderModel, processor: ViTImageProcessorPil, outdir: Path
) -> None:
    """The vision tower and projections (not the text tower), processor, text tower pin."""
    outdir.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("text_model.")}
    # not the local path of the installed package: the checkpoint is the same on every machine
    model.config.text_config._name_or_path = text_tower.MINILM_L6_V2.upstream
    model.save_pretrained(outdir, state_dict=state)
    processor.save_pretrained(outdir)
    reference = text_tower.reference_for(text_tower.MINILM_L6_V2)
    (outdir / text_tower.TEXT_TOWER_FILE).write_text(json.dumps(reference, indent=2) + "\n")


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
    text_tower.write_checksums(outdir)
