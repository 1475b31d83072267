"""What VLKB's dual encoder is trained to do, as small torch functions.

Learning to talk (the scoring VLKB does, made differentiable):

* `text_loss`: for each assessment the image must be closer to the mean of a random handful of
  captions of its label's polarity than to a handful of the other polarity;
* `image_loss`: the same against handfuls of other images of the batch with the same and the
  other label, which is how reference images are scored;
* both also after z-scoring the deltas over the batch (`batch_z_loss`), and with a separation
  term (`separation_loss`): accepted and rejected images' deltas apart by several of their own
  standard deviations, so the delta depends on its assessment's verdict alone and not on the
  other assessments' (a delta that also moves with another verdict puts the z-score threshold
  in the wrong place for half the images).

Learning to see (dense ground truth the generator gives for free):

* `phase_loss`: each cell of a 1/8-resolution grid predicts the share of every phase in it,
  with rare phases weighted up, and the share of pores once more on its own; pores are a
  fraction of a percent of the pixels and the colour of a pore lies between two legend
  colours, so without this the tower learns them late or never;
* `aux_loss` and `label_loss`: the true quantities and accept labels from the pooled features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from engine.training.captions import ASSESSMENTS, POLARITIES, Caption

Handfuls = list[list[torch.Tensor]]  # per assessment, per draw: (2, count) caption indices


class CaptionSampler:
    """Random handfuls of captions per (assessment, polarity), like an assessment's prompts.

    A handful is all colour-free, all plain words, all colour-aware, or any mix: prompt sets
    are written in one register or several, and each register gets draws of its own so the
    larger ones do not drown the smaller.
    """

    KINDS = ("colour-free", "plain", "colour", "any")

    def __init__(self, captions: Sequence[Caption], generator: torch.Generator) -> None:
        self.generator = generator
        self.pools: dict[tuple[str, str, str], torch.Tensor] = {}
        for key in ASSESSMENTS:
            for polarity in POLARITIES:
                for kind in self.KINDS:
                    rows = [
                        i for i, c in enumerate(captions)
                        if c.assessment == key and c.polarity == polarity and _is_kind(c, kind)
                    ]
                    if not rows:
                        raise ValueError(f"no {kind} captions for {key} {polarity}")
                    self.pools[key, polarity, kind] = torch.tensor(rows)

    def _randint(self, high: int, size: int = 1) -> torch.Tensor:
        return torch.randint(high, (size,), generator=self.generator)

    def draw(self, draws: int, largest: int = 6) -> Handfuls:
        """Per assessment, `draws` pairs of (positive, negative) handfuls of 1..largest."""
        out = []
        for key in ASSESSMENTS:
            per_key = []
            for _ in range(draws):
                kind = self.KINDS[int(self._randint(len(self.KINDS)))]
                count = 1 + int(self._randint(largest))
                pair = [
                    self.pools[key, polarity, kind][self._randint(
                        len(self.pools[key, polarity, kind]), count)]
                    for polarity in POLARITIES
                ]
                per_key.append(torch.stack(pair))
            out.append(per_key)
        return out


def _is_kind(caption: Caption, kind: str) -> bool:
    return {
        "colour-free": not caption.colour,
        "plain": caption.plain,
        "colour": caption.colour,
    }.get(kind, True)


# --- learning to talk -------------------------------------------------------------------------


def separation_loss(delta: torch.Tensor, target: torch.Tensor, wanted: float) -> torch.Tensor:
    """softplus(wanted - d'), d' = (mean accept - mean reject) / pooled within-class std."""
    accept = target == 0
    if int(accept.sum()) < 2 or int((~accept).sum()) < 2:
        return delta.sum() * 0.0
    pos, neg = delta[accept], delta[~accept]
    spread = 0.5 * (pos.var(unbiased=False) + neg.var(unbiased=False))
    d_prime = (pos.mean() - neg.mean()) / (spread + 1e-6).sqrt()
    return F.softplus(wanted - d_prime)


def batch_z_loss(
    delta: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
    separation: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """The verdict after z-scoring the deltas over the batch (the article's batch
    normalisation): accepted images above the batch mean, rejected ones below; plus
    separation[0] x separation_loss with d' wanted = separation[1]."""
    if delta.numel() < 4 or float(delta.detach().std()) == 0.0:
        return delta.sum() * 0.0
    z = (delta - delta.mean()) / (delta.std(unbiased=False) + 1e-6)
    loss = F.cross_entropy(torch.stack([z, -z], dim=1) * 2.0, target, weight=weight)
    strength, wanted = separation
    if strength:
        loss = loss + strength * separation_loss(delta, target, wanted)
    return loss


def balance_tasks(losses: torch.Tensor) -> torch.Tensor:
    """Mean of per-assessment losses, each weighted by its share of the total (no gradient
    through the weights): the assessment the model is worst at gets the most attention."""
    weights = losses.detach() / losses.detach().mean().clamp(min=1e-8)
    return (weights * losses).mean()


def text_loss(
    z: torch.Tensor,
    project: Callable[[torch.Tensor], torch.Tensor],
    handfuls: Handfuls,
    accept: torch.Tensor,
    judged: torch.Tensor,
    scale: torch.Tensor,
    class_weights: torch.Tensor,
    separation: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """Two-way contrast per assessment: own-polarity caption mean against the other's.

    `project` maps caption indices to unit projected embeddings. Only images whose assessment
    could be measured count (judged): a flat bead has no carbide distribution, so it teaches
    nothing about EA-6.
    """
    per_assessment = []
    for k, per_key in enumerate(handfuls):
        rows = judged[:, k]
        if int(rows.sum()) < 2:
            continue
        target = (~accept[rows, k]).long()  # 0: the positive captions are right, 1: negative
        losses = []
        for pair in per_key:
            centres = F.normalize(torch.stack([project(idx).mean(0) for idx in pair]), dim=-1)
            logits = scale * z[rows] @ centres.T
            losses.append(F.cross_entropy(logits, target, weight=class_weights[k]))
            losses.append(batch_z_loss(logits[:, 0] - logits[:, 1], target, class_weights[k],
                                       separation))
        per_assessment.append(torch.stack(losses).mean())
    if not per_assessment:
        return z.sum() * 0.0
    return balance_tasks(torch.stack(per_assessment))


def image_loss(
    z_all: torch.Tensor,
    accept_all: torch.Tensor,
    judged: torch.Tensor,
    scale: torch.Tensor,
    class_weights: torch.Tensor,
    draws: int,
    generator: torch.Generator,
    separation: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """The same contrast against random handfuls of the other batch images (reference sets)."""
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
            losses.append(batch_z_loss(logits[:, 0] - logits[:, 1], target[valid],
                                       class_weights[k], separation))
    return torch.stack(losses).mean() if losses else z_all.sum() * 0.0


# --- learning to see --------------------------------------------------------------------------


def phase_weights(cells: torch.Tensor) -> torch.Tensor:
    """(1, phases, 1, 1) inverse-frequency weights of the phases over a training set's cells,
    scaled to mean 1: a pore cell counts as much as a background one."""
    share = cells.mean(dim=(0, 2, 3)).clamp(min=1e-4)
    weights = 1.0 / share
    return (weights / weights.mean()).view(1, -1, 1, 1)


def phase_loss(
    predicted: torch.Tensor, cells: torch.Tensor, weights: torch.Tensor, pore_index: int,
    pore_weight: float,
) -> torch.Tensor:
    """Weighted soft cross-entropy of the predicted phase shares per cell (one channel per
    phase of `cells`), plus pore_weight x the squared error of the pore share alone (one
    more predicted channel, in tenths of a cell)."""
    phases = cells.shape[1]
    log_shares = F.log_softmax(predicted[:, :phases], dim=1)
    cross_entropy = -(cells * log_shares * weights).sum(dim=1).mean()
    pores = F.mse_loss(predicted[:, phases], cells[:, pore_index] * 10.0)
    return cross_entropy + pore_weight * pores


def aux_loss(
    predicted: torch.Tensor, targets: torch.Tensor, measured: torch.Tensor
) -> torch.Tensor:
    """Huber loss over the measured quantities only."""
    errors = F.smooth_l1_loss(predicted, targets, reduction="none")
    return (errors * measured).sum() / measured.sum().clamp(min=1)


def label_loss(logits: torch.Tensor, accept: torch.Tensor, judged: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of every judged accept label."""
    errors = F.binary_cross_entropy_with_logits(logits, accept.float(), reduction="none")
    return (errors * judged).sum() / judged.sum().clamp(min=1)
