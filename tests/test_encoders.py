"""The model I/O layer against real (tiny, random-weight) CLIP and FLAVA checkpoints: no mocks."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, FlavaModel

from engine.encoders.backends import BACKENDS, load_encoder, offline_status, resolve_model_dir
from engine.encoders.base import Encoder
from engine.encoders.fingerprint import model_fingerprint
from engine.encoders.hf_models import ClipEncoder, FlavaEncoder
from kb.config import IMAGE_ONLY_BACKENDS, ModelSpec
from kb.errors import ModelLoadError
from tests.model_factory import PROJECTION_DIM, build_tiny_flava

TEXTS = [
    "green bead with pink carbide particles",
    "dark blue porosity inside the bead",
    "red fusion line",
    "low dilution of the substrate",
    "uniform carbide distribution in the nickel matrix without gradient",
]
UNCACHED_HUB_ID = "vlkb-tests/not-a-cached-model"


def _images() -> list[Image.Image]:
    """Distinct micrograph-like inputs of varied size and mode (RGB, RGBA, L, P)."""
    rng = np.random.default_rng(7)
    rgb = [
        Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(3)
    ]
    stripes = np.zeros((64, 64, 3), dtype=np.uint8)
    stripes[::4] = (255, 105, 180)
    stripes[1::4] = (0, 255, 0)
    return [
        *rgb,
        Image.fromarray(stripes).convert("RGBA"),
        Image.fromarray(rng.integers(0, 256, (50, 30), dtype=np.uint8), mode="L"),
        Image.fromarray(stripes).convert("P"),
    ]


@pytest.fixture(scope="module")
def clip(tiny_clip_dir: Path) -> Encoder:
    return load_encoder(
        ModelSpec(name="tiny-clip", backend="clip", source=str(tiny_clip_dir), batch_size=2)
    )


@pytest.fixture(scope="module")
def flava(tiny_flava_dir: Path) -> Encoder:
    spec = ModelSpec(name="tiny-flava", backend="flava", source=str(tiny_flava_dir), batch_size=2)
    return load_encoder(spec)


@pytest.fixture(params=[b for b in BACKENDS if b not in IMAGE_ONLY_BACKENDS])
def encoder(request: pytest.FixtureRequest) -> Encoder:
    return request.getfixturevalue(request.param)


def _assert_unit_rows(embeddings: np.ndarray, n: int) -> None:
    assert embeddings.shape == (n, PROJECTION_DIM)
    assert embeddings.dtype == np.float32
    assert np.isfinite(embeddings).all()
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def _assert_rows_distinct(embeddings: np.ndarray) -> None:
    for i in range(len(embeddings)):
        for j in range(i + 1, len(embeddings)):
            assert np.abs(embeddings[i] - embeddings[j]).max() > 1e-3, (i, j)


# --- embeddings -----------------------------------------------------------------------------


def test_backends_load_as_their_encoder_class(clip: Encoder, flava: Encoder) -> None:
    assert isinstance(clip, ClipEncoder) and isinstance(flava, FlavaEncoder)
    assert clip.dim == flava.dim == PROJECTION_DIM
    assert not clip.model.training and not flava.model.training


def test_image_embeddings_are_unit_float32_rows(encoder: Encoder) -> None:
    images = _images()
    embeddings = encoder.embed_images(images)
    _assert_unit_rows(embeddings, len(images))
    _assert_rows_distinct(embeddings)


def test_text_embeddings_are_unit_float32_rows(encoder: Encoder) -> None:
    embeddings = encoder.embed_texts(TEXTS)
    _assert_unit_rows(embeddings, len(TEXTS))
    _assert_rows_distinct(embeddings)


def test_empty_inputs_give_empty_matrices(encoder: Encoder) -> None:
    assert encoder.embed_images([]).shape == (0, PROJECTION_DIM)
    assert encoder.embed_texts([]).shape == (0, PROJECTION_DIM)


def test_overlong_text_is_truncated_not_an_error(encoder: Encoder) -> None:
    long_text = " ".join(["carbide"] * 500)
    _assert_unit_rows(encoder.embed_texts([long_text]), 1)


def test_batches_do_not_change_embeddings(encoder: Encoder) -> None:
    """batch_size=2 over 5-6 items runs several padded batches; each row must equal its solo run."""
    assert encoder.spec.batch_size < len(TEXTS)
    images = _images()
    together = encoder.embed_images(images)
    alone = np.concatenate([encoder.embed_images([image]) for image in images])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    together = encoder.embed_texts(TEXTS)
    alone = np.concatenate([encoder.embed_texts([text]) for text in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def _normalised(rows: torch.Tensor) -> np.ndarray:
    rows = rows.detach().numpy().astype(np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_flava_embeddings_are_the_projected_cls_token(flava: Encoder, tiny_flava_dir: Path) -> None:
    """Independent computation with the raw FlavaModel: features[:, 0], never a flattening."""
    model = FlavaModel.from_pretrained(tiny_flava_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_flava_dir)
    processor = AutoImageProcessor.from_pretrained(tiny_flava_dir, backend="pil")
    images = [image.convert("RGB") for image in _images()]
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        image_tokens = model.get_image_features(pixel_values=pixels).pooler_output
        tokens = tokenizer(TEXTS, padding=True, return_tensors="pt")
        text_tokens = model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).pooler_output
    assert image_tokens.dim() == 3 and text_tokens.dim() == 3  # (B, seq, dim)
    np.testing.assert_allclose(
        flava.embed_images(_images()), _normalised(image_tokens[:, 0]), atol=1e-5
    )
    np.testing.assert_allclose(flava.embed_texts(TEXTS), _normalised(text_tokens[:, 0]), atol=1e-5)


def test_clip_embeddings_match_clip_forward(clip: Encoder, tiny_clip_dir: Path) -> None:
    """CLIPModel.forward's image_embeds / text_embeds are an independent path to the rows."""
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip_dir)
    processor = AutoImageProcessor.from_pretrained(tiny_clip_dir, backend="pil")
    images = [image.convert("RGB") for image in _images()[: len(TEXTS)]]
    tokens = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        output = model(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            pixel_values=processor(images=images, return_tensors="pt")["pixel_values"],
        )
    np.testing.assert_allclose(
        clip.embed_images(images), _normalised(output.image_embeds), atol=1e-5
    )
    np.testing.assert_allclose(clip.embed_texts(TEXTS), _normalised(output.text_embeds), atol=1e-5)


# --- fingerprints ---------------------------------------------------------------------------


def test_fingerprint_is_stable_and_is_the_encoders(clip: Encoder, tiny_clip_dir: Path) -> None:
    first = model_fingerprint(tiny_clip_dir)
    assert first == model_fingerprint(tiny_clip_dir) == clip.fingerprint
    assert len(first) == 64 and int(first, 16) >= 0


def test_fingerprint_ignores_location_docs_and_dotfiles(
    tiny_clip_dir: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(tiny_clip_dir, tmp_path / "elsewhere" / "clip-copy")
    (copy / "README.md").write_text("# a model card\n")
    (copy / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (copy / ".cache").mkdir()
    (copy / ".cache" / "lock").write_text("x")
    assert model_fingerprint(copy) == model_fingerprint(tiny_clip_dir)


def test_fingerprint_changes_with_one_weight_byte(tiny_clip_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_clip_dir, tmp_path / "clip")
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # tensor data, not the header: the file still loads
    weights.write_bytes(bytes(data))
    assert model_fingerprint(copy) != model_fingerprint(tiny_clip_dir)


def test_fingerprint_changes_with_the_tokenizer(tiny_clip_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_clip_dir, tmp_path / "clip")
    config = copy / "preprocessor_config.json"
    config.write_text(config.read_text().replace('"do_normalize": true', '"do_normalize": false'))
    assert model_fingerprint(copy) != model_fingerprint(tiny_clip_dir)


def _fake_hub_cache(cache: Path, repo_id: str, model_dir: Path) -> Path:
    """The Hugging Face cache layout: blobs by hash, a snapshot of symlinks, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in model_dir.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_cached_hub_id_loads_offline_from_its_snapshot(
    tiny_clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    snapshot = _fake_hub_cache(tmp_path, "vlkb-tests/tiny-clip", tiny_clip_dir)
    assert resolve_model_dir("vlkb-tests/tiny-clip") == snapshot
    assert offline_status(ModelSpec("clip", "clip", "vlkb-tests/tiny-clip")) == (
        True,
        str(snapshot),
    )
    encoder = load_encoder(ModelSpec("clip", "clip", "vlkb-tests/tiny-clip"))
    assert encoder.fingerprint == model_fingerprint(tiny_clip_dir)
    _assert_unit_rows(encoder.embed_texts(TEXTS[:2]), 2)


# --- load errors ----------------------------------------------------------------------------


def _load_error(spec: ModelSpec, advice: str = "to provide it") -> str:
    with pytest.raises(ModelLoadError) as caught:
        load_encoder(spec)
    message = str(caught.value)
    assert "\n" not in message
    assert spec.source in message and repr(spec.name) in message and spec.backend in message
    assert advice in message
    return message


def test_missing_directory_is_a_load_error(tmp_path: Path) -> None:
    message = _load_error(ModelSpec("clip", "clip", str(tmp_path / "no-such-model")))
    assert "does not exist" in message


def test_uncached_hub_id_fails_fast_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.monotonic()
    message = _load_error(ModelSpec("clip", "clip", UNCACHED_HUB_ID))
    assert time.monotonic() - start < 5
    assert "not in the local Hugging Face cache" in message
    assert f"hf download {UNCACHED_HUB_ID}" in message


def test_truncated_weights_are_a_load_error(tiny_clip_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_clip_dir, tmp_path / "clip")
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _load_error(ModelSpec("clip", "clip", str(copy)))


def test_garbage_weights_are_a_load_error(tiny_flava_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_flava_dir, tmp_path / "flava")
    (copy / "model.safetensors").write_bytes(b"\xff" * 4096)
    _load_error(ModelSpec("flava", "flava", str(copy)))


def test_missing_weights_file_is_a_load_error(tiny_clip_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_clip_dir, tmp_path / "clip")
    (copy / "model.safetensors").unlink()
    _load_error(ModelSpec("clip", "clip", str(copy)))


def test_weights_lacking_tensors_are_not_randomly_filled(
    tiny_clip_dir: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(tiny_clip_dir, tmp_path / "clip")
    tensors = load_file(copy / "model.safetensors")
    del tensors["visual_projection.weight"]
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    message = _load_error(ModelSpec("clip", "clip", str(copy)))
    assert "visual_projection.weight" in message


def test_backend_must_match_the_checkpoint(tiny_clip_dir: Path) -> None:
    message = _load_error(ModelSpec("image", "flava", str(tiny_clip_dir)), "set backend = 'clip'")
    assert "'clip' model, not 'flava'" in message


def test_unknown_backend_is_a_load_error(tiny_clip_dir: Path) -> None:
    message = _load_error(ModelSpec("siglip", "siglip", str(tiny_clip_dir)), "clip, flava")
    assert "unknown backend 'siglip'" in message


# --- offline status -------------------------------------------------------------------------


def test_offline_status_of_a_local_directory(tiny_flava_dir: Path) -> None:
    assert offline_status(ModelSpec("flava", "flava", str(tiny_flava_dir))) == (
        True,
        str(tiny_flava_dir.resolve()),
    )


def test_offline_status_of_an_uncached_hub_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    available, why = offline_status(ModelSpec("clip", "clip", UNCACHED_HUB_ID))
    assert not available
    assert "not in the local Hugging Face cache" in why
    assert f"hf download {UNCACHED_HUB_ID}" in why and "`source` in kb.toml" in why


def test_offline_status_names_missing_files(tiny_clip_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_clip_dir, tmp_path / "clip")
    (copy / "tokenizer.json").unlink()
    (copy / "preprocessor_config.json").unlink()
    available, why = offline_status(ModelSpec("clip", "clip", str(copy)))
    assert not available
    assert "tokenizer files" in why and "preprocessor_config.json" in why


def test_offline_status_refuses_wrong_backend_and_unknown_backend(tiny_clip_dir: Path) -> None:
    assert offline_status(ModelSpec("m", "flava", str(tiny_clip_dir)))[0] is False
    available, why = offline_status(ModelSpec("m", "siglip", str(tiny_clip_dir)))
    assert not available and "unknown backend" in why


def test_tiny_model_builds_are_deterministic(tiny_flava_dir: Path, tmp_path: Path) -> None:
    """Seeded builds: the fixtures' models (and so every embedding in tests) are reproducible."""
    assert model_fingerprint(build_tiny_flava(tmp_path / "again")) == model_fingerprint(
        tiny_flava_dir
    )


def test_a_kept_fingerprint_is_reused_until_a_file_changes_and_verify_rehashes(tmp_path):
    import os
    import shutil

    from engine.encoders.fingerprint import CACHE_FILE, hashed_fingerprint, shaping_files
    from tests.model_factory import build_tiny_clip

    folder = build_tiny_clip(tmp_path / "clip")
    first = model_fingerprint(folder)
    assert first == hashed_fingerprint(shaping_files(folder))
    assert (folder / CACHE_FILE).is_file() and model_fingerprint(folder) == first

    config = folder / "config.json"
    text = config.read_text().replace('"clip"', '"clip" ', 1)  # same meaning, other bytes
    config.write_text(text)
    changed = model_fingerprint(folder)  # size and time moved: rehashed
    assert changed != first and changed == hashed_fingerprint(shaping_files(folder))

    # the documented blind spot: rewritten in place with size and time put back
    padded = config.read_text().replace('"clip" ', ' "clip"', 1)
    stamp = config.stat()
    config.write_text(padded)
    os.utime(config, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert model_fingerprint(folder) == changed  # trusted, as docs/ says
    assert model_fingerprint(folder, verify=True) == hashed_fingerprint(shaping_files(folder))

    unwritable = tmp_path / "unwritable"  # the cache cannot be written there (root ignores
    shutil.copytree(folder, unwritable)  # modes, so a folder stands in its way)
    (unwritable / CACHE_FILE).unlink()
    (unwritable / CACHE_FILE).mkdir()
    assert model_fingerprint(unwritable) == hashed_fingerprint(shaping_files(unwritable))
