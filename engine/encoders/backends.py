"""Finding and loading models: from a kb.toml model entry to a loaded Encoder, or one clear error.

Backends: CLIP, FLAVA and `dual` (a VisionTextDualEncoderModel checkpoint; VLKB's own, whose text
tower is a pinned, hash-checked package, engine/encoders/text_tower.py, runs in plain torch,
engine/encoders/vlkb_dual.py), loaded by transformers' `from_pretrained`
(engine/encoders/hf_models.py); and `cnn`, an ImageNet-pretrained CNN that embeds images only
(engine/encoders/cnn.py), whose folder `kb models install` writes (`vlkb:NAME`).

A model comes from a local directory: the workspace's own folder, an installed `vlkb:` model or
the Hugging Face cache snapshot of a hub id. The fingerprint is a hash of that directory's files,
so cached embeddings and verdicts point at the exact weights, tokenizer and preprocessing that
produced them. Nothing falls back silently: a model that cannot be loaded is a ModelLoadError
saying how to provide it. This module imports neither torch nor transformers: the class that
runs a checkpoint is imported when it loads, so a command pays only for the backend it uses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from engine.encoders import model_store, text_tower
from kb.config import ModelSpec
from kb.errors import ModelLoadError

if TYPE_CHECKING:
    from engine.encoders.base import Encoder

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

def _encoder_class(backend: str, model_dir: Path) -> type[Encoder]:
    """The class that runs a checkpoint, imported only when it is needed.

    VLKB's own dual checkpoints run in plain torch; the cnn backend needs torch alone; CLIP,
    FLAVA and other dual checkpoints run on transformers' model classes.
    """
    if backend == "cnn":
        from engine.encoders.cnn import CnnEncoder

        return CnnEncoder
    if backend == "dual":
        from engine.encoders import vlkb_dual

        if vlkb_dual.is_ported(model_dir):
            return vlkb_dual.VlkbDualEncoder
    from engine.encoders.hf_models import TRANSFORMERS_ENCODERS

    return TRANSFORMERS_ENCODERS[backend]


def load_encoder(spec: ModelSpec) -> Encoder:
    """Load spec's model from its local directory or cached snapshot; ModelLoadError otherwise."""
    if spec.backend not in BACKENDS:
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
        return _encoder_class(spec.backend, model_dir)(spec, model_dir)
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
    import huggingface_hub

    try:
        snapshot = huggingface_hub.snapshot_download(source, local_files_only=True)
    except huggingface_hub.errors.HFValidationError as exc:
        raise ModelLoadError(f"{source!r} is neither a directory nor a valid hub id") from exc
    except Exception as exc:
        raise ModelLoadError(
            f"hub model {source} is not in the local Hugging Face cache "
            f"({_hub_cache()})"
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
    import huggingface_hub

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
    from huggingface_hub import constants as hub_constants

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
        f"{_hub_cache()}, or {local}"
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


def _hub_cache() -> str:
    """Where huggingface_hub keeps downloaded models (imported only to say so)."""
    from huggingface_hub import constants as hub_constants

    return str(hub_constants.HF_HUB_CACHE)
