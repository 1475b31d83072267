"""Model I/O: turn micrographs and prompts into L2-normalised embeddings.

Backends: CLIP, FLAVA and `dual`, transformers' VisionTextDualEncoderModel (any vision encoder,
any text encoder, two projections), which also loads VLKB's own trained checkpoint: its text
tower is not in the checkpoint but a pinned, hash-checked package (engine/encoders/text_tower.py);
and `cnn`, an ImageNet-pretrained CNN that embeds images only (engine/encoders/cnn.py), whose
folder `kb models install` writes (engine/encoders/cnn_install.py, spelled `vlkb:NAME`).

Every model is loaded by the real transformers code (`from_pretrained`) from a local directory:
either the workspace's own folder or the Hugging Face cache snapshot of a hub id. The
fingerprint is a hash of that directory's files, so cached embeddings and verdicts point at the
exact weights, tokenizer and preprocessing that produced them. Nothing falls back silently: a
model that cannot be loaded is a ModelLoadError saying how to provide it.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import huggingface_hub
import numpy as np
import torch
from huggingface_hub import constants as hub_constants
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

from engine.encoders import model_store, text_tower
from engine.encoders.fingerprint import model_fingerprint
from engine.scoring import l2_normalize
from kb.config import ModelSpec
from kb.errors import ModelLoadError

BACKENDS: tuple[str, ...] = ("clip", "flava", "dual", "cnn")
# config.json's model_type of each backend's checkpoints
MODEL_TYPES: dict[str, str] = {
    "clip": "clip",
    "flava": "flava",
    "dual": "vision-text-dual-encoder",
    "cnn": "vlkb-cnn",
}

_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
# What from_pretrained reads; not the other frameworks' weights nor the duplicate pickled ones.
_DOWNLOADS = ["*.json", "*.txt", "*.model", "*.safetensors"]
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "spiece.model", "tokenizer.model")

Item = TypeVar("Item")


class Encoder(ABC):
    """One loaded model: embeds images and texts into the same unit-norm space."""

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
        self.dim: int = int(self.model.config.projection_dim)
        self.max_text_length: int = min(
            int(self.tokenizer.model_max_length),
            int(self.model.config.text_config.max_position_embeddings),
        )
        self.fingerprint: str = model_fingerprint(model_dir)

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

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) float32, unit rows; images become RGB first (micrographs may be P or RGBA)."""
        return self._batched(list(images), self._embed_image_batch)

    def appearance(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, channels) float32, unit rows: what an image looks like to this model.

        The mean activation of the image tower a quarter of the way up: colours, edges and
        textures, before the tower abstracts them into what its training captions name. A
        photograph, a grey image or another material's map lies far from every reference
        here even where its final embedding happens to land near one (measured on the shipped
        model: docs/rules.md, "Applicability"). A tower without hidden states falls back to
        the embedding itself.
        """
        return self._batched(list(images), self._appearance_batch)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, unit rows; texts are padded and truncated to the model's max length."""
        return self._batched([str(text) for text in texts], self._embed_text_batch)

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

    def _embed_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        rgb = [image.convert("RGB") for image in images]
        pixels = self.processor(images=rgb, return_tensors="pt", **self.processor_options)
        return self.image_features(pixels["pixel_values"])

    def _appearance_batch(self, images: list[Image.Image]) -> torch.Tensor:
        rgb = [image.convert("RGB") for image in images]
        pixels = self.processor(images=rgb, return_tensors="pt", **self.processor_options)
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


class ClipEncoder(Encoder):
    """CLIP: the projected pooled output (CLS for images, end-of-text token for texts)."""

    model_class = CLIPModel
    embedding_weights = ("text_model.", "vision_model.", "text_projection.", "visual_projection.")

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _projected(
            self.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        )

    def text_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return _projected(self.model.get_text_features(**inputs, return_dict=True))


class FlavaEncoder(Encoder):
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


class DualEncoder(Encoder):
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


_ENCODERS: dict[str, type[Encoder]] = {
    "clip": ClipEncoder,
    "flava": FlavaEncoder,
    "dual": DualEncoder,
}


def _encoder_class(backend: str) -> type[Encoder] | None:
    """The class of a backend; cnn's module imports this one's Encoder, so it comes late."""
    if backend == "cnn":
        from engine.encoders.cnn import CnnEncoder

        return CnnEncoder
    return _ENCODERS.get(backend)


def load_encoder(spec: ModelSpec) -> Encoder:
    """Load spec's model from its local directory or cached snapshot; ModelLoadError otherwise."""
    encoder_class = _encoder_class(spec.backend)
    if encoder_class is None:
        raise _load_error(spec, *_unknown_backend(spec))
    try:
        model_dir = _local_or_downloaded(spec.source)
    except ModelLoadError as exc:
        raise _load_error(spec, str(exc)) from exc
    problem = _model_type_problem(spec, model_dir)
    if problem:
        raise _load_error(spec, *problem)
    try:
        text_tower.verify_checksums(model_dir)
        return encoder_class(spec, model_dir)
    except ModelLoadError as exc:  # says itself how to fix it (e.g. reinstall the text tower)
        raise _load_error(spec, str(exc), "") from exc
    except Exception as exc:  # every failure inside transformers/safetensors becomes one line
        raise _load_error(spec, f"loading {model_dir} failed: {_first_line(exc)}") from exc


def resolve_model_dir(source: str) -> Path:
    """A local directory as is; `vlkb:NAME` as the installed model NAME; a hub id as its
    Hugging Face cache snapshot (no network)."""
    installed = model_store.installed_name(source)
    if installed is not None:
        folder = model_store.installed_dir(installed)
        if not folder.is_dir():
            raise ModelLoadError(f"{source} is not installed (no {folder})")
        return folder.resolve()
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ModelLoadError(f"{source} is a file, not a model directory")
    if _looks_like_path(source):
        raise ModelLoadError(f"directory {source} does not exist")
    try:
        snapshot = huggingface_hub.snapshot_download(source, local_files_only=True)
    except huggingface_hub.errors.HFValidationError as exc:
        raise ModelLoadError(f"{source!r} is neither a directory nor a valid hub id") from exc
    except Exception as exc:
        raise ModelLoadError(
            f"hub model {source} is not in the local Hugging Face cache "
            f"({hub_constants.HF_HUB_CACHE})"
        ) from exc
    return Path(snapshot)


def _local_or_downloaded(source: str) -> Path:
    """The model's directory; a hub id missing from the cache is downloaded unless offline."""
    try:
        return resolve_model_dir(source)
    except ModelLoadError:
        if _hub_offline() or _looks_like_path(source) or Path(source).expanduser().exists():
            raise
        if model_store.installed_name(source) is not None:
            raise
    try:
        snapshot = Path(huggingface_hub.snapshot_download(source, allow_patterns=_DOWNLOADS))
        if not any(next(snapshot.glob(pattern), None) for pattern in _WEIGHT_PATTERNS):
            # Older repos only hold pickled PyTorch weights.
            huggingface_hub.snapshot_download(source, allow_patterns=["pytorch_model*.bin"])
    except Exception as exc:
        raise ModelLoadError(
            f"hub model {source} is not cached and downloading it failed: {_first_line(exc)}"
        ) from exc
    return resolve_model_dir(source)


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them at import)."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return hub_constants.is_offline_mode() or any(
        flag.strip().upper() in {"1", "ON", "YES", "TRUE"} for flag in flags
    )


def offline_status(spec: ModelSpec) -> tuple[bool, str]:
    """(True, directory) if the model's files are on disk, else (False, why + how to provide it).

    Only looks at files: it neither loads the model nor touches the network.
    """
    if spec.backend not in BACKENDS:
        return False, "; ".join(_unknown_backend(spec))
    try:
        model_dir = resolve_model_dir(spec.source)
    except ModelLoadError as exc:
        return False, f"{exc}; {_how_to_provide(spec.source)}"
    problem = _model_type_problem(spec, model_dir)
    if problem:
        return False, "; ".join(problem)
    try:
        # A checkpoint whose text tower is a pinned package: that package, hash-checked.
        tower = text_tower.read_reference(model_dir) if spec.backend == "dual" else None
        if tower is not None:
            text_tower.text_tower_dir(tower)
    except ModelLoadError as exc:
        return False, str(exc)
    if spec.backend == "cnn":
        lacking = [name for name in ("config.json", "model.safetensors")
                   if not (model_dir / name).is_file()]
    else:
        lacking = _missing_files(model_dir, tokenizer=tower is None)
    if lacking:
        return False, f"{model_dir} has no {', no '.join(lacking)}; {_how_to_provide(spec.source)}"
    return True, str(model_dir)


def _missing_files(model_dir: Path, tokenizer: bool = True) -> list[str]:
    """Which of weights, tokenizer and preprocessor files a model directory lacks."""
    lacking = []
    if not any(next(model_dir.glob(pattern), None) for pattern in _WEIGHT_PATTERNS):
        lacking.append("weights (model.safetensors or pytorch_model.bin)")
    if tokenizer and not any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
        lacking.append("tokenizer files")
    if not (model_dir / "preprocessor_config.json").is_file():
        lacking.append("preprocessor_config.json")
    return lacking


def _model_type_problem(spec: ModelSpec, model_dir: Path) -> tuple[str, str] | None:
    """(reason, how to fix) when config.json is unreadable or holds another architecture.

    transformers would load, say, a CLIP checkpoint into FlavaModel with random weights.
    """
    config_file = model_dir / "config.json"
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        return f"cannot read {config_file}: {_first_line(exc)}", _how_to_provide(spec.source)
    expected = MODEL_TYPES.get(spec.backend, spec.backend)
    if model_type != expected:
        backend = next((b for b, t in MODEL_TYPES.items() if t == model_type), model_type)
        return (
            f"{config_file} is a {backend!r} model, not {spec.backend!r}",
            f"set backend = {backend!r} in [models.{spec.name}] or point source at a "
            f"{spec.backend} checkpoint",
        )
    return None


def _load_error(spec: ModelSpec, reason: str, how: str | None = None) -> ModelLoadError:
    """One line: which model, what went wrong, how to provide it."""
    how = _how_to_provide(spec.source) if how is None else how
    message = (
        f"model {spec.name!r} (backend {spec.backend}, source {spec.source}) cannot be loaded: "
        f"{reason}{'; ' + how if how else ''}"
    )
    return ModelLoadError(" ".join(message.split()))


def _how_to_provide(source: str) -> str:
    installed = model_store.installed_name(source)
    if installed is not None:
        return f"to provide it, run `kb models install {installed}` (or `make install`)"
    local = (
        "set `source` in kb.toml to a local directory with config.json, weights, tokenizer and "
        "preprocessor files (as save_pretrained writes them)"
    )
    if _looks_like_path(source) or Path(source).expanduser().exists():
        return f"to provide it, {local}"
    return (
        f"to provide it, download it where the hub is reachable (`hf download {source}`, "
        "formerly huggingface-cli) and copy the Hugging Face cache to "
        f"{hub_constants.HF_HUB_CACHE}, or {local}"
    )


def _unknown_backend(spec: ModelSpec) -> tuple[str, str]:
    """(reason, how to fix) for a backend no encoder class implements."""
    known = ", ".join(BACKENDS)
    return (
        f"unknown backend {spec.backend!r}",
        f"set backend to one of {known} in [models.{spec.name}]",
    )


def _looks_like_path(source: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else is meant as a directory."""
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or "\\" in source
        or source.count("/") > 1
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
