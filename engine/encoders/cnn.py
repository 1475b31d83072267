"""The `cnn` backend: an ImageNet-pretrained convolutional network as a generic image encoder.

It plays the `image` role only (reference images), so a workspace works offline on any material
without a vision-language model. A model folder, written once by `kb models install`, holds
`config.json` (architecture, input size, normalisation, layers, embedding mode) and
`model.safetensors`; nothing is unpickled here.

The embedding is chosen in config.json:
- `pooled`: the global average of the last feature map (what the network recognises);
- `texture`: the channel mean and standard deviation of several layers, the classic texture
  descriptor of microstructure characterisation (how the image is made, not what it shows);
- `both`: the two, each scaled to unit length so neither outweighs the other.
Within `texture` every layer's statistics are scaled to unit length too, so a wide layer does not
drown a narrow one. The whole vector is L2-normalised like every other encoder's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from engine.encoders import cnn_nets
from engine.encoders.base import Encoder, local_grid
from engine.encoders.fingerprint import model_fingerprint
from kb.config import ModelSpec
from kb.errors import ModelLoadError

MODEL_TYPE = "vlkb-cnn"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EMBEDDINGS = ("pooled", "texture", "both")
# The local role's layers per architecture (strides 4 and 8 of the input: past the raw
# pixels, fine enough for a pore of a few pixels), and the longer side an image is scaled to
# first (aspect kept). Chosen on `kb synth --seed 11` pore maps: Lite0 block2+block4 at 320
# gave pixel AUROC 0.991 / AUPRO 0.937, block4+block10 0.981 / 0.892 and block4+block7 at
# 448 0.987 / 0.923, the first also the fastest (bench/local_maps.py).
# The local role's layers (strides 2 and 4, on the grid of the second): fine enough for a
# pore of a few pixels or a speck in a weave, which deeper layers' context blurs away.
PATCH_LAYERS = {"efficientnet_lite0": ("block1", "block2"),
                "vgg19_features": ("conv2_2", "conv3_4")}
PATCH_SIDE = 480
CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class CnnConfig:
    """What config.json of a cnn model folder says; `check` refuses anything inconsistent."""

    architecture: str
    input_size: int  # images are resized to input_size x input_size
    channel_order: str  # RGB, or BGR for Caffe-trained weights
    pixel_scale: float  # pixel values run 0..pixel_scale before mean and std apply
    mean: tuple[float, float, float]  # per input channel, in channel_order
    std: tuple[float, float, float]
    pooled_layer: str
    texture_layers: tuple[str, ...]
    embedding: str
    model_type: str = MODEL_TYPE

    def check(self) -> None:
        """ValueError naming the first wrong field."""
        if self.architecture not in cnn_nets.ARCHITECTURES:
            known = ", ".join(cnn_nets.ARCHITECTURES)
            raise ValueError(f"architecture {self.architecture!r} is not one of {known}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding {self.embedding!r} is not one of {', '.join(EMBEDDINGS)}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order {self.channel_order!r} is not RGB or BGR")
        if not 16 <= self.input_size <= 1024:
            raise ValueError(f"input_size {self.input_size} is not between 16 and 1024")
        numbers = (self.pixel_scale, *self.mean, *self.std)
        if len(self.mean) != 3 or len(self.std) != 3 or not all(map(math.isfinite, numbers)):
            raise ValueError("mean and std need three finite numbers each")
        if self.pixel_scale <= 0 or min(self.std) <= 0:
            raise ValueError("pixel_scale and std must be positive")
        taps = cnn_nets.build(self.architecture).tap_names()  # type: ignore[operator]
        for layer in (self.pooled_layer, *self.texture_layers):
            if layer not in taps:
                raise ValueError(f"layer {layer!r} is not a tap of {self.architecture}")
        if self.embedding != "pooled" and not self.texture_layers:
            raise ValueError(f"embedding {self.embedding!r} needs texture_layers")

    def layers(self) -> list[str]:
        """The taps this embedding reads."""
        wanted = [] if self.embedding == "texture" else [self.pooled_layer]
        if self.embedding != "pooled":
            wanted += [t for t in self.texture_layers if t not in wanted]
        return wanted

    def dim(self, channels: dict[str, int]) -> int:
        pooled = 0 if self.embedding == "texture" else channels[self.pooled_layer]
        texture = 0 if self.embedding == "pooled" else sum(
            2 * channels[t] for t in self.texture_layers
        )
        return pooled + texture

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        data["texture_layers"] = list(self.texture_layers)
        return data

    @classmethod
    def from_json(cls, data: Any) -> CnnConfig:
        if not isinstance(data, dict):
            raise ValueError("config.json is not a JSON object")
        fields = set(cls.__dataclass_fields__)
        unknown = set(data) - fields - {"source"}  # source: provenance only
        missing = fields - set(data) - {"model_type"}
        if unknown or missing:
            raise ValueError(f"config.json has unknown {sorted(unknown)} / lacks {sorted(missing)}")
        config = cls(
            architecture=str(data["architecture"]),
            input_size=_integer(data["input_size"], "input_size"),
            channel_order=str(data["channel_order"]),
            pixel_scale=float(data["pixel_scale"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            pooled_layer=str(data["pooled_layer"]),
            texture_layers=tuple(str(v) for v in data["texture_layers"]),
            embedding=str(data["embedding"]),
            model_type=str(data.get("model_type", MODEL_TYPE)),
        )
        config.check()
        return config

    @classmethod
    def read(cls, model_dir: Path) -> CnnConfig:
        path = Path(model_dir) / CONFIG_FILE
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{path}: {exc}") from exc


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def missing_files(model_dir: Path) -> list[str]:
    """Which of config.json and model.safetensors a cnn model folder lacks."""
    return [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (model_dir / name).is_file()]


def load_network(model_dir: Path, config: CnnConfig, fold: bool = True) -> torch.nn.Module:
    """The network with every weight of model.safetensors (no more, no fewer), in eval mode;
    folded for inference (batch norms merged, channels-last memory, faster on CPU) unless
    `fold` is False (the layout the weights were stored in)."""
    net = cnn_nets.build(config.architecture)
    weights = load_file(str(Path(model_dir) / WEIGHTS_FILE), device="cpu")
    net.load_state_dict(weights, strict=True)
    if not fold:
        return net.eval()
    return net.for_inference().to(memory_format=torch.channels_last)  # type: ignore[operator]


def pixels(images: Sequence[Image.Image], config: CnnConfig) -> torch.Tensor:
    """(B, 3, size, size) float32: each image as RGB, resized whole (nothing is cropped away:
    a defect near the border still counts), in the channel order and normalisation of the
    weights."""
    size = (config.input_size, config.input_size)
    arrays = [
        np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), np.float32)
        for image in images
    ]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return _normalised(batch, config)


def patch_pixels(image: Image.Image, config: CnnConfig, side: int | None = None) -> torch.Tensor:
    """(1, 3, h, w): one RGB image with its longer side at `side` (aspect kept, each side a
    multiple of 32 so every stride divides it), normalised as the weights expect."""
    scale = (side or PATCH_SIDE) / max(image.size)
    size = tuple(max(32, round(v * scale / 32) * 32) for v in image.size)
    array = np.asarray(image.resize(size, Image.Resampling.BILINEAR), np.float32)
    batch = torch.from_numpy(array).permute(2, 0, 1)[None]
    return _normalised(batch, config)


def _normalised(batch: torch.Tensor, config: CnnConfig) -> torch.Tensor:
    """(B, 3, h, w) RGB pixels 0-255 in the channel order, scale and normalisation of the
    weights, channels-last as the network runs fastest."""
    if config.channel_order == "BGR":
        batch = batch.flip(1)
    batch = batch * (config.pixel_scale / 255.0)
    mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((batch - mean) / std).contiguous(memory_format=torch.channels_last)


def features(net: torch.nn.Module, config: CnnConfig, batch: torch.Tensor) -> torch.Tensor:
    """(B, dim) embedding of a normalised batch, not yet normalised as a whole."""
    taps = net.forward_taps(batch, config.layers())  # type: ignore[operator]
    parts = []
    if config.embedding != "texture":
        parts.append(_unit(taps[config.pooled_layer].mean(dim=(2, 3))))
    if config.embedding != "pooled":
        stats = []
        for layer in config.texture_layers:
            flat = taps[layer].flatten(2)
            stats.append(_unit(torch.cat([flat.mean(-1), flat.std(-1, correction=0)], dim=1)))
        # The texture block as a whole has unit length, like the pooled part.
        parts.append(torch.cat(stats, dim=1) / math.sqrt(len(stats)))
    return torch.cat(parts, dim=1)


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


class CnnEncoder(Encoder):
    """A converted CNN behind the Encoder interface; it embeds images and refuses texts."""

    def __init__(self, spec: ModelSpec, model_dir: Path) -> None:  # no transformers here
        self.spec = spec
        self.model_dir = model_dir
        self.config = CnnConfig.read(model_dir)
        self.model = load_network(model_dir, self.config)
        with torch.inference_mode():
            probe = self.model.forward_taps(  # type: ignore[operator]
                torch.zeros(1, 3, 32, 32), self.config.layers()
            )
        self.dim = self.config.dim({name: int(t.shape[1]) for name, t in probe.items()})
        self.max_text_length = 0
        self.fingerprint = model_fingerprint(model_dir)

    def _embed_text_batch(self, texts: list[str]) -> torch.Tensor:
        raise ModelLoadError(
            f"model {self.spec.name!r} (backend cnn) embeds images only; bind role `text` to a "
            "vision-language model (clip, flava, dual) in kb.toml, or leave it unbound"
        )

    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        return features(self.model, self.config, pixels(images, self.config))

    def _appearance_batch(self, images: list[Image.Image]) -> torch.Tensor:
        return self.appearance_features(pixels(images, self.config))

    def appearance_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Channel means of the tap a quarter of the way up the network (Lite0: block4; VGG:
        conv3_1), as the other backends take the hidden state a quarter up their tower."""
        taps = self.model.tap_names()  # type: ignore[operator]
        layer = taps[len(taps) // 4]
        return self.model.forward_taps(pixel_values, [layer])[layer].mean(dim=(2, 3))  # type: ignore[operator]

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return features(self.model, self.config, pixel_values)

    def _patch_grid(self, image: Image.Image) -> torch.Tensor:
        layers = PATCH_LAYERS[self.config.architecture]
        taps = self.model.forward_taps(patch_pixels(image, self.config), layers)  # type: ignore[operator]
        return local_grid([taps[layer] for layer in layers], grid=1)
