"""The convolutional networks of the `cnn` backend, in plain torch.

Each network maps a normalised (B, 3, H, W) batch to the feature maps of its named taps
(`forward_taps`), so the embedding can pool the last map and take statistics of earlier ones.
Parameter names follow the source checkpoints (EfficientNet-Lite0's `_conv_stem`/`_blocks`
names, VGG's `conv1_1`...), so converting a checkpoint is a rename-free copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# EfficientNet-Lite0 stages: (repeats, kernel, first stride, expansion, output channels).
_LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
# VGG-19's convolutions by block: the taps are named conv<block>_<index>.
_VGG19_BLOCKS: tuple[tuple[int, int], ...] = ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))


def _bn(channels: int, eps: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps)


class _SameConv(nn.Conv2d):
    """A convolution padded as TensorFlow's "SAME" pads (extra row and column at the end).

    The Lite0 weights come from TensorFlow: with symmetric padding every stride-2 layer would
    look at the image shifted by half a pixel.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if self.stride == (1, 1):  # odd kernel, stride 1: SAME is the symmetric padding
            self.padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        pads = []
        for size, kernel, stride in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(nn.functional.pad(x, pads))


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an inference-mode batch norm into the convolution before it (same outputs up to
    rounding, one pass fewer over every feature map); the caller replaces bn by Identity."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    conv.weight = nn.Parameter((conv.weight * scale.view(-1, 1, 1, 1)).detach())
    conv.bias = nn.Parameter(bias.detach())


class _LiteBlock(nn.Module):
    """Inverted residual without squeeze-excitation, ReLU6 (the "Lite" simplifications)."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int, expand: int, eps: float):
        super().__init__()
        mid = inp * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(inp, mid, 1, bias=False)
            self._bn0 = _bn(mid, eps)
        self._depthwise_conv = _SameConv(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid, eps)
        self._project_conv = nn.Conv2d(mid, out, 1, bias=False)
        self._bn2 = _bn(out, eps)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = torch.clamp(self._bn0(self._expand_conv(h)), 0.0, 6.0)
        h = torch.clamp(self._bn1(self._depthwise_conv(h)), 0.0, 6.0)
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h

    def fold(self) -> None:
        pairs = [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
        if self.has_expand:
            pairs.append(("_expand_conv", "_bn0"))
        for conv, bn in pairs:
            fold_batch_norm(getattr(self, conv), getattr(self, bn))
            setattr(self, bn, nn.Identity())


class EfficientNetLite0(nn.Module):
    """ImageNet EfficientNet-Lite0: stem, 16 blocks, 1x1 head to 1280 channels.

    Taps: `block0`..`block15` (block outputs) and `head` (after the head's ReLU6).
    The classifier `_fc` is kept so a converted checkpoint can be checked against ImageNet.
    """

    def __init__(self, bn_eps: float = 1e-3) -> None:
        super().__init__()
        self._conv_stem = _SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32, bn_eps)
        blocks = []
        inp = 32
        for repeats, kernel, stride, expand, out in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_LiteBlock(inp, out, kernel, stride if i == 0 else 1, expand, bn_eps))
                inp = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(inp, 1280, 1, bias=False)
        self._bn1 = _bn(1280, bn_eps)
        self._fc = nn.Linear(1280, 1000)

    def tap_names(self) -> list[str]:
        return [f"block{i}" for i in range(len(self._blocks))] + ["head"]

    def for_inference(self) -> EfficientNetLite0:
        """Eval mode with every batch norm folded into its convolution (load the weights
        first: the folded network no longer has batch-norm parameters)."""
        self.eval()
        with torch.no_grad():
            fold_batch_norm(self._conv_stem, self._bn0)
            fold_batch_norm(self._conv_head, self._bn1)
            for block in self._blocks:
                block.fold()  # type: ignore[operator]
        self._bn0, self._bn1 = nn.Identity(), nn.Identity()  # type: ignore[assignment]
        return self

    def forward_taps(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        wanted = set(taps)
        found: dict[str, torch.Tensor] = {}
        h = torch.clamp(self._bn0(self._conv_stem(x)), 0.0, 6.0)
        for i, block in enumerate(self._blocks):
            h = block(h)
            if f"block{i}" in wanted:
                found[f"block{i}"] = h
            if wanted <= found.keys():
                return found
        found["head"] = torch.clamp(self._bn1(self._conv_head(h)), 0.0, 6.0)
        return found

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet class scores (for checking a conversion, never for embeddings)."""
        head = self.forward_taps(x, ["head"])["head"]
        return self._fc(head.mean(dim=(2, 3)))


class VGG19Features(nn.Module):
    """The 16 convolutions of VGG-19 with ReLU and 2x2 max pooling between blocks.

    Taps: `conv1_1`..`conv5_4`, each after its ReLU.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict()
        inp = 3
        for block, (count, channels) in enumerate(_VGG19_BLOCKS, start=1):
            for index in range(1, count + 1):
                self.layers[f"conv{block}_{index}"] = nn.Conv2d(inp, channels, 3, padding=1)
                inp = channels

    def tap_names(self) -> list[str]:
        return list(self.layers)

    def for_inference(self) -> VGG19Features:
        return self.eval()

    def forward_taps(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        wanted = set(taps)
        found: dict[str, torch.Tensor] = {}
        h = x
        block = 1
        for name, conv in self.layers.items():
            this_block = int(name[4])
            if this_block != block:
                h = nn.functional.max_pool2d(h, 2)
                block = this_block
            h = torch.relu(conv(h))
            if name in wanted:
                found[name] = h
                if wanted <= found.keys():
                    break
        return found


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "efficientnet_lite0": EfficientNetLite0,
    "vgg19_features": VGG19Features,
}


def build(architecture: str) -> nn.Module:
    """An untrained network of the named architecture; KeyError names the known ones."""
    if architecture not in ARCHITECTURES:
        raise KeyError(
            f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[architecture]()
