"""What every encoder is: images and texts into one unit-norm space, embedded in batches.

This module needs torch but not transformers, so a backend that runs in plain torch (the
converted CNNs, VLKB's own dual encoder) costs a command no more than torch itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from engine.scoring import l2_normalize
from kb.config import ModelSpec
from kb.errors import ModelLoadError

Item = TypeVar("Item")


class Encoder(ABC):
    """One loaded model: embeds images and texts into the same unit-norm space.

    A subclass sets `spec`, `model_dir`, `dim`, `max_text_length` and `fingerprint` (the hash
    of the files that shape the embeddings) when it loads, and implements the three batch
    methods; batching, autograd and normalisation are done here once for all of them.
    """

    spec: ModelSpec
    model_dir: Path
    dim: int
    max_text_length: int
    fingerprint: str
    # Trained over acquisition variation (noise, blur, JPEG), as its training record says:
    # only then may applicability read a phase map in its legend (engine.appearance)
    acquisition_trained: bool = False

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) float32, unit rows; images become RGB first (micrographs may be P or RGBA)."""
        return self._batched(list(images), self._embed_image_batch)

    def appearance(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, channels) float32, unit rows: what an image looks like to this model.

        The mean activation of the image tower a quarter of the way up: colours, edges and
        textures, before the tower abstracts them into what its training captions name. A
        photograph, a grey image or another material's map lies far from every reference
        here even where its final embedding happens to land near one (measured on the shipped
        model: docs/rules.md, "Applicability").
        """
        return self._batched(list(images), self._appearance_batch)

    def appearance_maps(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """One (channels, h, w) float32 map per image: the layer `appearance` averages, before
        it is averaged, so that engine.appearance can pool it over each phase of a map."""
        size = self.spec.batch_size
        with torch.inference_mode():
            return [m.float().numpy() for i in range(0, len(images), size)
                    for m in self._appearance_map_batch(list(images[i : i + size]))]

    def _appearance_map_batch(self, images: list[Image.Image]) -> torch.Tensor:
        """(batch, channels, h, w) appearance maps; a tower without them refuses."""
        raise ModelLoadError(
            f"model {self.spec.name!r} (backend {self.spec.backend}) gives no appearance maps"
        )

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, unit rows; texts are padded and truncated to the model's max length."""
        return self._batched([str(text) for text in texts], self._embed_text_batch)

    def patch_grids(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """One (h, w, d) float32 grid of patch features per image, for the `local` role: the
        maps of one or two layers of the image tower on one grid, each averaged over its 3x3
        neighbourhood (PatchCore's local context). Each image on its own: sizes may differ."""
        with torch.inference_mode():
            return [self._patch_grid(image.convert("RGB")).float().numpy()
                    for image in images]

    def _patch_grid(self, image: Image.Image) -> torch.Tensor:
        """(h, w, d) patch features of one RGB image; a tower without them refuses."""
        raise ModelLoadError(
            f"model {self.spec.name!r} (backend {self.spec.backend}) gives no patch features; "
            "bind role `local` in kb.toml to a cnn model or the dual encoder"
        )

    def _batched(
        self, items: list[Item], embed: Callable[[list[Item]], torch.Tensor]
    ) -> np.ndarray:
        """Run embed over spec.batch_size chunks without autograd; stack and L2-normalise rows."""
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        size = self.spec.batch_size
        with torch.inference_mode():
            parts = [embed(items[i : i + size]).float().numpy() for i in range(0, len(items), size)]
        return l2_normalize(np.concatenate(parts)).astype(np.float32)

    @abstractmethod
    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        """(batch, dim) image embeddings, not yet normalised."""

    @abstractmethod
    def _appearance_batch(self, images: list[Image.Image]) -> torch.Tensor:
        """(batch, channels) appearance features, not yet normalised."""

    @abstractmethod
    def _embed_text_batch(self, texts: list[str]) -> torch.Tensor:
        """(batch, dim) text embeddings, not yet normalised."""


def local_grid(maps: Sequence[torch.Tensor], grid: int = 0) -> torch.Tensor:
    """(h, w, d): (1, c, h, w) layer maps averaged over 3x3 neighbourhoods, brought to the
    grid of maps[grid] (finer maps area-averaged down, coarser ones bilinearly up) and
    concatenated along channels."""
    pooled = [torch.nn.functional.avg_pool2d(m.float(), 3, stride=1, padding=1,
                                             count_include_pad=False) for m in maps]
    size = pooled[grid].shape[-2:]
    resized = [
        m if m.shape[-2:] == size
        else torch.nn.functional.adaptive_avg_pool2d(m, size) if m.shape[-1] > size[-1]
        else torch.nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=False)
        for m in pooled
    ]
    return torch.cat(resized, dim=1)[0].permute(1, 2, 0).contiguous()


def rgb(images: Sequence[Image.Image]) -> list[Image.Image]:
    """Every image as RGB: the towers were trained on three channels."""
    return [image.convert("RGB") for image in images]
