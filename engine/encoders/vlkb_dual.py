"""VLKB's own dual encoder (`kb train-vlr`'s checkpoints) without transformers' model classes.

The checkpoint is a transformers VisionTextDualEncoderModel whose text tower is a pinned package
(engine/encoders/text_tower.py). Its image side, a MobileNetV1 tower and a linear projection,
runs here in plain torch (engine/encoders/mobilenet.py), read from the same safetensors file;
the text tower loads only when a text is embedded, which a qualification with the prompts
already in the knowledge-base cache never does. Embeddings equal transformers' to float
rounding (tests/test_dual.py), and the fingerprint is the same, so cached vectors stay valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from engine.encoders import text_tower
from engine.encoders.base import Encoder, local_grid, rgb
from engine.encoders.fingerprint import model_fingerprint
from engine.encoders.framing import frame_on_content
from engine.encoders.mobilenet import MobileNetV1, Preprocessing
from engine.metrology.families import ACQUISITION
from kb.config import DEFAULT_LEGEND, ModelSpec
from kb.errors import ModelLoadError

WEIGHTS = "model.safetensors"


def is_ported(model_dir: Path) -> bool:
    """Whether this checkpoint runs here: a pinned text tower, a ported tower and processor."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        processor = json.loads((model_dir / "preprocessor_config.json").read_text(encoding="utf-8"))
        MobileNetV1.from_config(config["vision_config"])
        Preprocessing.from_config(processor)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (model_dir / text_tower.TEXT_TOWER_FILE).is_file() and (model_dir / WEIGHTS).is_file()


def training_config(model_dir: Path) -> dict[str, Any]:
    """The `config` of a VLKB checkpoint's training.json; empty without a training record."""
    record = model_dir / "training.json"
    if not record.is_file():
        return {}
    try:
        config = json.loads(record.read_text(encoding="utf-8"))["config"]
    except (ValueError, KeyError, TypeError):
        return {}
    return config if isinstance(config, dict) else {}


def trained_families(config: dict[str, Any]) -> tuple[str, ...]:
    """The generator families a training config randomised over; none for an empty one."""
    families = config.get("families", ())
    return tuple(str(f) for f in families) if isinstance(families, list) else ()


class VlkbDualEncoder(Encoder):
    """Image tower and projections in plain torch; the pinned text tower loaded on first use."""

    def __init__(self, spec: ModelSpec, model_dir: Path) -> None:
        self.spec = spec
        self.model_dir = model_dir
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        processor = json.loads((model_dir / "preprocessor_config.json").read_text(encoding="utf-8"))
        self.pin = text_tower.read_reference(model_dir)
        if self.pin is None:
            raise ValueError(f"{model_dir} names no pinned text tower")
        # Installed in the pinned version: said now, not mid-run. Its files are hash-checked
        # when it loads, on first use: prompts cached under this fingerprint need it never.
        text_tower.text_tower_dir(self.pin, verify=False)
        self.preprocess = Preprocessing.from_config(processor)
        self.tower = MobileNetV1.from_config(config["vision_config"])
        self.dim = int(config["projection_dim"])
        text_width = int(config["text_config"]["hidden_size"])
        self.visual_projection = nn.Linear(self.tower.width, self.dim, bias=False)
        self.text_projection = nn.Linear(text_width, self.dim, bias=False)
        self._load_weights(load_file(str(model_dir / WEIGHTS)))
        self.max_text_length = min(self.pin.max_length,
                                   int(config["text_config"]["max_position_embeddings"]))
        self._text_tower: text_tower.TextTower | None = None
        self.fingerprint = model_fingerprint(model_dir)
        trained = training_config(model_dir)
        self.acquisition_trained = ACQUISITION in trained_families(trained)
        # The whole-image embedding looks through the window it was trained on; the local
        # and appearance maps read the picture as it is, cell by cell and phase by phase.
        self.frame_on_content = trained.get("frame_on_content") is True

    def _load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Every tensor of the image side, none missing and none left over (strict)."""
        tower = {k.removeprefix("vision_model."): v for k, v in weights.items()
                 if k.startswith("vision_model.")}
        self.tower.load_state_dict(tower, strict=True)
        self.visual_projection.load_state_dict({"weight": weights["visual_projection.weight"]})
        self.text_projection.load_state_dict({"weight": weights["text_projection.weight"]})
        for module in (self.tower, self.visual_projection, self.text_projection):
            module.eval().requires_grad_(False)

    @property
    def text_tower(self) -> text_tower.TextTower:
        """The pinned sentence encoder, hash-checked and loaded the first time it is needed."""
        if self._text_tower is None:
            model = f"model {self.spec.name!r} (backend dual, source {self.spec.source})"
            try:
                tower = text_tower.load_text_tower(self.pin)  # type: ignore[arg-type]
            except ModelLoadError as exc:
                raise ModelLoadError(f"{model} cannot embed texts: {exc}") from exc
            if tower.dim != self.text_projection.in_features:
                raise ModelLoadError(
                    f"{model} cannot embed texts: its text projection expects "
                    f"{self.text_projection.in_features}-d sentence embeddings, "
                    f"{tower.pin.package} gives {tower.dim}-d"
                )
            self._text_tower = tower
        return self._text_tower

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.tower(pixel_values))

    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        pictures = rgb(images)
        if self.frame_on_content:
            background = DEFAULT_LEGEND["background"]  # the legend every checkpoint trains on
            pictures = [frame_on_content(picture, background) for picture in pictures]
        return self.image_features(self.preprocess(pictures))

    def _appearance_batch(self, images: list[Image.Image]) -> torch.Tensor:
        """Channel means of the layer a quarter of the way up the tower (as every backend)."""
        return self._appearance_map_batch(images).mean(dim=(2, 3))

    def _appearance_map_batch(self, images: list[Image.Image]) -> torch.Tensor:
        quarter = len(self.tower.layer) // 4
        return self.tower.layer_output(self.preprocess(rgb(images)), quarter)

    def _patch_grid(self, image: Image.Image) -> torch.Tensor:
        """The local role: the tower's outputs at strides 4 and 8 (MobileNetV1.patch_layers),
        at the input size it was trained on."""
        pixels = self.preprocess([image])
        maps, x = [], self.tower.conv_stem(pixels)
        wanted = set(self.tower.patch_layers())
        for index, layer in enumerate(self.tower.layer):
            x = layer(x)
            if index in wanted:
                maps.append(x)
            if len(maps) == len(wanted):
                break
        return local_grid(maps)

    def _embed_text_batch(self, texts: list[str]) -> torch.Tensor:
        tower = self.text_tower
        encoded: dict[str, Any] = tower.tokenize(texts)
        return self.text_projection(tower.encode(encoded))
