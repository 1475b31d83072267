"""The encoders that run on transformers' model classes: CLIP, FLAVA and any
VisionTextDualEncoderModel checkpoint (a self-contained one, or one whose text tower is a pinned
package but whose image tower VLKB has no plain-torch port of).

Only a command that loads one of these pays for importing transformers.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    CLIPModel,
    FlavaModel,
    PreTrainedModel,
    VisionTextDualEncoderModel,
)
from transformers.utils import logging as transformers_logging

from engine.encoders import text_tower
from engine.encoders.base import Encoder, rgb
from engine.encoders.fingerprint import model_fingerprint
from kb.config import ModelSpec


class TransformersEncoder(Encoder):
    """A transformers checkpoint loaded with from_pretrained: model, tokenizer, image processor."""

    model_class: ClassVar[type[PreTrainedModel]]
    #: tokenizer outputs the model's get_text_features accepts
    text_inputs: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")
    #: extra image-processor arguments (e.g. switch off outputs the embedding does not use)
    processor_options: ClassVar[dict[str, Any]] = {}
    #: weights whose absence would change the embeddings (others may be missing harmlessly)
    embedding_weights: ClassVar[tuple[str, ...]] = ()
    #: attribute of the model holding its image tower (for appearance features)
    image_tower: ClassVar[str] = "vision_model"

    def __init__(self, spec: ModelSpec, model_dir: Path) -> None:
        self.spec = spec
        self.model_dir = model_dir
        self.model, self.tokenizer, self.processor = self._load(model_dir)
        self.dim = int(self.model.config.projection_dim)
        self.max_text_length = min(
            int(self.tokenizer.model_max_length),
            int(self.model.config.text_config.max_position_embeddings),
        )
        self.fingerprint = model_fingerprint(model_dir)

    def _load(self, model_dir: Path) -> tuple[PreTrainedModel, Any, Any]:
        """Model (float32, eval mode), tokenizer, image processor; half-loaded weights refused."""
        # A progress bar per load would clutter stderr, where VLKB writes its one-line errors.
        transformers_logging.disable_progress_bar()
        model, info = self.model_class.from_pretrained(
            model_dir, dtype=torch.float32, output_loading_info=True
        )
        missing = sorted(k for k in info["missing_keys"] if k.startswith(self.embedding_weights))
        if missing:
            raise ValueError(
                f"the weights lack {len(missing)} tensor(s) the embeddings need, e.g. {missing[0]}"
            )
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if tokenizer.pad_token is None:
            raise ValueError("the tokenizer has no padding token, so texts cannot be batched")
        # The PIL backend is always installed and pinned, so embeddings do not change when
        # torchvision happens to be installed (its resizing differs slightly).
        processor = AutoImageProcessor.from_pretrained(model_dir, backend="pil")
        return model.eval(), tokenizer, processor

    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=rgb(images), return_tensors="pt", **self.processor_options)
        return self.image_features(pixels["pixel_values"])

    def _appearance_batch(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=rgb(images), return_tensors="pt", **self.processor_options)
        return self.appearance_features(pixels["pixel_values"])

    def appearance_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(batch, channels) pooled activations of the hidden state a quarter up the tower."""
        tower = getattr(self.model, self.image_tower, None)
        if tower is None:
            return self.image_features(pixel_values)
        output = tower(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        states = getattr(output, "hidden_states", None)
        if not states:
            return self.image_features(pixel_values)
        state = states[len(states) // 4]
        # (B, C, H, W) of a convolutional tower, (B, tokens, C) of a transformer
        return state.mean(dim=(2, 3)) if state.dim() == 4 else state.mean(dim=1)

    def _embed_text_batch(self, texts: list[str]) -> torch.Tensor:
        encoded = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        return self.text_features({k: v for k, v in encoded.items() if k in self.text_inputs})

    @abstractmethod
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(batch, dim) projected image embeddings, not yet normalised."""

    @abstractmethod
    def text_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, dim) projected text embeddings, not yet normalised."""


def _projected(output: Any) -> torch.Tensor:
    """transformers 5 returns a ModelOutput with the projection in pooler_output; 4.x a tensor.

    return_dict=True is passed because a checkpoint whose config says return_dict=false would
    otherwise get a plain tuple.
    """
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipEncoder(TransformersEncoder):
    """CLIP: the projected pooled output (CLS for images, end-of-text token for texts)."""

    model_class = CLIPModel
    embedding_weights = ("text_model.", "vision_model.", "text_projection.", "visual_projection.")

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _projected(
            self.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        )

    def text_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return _projected(self.model.get_text_features(**inputs, return_dict=True))


class FlavaEncoder(TransformersEncoder):
    """FLAVA: features are a projected token sequence (B, seq, dim); the embedding is its CLS."""

    model_class = FlavaModel
    text_inputs = ("input_ids", "attention_mask", "token_type_ids")
    processor_options = {"return_codebook_pixels": False, "return_image_mask": False}
    embedding_weights = ("text_model.", "image_model.", "text_projection.", "image_projection.")
    image_tower = "image_model"

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _cls_token(
            self.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        )

    def text_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return _cls_token(self.model.get_text_features(**inputs, return_dict=True))


def _cls_token(output: Any) -> torch.Tensor:
    """First token of a (B, seq, dim) sequence; flattening the sequence would mix in every patch."""
    sequence = _projected(output)
    if sequence.dim() != 3:
        raise RuntimeError(
            f"FLAVA features have shape {tuple(sequence.shape)}, expected (B, seq, dim)"
        )
    return sequence[:, 0]


class DualEncoder(TransformersEncoder):
    """VisionTextDualEncoderModel: projected pooled vision output and projected text output.

    A self-contained checkpoint embeds texts as transformers does (the text encoder's pooled
    output, projected). A checkpoint with a `text_tower.json` (VLKB's own) leaves its text
    encoder out: the pinned sentence encoder is loaded from its package after its files'
    SHA-256 are checked, and a text is the projection of its mean-pooled token states.
    """

    model_class = VisionTextDualEncoderModel
    text_inputs = text_tower.TEXT_INPUTS
    embedding_weights = ("vision_model.", "visual_projection.", "text_projection.", "text_model.")

    def __init__(self, spec: ModelSpec, model_dir: Path) -> None:
        self.text_tower: text_tower.TextTower | None = None
        super().__init__(spec, model_dir)
        if self.text_tower is not None:
            self.max_text_length = min(self.max_text_length, self.text_tower.pin.max_length)

    def _load(self, model_dir: Path) -> tuple[PreTrainedModel, Any, Any]:
        pin = text_tower.read_reference(model_dir)
        if pin is None:
            return super()._load(model_dir)
        tower = text_tower.load_text_tower(pin)  # hash check first: nothing is loaded if it fails
        with text_tower.quiet_transformers():
            model, info = VisionTextDualEncoderModel.from_pretrained(
                model_dir, dtype=torch.float32, output_loading_info=True
            )
        own = tuple(p for p in self.embedding_weights if p != "text_model.")
        missing = sorted(k for k in info["missing_keys"] if k.startswith(own))
        if missing:
            raise ValueError(
                f"the weights lack {len(missing)} tensor(s) the embeddings need, e.g. {missing[0]}"
            )
        if model.config.text_config.hidden_size != tower.dim:
            raise ValueError(
                f"the text projection expects {model.config.text_config.hidden_size}-d sentence "
                f"embeddings, {pin.package} gives {tower.dim}-d"
            )
        model.text_model = tower.model
        self.text_tower = tower
        processor = AutoImageProcessor.from_pretrained(model_dir, backend="pil")
        return model.eval(), tower.tokenizer, processor

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _projected(
            self.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        )

    def text_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.text_tower is None:
            return _projected(self.model.get_text_features(**inputs, return_dict=True))
        return self.model.text_projection(self.text_tower.encode(inputs))


TRANSFORMERS_ENCODERS: dict[str, type[TransformersEncoder]] = {
    "clip": ClipEncoder,
    "flava": FlavaEncoder,
    "dual": DualEncoder,
}
