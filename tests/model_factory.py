"""Tiny random-weight CLIP and FLAVA checkpoints, built offline for the test session.

They are real transformers models saved with `save_pretrained`, with a small tokenizer trained
here, so tests load them through exactly the code that loads the hub checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    FlavaConfig,
    FlavaImageProcessorPil,
    FlavaModel,
    PreTrainedTokenizerFast,
)

IMAGE_SIZE = 32
PATCH_SIZE = 8
HIDDEN_SIZE = 32
PROJECTION_DIM = 16
MAX_TEXT_LENGTH = 32
# Every tiny transformer stack: 2 layers of 2 heads at HIDDEN_SIZE.
TINY_LAYERS = {
    "hidden_size": HIDDEN_SIZE,
    "intermediate_size": 2 * HIDDEN_SIZE,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}

# Words a micrograph prompt is made of; enough for BPE to learn a vocabulary of a few hundred.
CORPUS = [
    "a cross-section of a directed energy deposition bead on a steel substrate",
    "green bead with pink carbide particles evenly distributed",
    "pink tungsten carbide particles clustered at the bottom of the bead",
    "red fusion line between the bead and the substrate",
    "blue heat affected zone below the fusion line",
    "dark blue porosity and gas pores inside the bead",
    "low dilution of the substrate into the clad layer",
    "high dilution with the fusion line deep below the original surface",
    "distinct reinforcement above the baseline between the toes",
    "flat bead with little reinforcement",
    "dissolved carbide with a reaction rim in the nickel matrix",
    "sharp intact carbide particles with no dissolution",
    "uniform carbide distribution without gradient",
    "a micrograph of a nickel tungsten carbide metal matrix composite",
    "lack of fusion defect and cracks near the interface",
    "segmented phases: background, bead, carbide, porosity, haz, fusion line",
]


def train_tokenizer(
    special: list[str], bos: str, eos: str, unk: str,
    texts: list[str] = CORPUS, vocab_size: int = 300,
) -> Tokenizer:
    """A lower-casing BPE tokenizer trained on texts that wraps every text in bos ... eos
    (the tests' tiny models and the bench's full-size ones alike)."""
    tokenizer = Tokenizer(models.BPE(unk_token=unk))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, tokenizer.token_to_id(bos)), (eos, tokenizer.token_to_id(eos))],
    )
    return tokenizer


def save_tokenizer(
    tokenizer: Tokenizer, directory: Path, max_length: int = MAX_TEXT_LENGTH, **tokens: str
) -> PreTrainedTokenizerFast:
    """Save in the layout AutoTokenizer.from_pretrained reads (tokenizer.json and its config)."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=max_length, **tokens
    )
    wrapped.save_pretrained(directory)
    return wrapped


def _bert_tokenizer(directory: Path) -> Tokenizer:
    """A BERT-style [CLS] ... [SEP] tokenizer, trained and saved into directory."""
    tokenizer = train_tokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], bos="[CLS]", eos="[SEP]", unk="[UNK]"
    )
    save_tokenizer(
        tokenizer,
        directory,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    return tokenizer


def build_tiny_clip(directory: Path) -> Path:
    """A 2-layer CLIP (32x32 images, 16-d embeddings) with its tokenizer and image processor."""
    directory.mkdir(parents=True, exist_ok=True)
    # eos id 3 (not the legacy 2): CLIP then pools the first eos token instead of argmax(ids).
    tokenizer = train_tokenizer(
        ["<unk>", "<pad>", "<|startoftext|>", "<|endoftext|>"],
        bos="<|startoftext|>",
        eos="<|endoftext|>",
        unk="<unk>",
    )
    save_tokenizer(
        tokenizer,
        directory,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
    )
    ids = {
        name: tokenizer.token_to_id(name) for name in ("<pad>", "<|startoftext|>", "<|endoftext|>")
    }
    config = CLIPConfig(
        text_config={
            **TINY_LAYERS,
            "vocab_size": tokenizer.get_vocab_size(),
            "max_position_embeddings": MAX_TEXT_LENGTH,
            "pad_token_id": ids["<pad>"],
            "bos_token_id": ids["<|startoftext|>"],
            "eos_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            **TINY_LAYERS,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        projection_dim=PROJECTION_DIM,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(directory)
    CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(directory)
    return directory


def build_tiny_flava(directory: Path) -> Path:
    """A 2-layer FLAVA (32x32 images, 16-d projections), BERT-style [CLS] ... [SEP] tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _bert_tokenizer(directory)
    encoder = TINY_LAYERS
    config = FlavaConfig(
        text_config={
            **encoder,
            "vocab_size": tokenizer.get_vocab_size(),
            "max_position_embeddings": MAX_TEXT_LENGTH,
            "pad_token_id": tokenizer.token_to_id("[PAD]"),
        },
        image_config={**encoder, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE},
        multimodal_config=encoder,
        image_codebook_config={"hidden_size": 16, "num_groups": 1, "vocab_size": 64},
        hidden_size=HIDDEN_SIZE,
        projection_dim=PROJECTION_DIM,
        init_codebook=False,
    )
    torch.manual_seed(0)
    FlavaModel(config).eval().save_pretrained(directory)
    FlavaImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    ).save_pretrained(directory)
    return directory


def build_tiny_dual(directory: Path) -> Path:
    """A self-contained VisionTextDualEncoderModel: 2-layer ViT + 2-layer BERT, 16-d projections.

    Unlike VLKB's own checkpoint (whose text tower is a pinned package), this one holds its text
    encoder and tokenizer, as dual-encoder checkpoints from elsewhere do.
    """
    from transformers import (
        BertConfig,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
        ViTConfig,
        ViTImageProcessorPil,
    )

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _bert_tokenizer(directory)
    layers = TINY_LAYERS
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        ViTConfig(**layers, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE),
        BertConfig(
            **layers,
            vocab_size=tokenizer.get_vocab_size(),
            max_position_embeddings=MAX_TEXT_LENGTH,
            pad_token_id=tokenizer.token_to_id("[PAD]"),
        ),
        projection_dim=PROJECTION_DIM,
    )
    torch.manual_seed(0)
    VisionTextDualEncoderModel(config=config).eval().save_pretrained(directory)
    ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(
        directory
    )
    return directory
