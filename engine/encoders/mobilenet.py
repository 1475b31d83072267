"""The MobileNetV1 image tower of VLKB's dual encoder, in plain torch.

Same modules, names and arithmetic as transformers' MobileNetV1Model (a conv stem, 13
depthwise-separable blocks, ReLU6, global average pooling), so the checkpoint's
`vision_model.*` tensors load into it one to one; tests/test_dual.py checks its outputs
against transformers'. Importing torch alone, it starts a command seconds sooner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

# Stride of each of the 13 depthwise blocks (MobileNetV1's published layout).
STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)


class ConvLayer(nn.Module):
    """Convolution, batch norm, ReLU6: attribute names as the checkpoint spells them."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int, groups: int, eps: float):
        super().__init__()
        self.convolution = nn.Conv2d(
            inp, out, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=False
        )
        self.normalization = nn.BatchNorm2d(out, eps=eps, momentum=0.9997)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu6(self.normalization(self.convolution(x)))


class MobileNetV1(nn.Module):
    """The tower: `forward` gives the pooled features, `hidden_states` every layer's output."""

    def __init__(self, depth_multiplier: float, min_depth: int, channels: int, eps: float):
        super().__init__()
        depth = 32
        out = max(int(depth * depth_multiplier), min_depth)
        self.conv_stem = ConvLayer(channels, out, 3, 2, 1, eps)
        layers: list[nn.Module] = []
        for index, stride in enumerate(STRIDES):
            inp = out
            if stride == 2 or index == 0:
                depth *= 2
                out = max(int(depth * depth_multiplier), min_depth)
            layers.append(ConvLayer(inp, inp, 3, stride, inp, eps))
            layers.append(ConvLayer(inp, out, 1, 1, 1, eps))
        self.layer = nn.ModuleList(layers)
        self.width = out

    @classmethod
    def from_config(cls, vision_config: Mapping[str, Any]) -> MobileNetV1:
        """The tower a checkpoint's `vision_config` describes; unsupported options refused."""
        if vision_config.get("model_type") != "mobilenet_v1":
            raise ValueError(f"not a MobileNetV1 config: {vision_config.get('model_type')!r}")
        if vision_config.get("tf_padding", True) or vision_config.get("hidden_act") != "relu6":
            raise ValueError("only MobileNetV1 with tf_padding false and relu6 is ported")
        return cls(
            float(vision_config["depth_multiplier"]),
            int(vision_config.get("min_depth", 8)),
            int(vision_config.get("num_channels", 3)),
            float(vision_config.get("layer_norm_eps", 1e-3)),
        )

    def patch_layers(self) -> list[int]:
        """Indices of the last layers before the 2nd and 3rd stride-2 blocks after the stem
        (output strides 4 and 8): fine patch features for the local role."""
        ends = [2 * i - 1 for i, stride in enumerate(STRIDES) if stride == 2]
        return ends[1:3]

    def layer_output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """The output of layer `index` after the stem (transformers' hidden_states[index])."""
        x = self.conv_stem(x)
        for layer in self.layer[: index + 1]:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_stem(x)
        for layer in self.layer:
            x = layer(x)
        return x.mean(dim=(2, 3))


@dataclass(frozen=True)
class Preprocessing:
    """Resize to a fixed size, scale to [0, 1], normalise per channel: a ViT image processor."""

    width: int
    height: int
    resample: int
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Preprocessing:
        """Read preprocessor_config.json; a step it does not implement is refused, not skipped."""
        kind = config.get("image_processor_type")
        if kind not in ("ViTImageProcessor", "ViTImageProcessorFast"):
            raise ValueError(f"image processor {kind!r} is not ported")
        if not all(config.get(step) for step in ("do_resize", "do_rescale", "do_normalize")):
            raise ValueError("only resize, rescale and normalise together are ported")
        if config.get("do_center_crop") or config.get("do_pad"):
            raise ValueError("cropping and padding are not ported")
        size = config["size"]
        return cls(
            int(size["width"]),
            int(size["height"]),
            int(config.get("resample", Image.Resampling.BILINEAR)),
            float(config["rescale_factor"]),
            tuple(float(v) for v in config["image_mean"]),  # type: ignore[arg-type]
            tuple(float(v) for v in config["image_std"]),  # type: ignore[arg-type]
        )

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(batch, 3, height, width) float32 pixel values of RGB images."""
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        rows = []
        for image in images:
            resized = image.resize((self.width, self.height), resample=self.resample)
            values = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1)
            rows.append((values * np.float32(self.scale) - mean) / std)
        return torch.from_numpy(np.stack(rows))
