"""Local evidence: where an image departs from its good references, as PatchCore measures it.

Patch features of the positive references form a memory bank (greedy k-center coreset, so it
stays small); a sample's anomaly map is each patch's distance to its nearest bank patch,
upsampled to the image; its score is a high quantile (or top-k mean) of that map. Plain
numpy and PIL only: the encoder hands over patch features, everything after them is here,
so each step can be checked by hand and a worker needs no database to score.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from engine.scoring import Normalization, population_stats

MAP_WIDTH = 160  # the stored map's width in pixels: enough to see where, small in a record
MAX_REGIONS = 10
PROJECTION_DIM = 128  # k-center distances are computed in a random projection this wide
CANDIDATES_PER_ROW = 32  # k-center searches at most this many patches per bank row


@dataclass(frozen=True)
class LocalSettings:
    """What an assessment's [local] table asks for (kb.rules.LocalRule, as plain numbers)."""

    quantile: float = 0.999
    top_k: int | None = None
    coreset: int = 2000


def coreset(features: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Indices of `size` rows chosen by greedy k-center (each next row the one farthest from
    those chosen), deterministic: it starts from the row nearest the mean and measures in a
    fixed random projection. The rare patches (a pore, an edge) are kept, the many alike
    background patches thinned, which is what a nearest-neighbour bank needs. Beyond
    CANDIDATES_PER_ROW x size rows, a fixed random subset of that many is searched, so fifty
    references cost seconds, not minutes."""
    n = len(features)
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    pool = np.arange(n)
    if n > CANDIDATES_PER_ROW * size:
        pool = np.sort(rng.choice(n, CANDIDATES_PER_ROW * size, replace=False))
    x = np.asarray(features[pool], dtype=np.float32)
    if x.shape[1] > PROJECTION_DIM:
        x = x @ rng.standard_normal((x.shape[1], PROJECTION_DIM)).astype(np.float32)
    start = int(np.argmin(((x - x.mean(axis=0)) ** 2).sum(axis=1)))
    chosen = np.empty(size, dtype=np.int64)
    chosen[0] = start
    squared = np.einsum("ij,ij->i", x, x)  # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b: one product
    nearest = squared + squared[start] - 2.0 * (x @ x[start])  # per pick instead of a pass
    for i in range(1, size):  # over a copy of every row
        pick = int(np.argmax(nearest))
        chosen[i] = pick
        np.minimum(nearest, squared + squared[pick] - 2.0 * (x @ x[pick]), out=nearest)
    return pool[chosen]


def nearest_distances(patches: np.ndarray, bank: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Euclidean distance of each patch row to its nearest bank row."""
    patches = np.asarray(patches, dtype=np.float32)
    bank = np.asarray(bank, dtype=np.float32)
    bank_sq = (bank**2).sum(axis=1)
    out = np.empty(len(patches), dtype=np.float32)
    for start in range(0, len(patches), chunk):
        part = patches[start : start + chunk]
        d2 = (part**2).sum(axis=1, keepdims=True) + bank_sq[None, :] - 2.0 * part @ bank.T
        out[start : start + chunk] = np.sqrt(np.clip(d2.min(axis=1), 0.0, None))
    return out


def build_bank(grids: Sequence[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(k, d) float32: the coreset of every patch of these (h, w, d) feature grids, and (k,)
    the index of the grid each bank row came from."""
    flat = np.concatenate([np.asarray(g, np.float32).reshape(-1, g.shape[-1]) for g in grids])
    source = np.concatenate([np.full(g.shape[0] * g.shape[1], i) for i, g in enumerate(grids)])
    chosen = coreset(flat, size)
    return flat[chosen], source[chosen]


def patch_map(grid: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """(h, w) nearest-neighbour distance of each patch of an (h, w, d) grid."""
    h, w, d = grid.shape
    return nearest_distances(grid.reshape(-1, d), bank).reshape(h, w)


def upsample(patches: np.ndarray, size: tuple[int, int], sigma: float = 4.0) -> np.ndarray:
    """(height, width) map at image size: bilinear, then a Gaussian blur of `sigma` image
    pixels so a defect reads as one blob rather than a patch-grid checkerboard."""
    width, height = size
    image = Image.fromarray(np.asarray(patches, dtype=np.float32), mode="F")
    full = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), np.float32)
    return ndimage.gaussian_filter(full, sigma) if sigma > 0 else full


def image_score(anomaly: np.ndarray, settings: LocalSettings) -> float:
    """How far the image departs from the references: the mean of its top_k map values, or
    the map's `quantile`; a high value is bad."""
    values = np.asarray(anomaly, dtype=np.float64).ravel()
    if settings.top_k is not None:
        k = min(settings.top_k, values.size)
        return float(np.partition(values, values.size - k)[values.size - k :].mean())
    return float(np.quantile(values, settings.quantile))


@dataclass(frozen=True)
class Region:
    """A connected part of the map above the threshold, in image pixels; score its peak."""

    x: int
    y: int
    width: int
    height: int
    score: float

    def to_dict(self) -> dict[str, float | int]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height,
                "score": round(self.score, 4)}


def regions(anomaly: np.ndarray, threshold: float, limit: int = MAX_REGIONS) -> list[Region]:
    """Connected components of map > threshold, strongest peak first; with none above it,
    the single strongest point's neighbourhood is not invented: the list is empty."""
    labels, count = ndimage.label(anomaly > threshold)
    if count == 0:
        return []
    found = []
    peaks = ndimage.maximum(anomaly, labels, index=np.arange(1, count + 1))
    for index, box in enumerate(ndimage.find_objects(labels)):
        rows, cols = box
        found.append(Region(int(cols.start), int(rows.start), int(cols.stop - cols.start),
                            int(rows.stop - rows.start), float(peaks[index])))
    found.sort(key=lambda r: (-r.score, r.y, r.x))
    return found[:limit]


def map_png(anomaly: np.ndarray, scale: float, width: int = MAP_WIDTH) -> str:
    """The map as a small greyscale PNG data URI: 0 black, `scale` and above white."""
    height = max(1, round(anomaly.shape[0] * width / anomaly.shape[1]))
    grey = np.clip(np.asarray(anomaly, np.float64) / max(scale, 1e-12), 0.0, 1.0) * 255.0
    image = Image.fromarray(grey.astype(np.uint8), mode="L").resize(
        (width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(frozen=True)
class LocalModel:
    """One assessment's bank and the statistics that standardise its scores.

    threshold: the highest map value the references reach against banks without their own
    patches; what lies above it is a departure the good references never showed.
    """

    bank: np.ndarray
    settings: LocalSettings
    norm: Normalization | None  # of deltas = -score (higher = more like the references)
    threshold: float


@dataclass(frozen=True)
class LocalResult:
    """What one sample's local evidence is: score, delta (= -score), map and regions."""

    score: float
    delta: float
    anomaly: np.ndarray  # (height, width) at image size
    regions: list[Region]


def fit(grids: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]],
        settings: LocalSettings) -> LocalModel:
    """The bank of all positive reference grids, normalised leave-one-out: each reference is
    scored against the bank without the rows its own patches gave (one coreset, not one per
    reference; a little stricter than a bank rebuilt without it, as its neighbourhood may
    have been covered by its own patch)."""
    bank, source = build_bank(grids, settings.coreset)
    scores, peaks = [], []
    if len(grids) >= 2:
        for i in range(len(grids)):
            others = bank[source != i]
            if len(others) == 0:
                continue
            anomaly = upsample(patch_map(grids[i], others), sizes[i])
            scores.append(image_score(anomaly, settings))
            peaks.append(float(anomaly.max()))
    norm = None
    if len(scores) >= 2:
        stats = population_stats(-np.asarray(scores), "references")
        norm = stats if stats.sigma > 0 else None
    threshold = max(peaks) if peaks else float("inf")
    return LocalModel(bank, settings, norm, threshold)


def score(model: LocalModel, grid: np.ndarray, size: tuple[int, int]) -> LocalResult:
    """One sample's map, score and regions against the model."""
    anomaly = upsample(patch_map(grid, model.bank), size)
    value = image_score(anomaly, model.settings)
    found = regions(anomaly, model.threshold) if np.isfinite(model.threshold) else []
    return LocalResult(value, -value, anomaly, found)
