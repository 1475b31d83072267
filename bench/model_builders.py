"""Full-size CLIP ViT-B/32 and FLAVA-full checkpoints with random weights, for timing only.

The hub is out of reach here, so the benchmark builds the two architectures of the article from
transformers' default configs (CLIPConfig() is ViT-B/32 with a 12-layer text transformer;
FlavaConfig() is FLAVA-full: ViT-B/16 image encoder, BERT-base text encoder, 6-layer multimodal
encoder). Random weights cost the same FLOPs and memory as the trained ones, but their
embeddings mean nothing, so these checkpoints serve timing and memory figures, never verdicts.

Each checkpoint is written with `save_pretrained` next to a tokenizer and an image processor,
the layout `engine.encoders.backends.load_encoder` reads, and built once per models folder (a marker
file records what was built).

    .venv/bin/python bench/model_builders.py [--models-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    FlavaConfig,
    FlavaImageProcessorPil,
    FlavaModel,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the tests' tokenizer factory imports from the repo
from tests.model_factory import save_tokenizer, train_tokenizer  # noqa: E402

DEFAULT_MODELS_DIR = Path("/tmp/vlkb-bench-models")
BUILD_VERSION = 1  # bump when the builders change, so old folders are rebuilt
TOKENIZER_VOCAB = 2000

# Sentences about bead cross-sections; the workspace's own prompts are added to them so that
# prompts split into word-sized tokens, as they would with the real tokenizers.
EXTRA_CORPUS = [
    "a cross-section of a nickel tungsten carbide bead deposited by directed energy deposition",
    "a micrograph segmented into background, bead, carbide, porosity, heat-affected zone",
    "the fusion line separates the clad layer from the steel substrate below",
    "pores, cracks and lack of fusion near the interface",
]


def corpus(rules_dir: Path = ROOT / "rules") -> list[str]:
    """Every prompt of the example workspace (variants included) plus a few extra sentences."""
    texts = list(EXTRA_CORPUS)
    for path in sorted((rules_dir / "assessments").glob("*.toml")):
        prompts = tomllib.loads(path.read_text(encoding="utf-8")).get("prompts", {})
        sets = [prompts, *prompts.get("variants", {}).values()]
        for table in sets:
            texts += table.get("positive", []) + table.get("negative", [])
    return texts


def build_clip_b32(directory: Path, texts: list[str]) -> Path:
    """CLIPConfig() defaults (ViT-B/32 at 224 px, 512-d projection), token ids of our tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    special = ["<unk>", "<pad>", "<|startoftext|>", "<|endoftext|>"]
    tokenizer = train_tokenizer(special, special[2], special[3], special[0], texts, TOKENIZER_VOCAB)
    config = CLIPConfig()
    text = config.text_config
    save_tokenizer(
        tokenizer,
        directory,
        text.max_position_embeddings,
        unk_token=special[0],
        pad_token=special[1],
        bos_token=special[2],
        eos_token=special[3],
    )
    assert tokenizer.get_vocab_size() < text.vocab_size
    # eos id other than the legacy 2: CLIP pools at the first end-of-text token.
    text.pad_token_id = tokenizer.token_to_id(special[1])
    text.bos_token_id = tokenizer.token_to_id(special[2])
    text.eos_token_id = tokenizer.token_to_id(special[3])
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(directory)
    CLIPImageProcessorPil().save_pretrained(directory)  # 224 px, bicubic, CLIP mean/std
    return directory


def build_flava_full(directory: Path, texts: list[str]) -> Path:
    """FlavaConfig() defaults (FLAVA-full sizes, 768-d projections), BERT-style specials."""
    directory.mkdir(parents=True, exist_ok=True)
    special = ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = train_tokenizer(special, "[CLS]", "[SEP]", "[UNK]", texts, TOKENIZER_VOCAB)
    config = FlavaConfig(init_codebook=False)
    save_tokenizer(
        tokenizer,
        directory,
        config.text_config.max_position_embeddings,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    assert tokenizer.get_vocab_size() < config.text_config.vocab_size
    config.text_config.pad_token_id = tokenizer.token_to_id("[PAD]")
    torch.manual_seed(0)
    FlavaModel(config).eval().save_pretrained(directory)
    FlavaImageProcessorPil().save_pretrained(directory)  # 224 px, bicubic, no codebook pixels
    return directory


def ensure_models(models_dir: Path = DEFAULT_MODELS_DIR) -> tuple[Path, Path]:
    """(clip_dir, flava_dir), building them unless a complete build of this version is there."""
    marker = models_dir / "built.json"
    clip_dir, flava_dir = models_dir / "clip-vit-b32-random", models_dir / "flava-full-random"
    if marker.is_file() and json.loads(marker.read_text()).get("version") == BUILD_VERSION:
        return clip_dir, flava_dir
    texts = corpus()
    started = time.perf_counter()
    build_clip_b32(clip_dir, texts)
    build_flava_full(flava_dir, texts)
    marker.write_text(
        json.dumps({"version": BUILD_VERSION, "seconds": time.perf_counter() - started})
    )
    return clip_dir, flava_dir


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the random full-size benchmark models.")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    args = parser.parse_args()
    for path in ensure_models(args.models_dir):
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        print(f"{path}  {size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
