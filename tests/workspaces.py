"""Building real workspaces on disk for tests: kb.toml, rules/ and reference images."""

from __future__ import annotations

import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from engine.session import VLKB
from kb.config import Workspace
from kb.init import init_workspace

REPO = Path(__file__).resolve().parent.parent

GREEN, PINK, RED, BLUE = (0, 255, 0), (255, 105, 180), (255, 0, 0), (0, 0, 255)


def micrograph(path: Path, seed: int, pink_share: float, size: int = 48) -> Path:
    """A small phase-map-like picture: a green field with a given share of pink specks."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[size // 3 :] = GREEN
    pixels[size // 3 - 2 : size // 3] = RED
    specks = rng.random((size, size)) < pink_share
    specks[: size // 3] = False
    pixels[specks] = PINK
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def new_workspace(
    root: Path, clip_dir: Path | None = None, flava_dir: Path | None = None
) -> Workspace:
    """A fresh workspace; roles bound to the given model dirs, or unbound when None."""
    ws = init_workspace(
        root,
        str(clip_dir or "openai/clip-vit-base-patch32"),
        str(flava_dir or "facebook/flava-full"),
    )
    config = (root / "kb.toml").read_text()
    if clip_dir is None:
        config = config.replace('text = "clip"', 'text = ""')
    if flava_dir is None:
        config = config.replace('image = "flava"', 'image = ""')
    (root / "kb.toml").write_text(config + "\n")
    return Workspace.open(ws.root)


CARBIDE_TOML = """key = "EA-5"
name = "Carbide dissolution"
parent = "qualification"
criterion = "At least 30 % of the bead is undissolved carbide."

[prompts]
positive = ["many pink carbide particles in the green bead", "dense carbides in the matrix"]
negative = ["few pink carbides, mostly green matrix", "carbides dissolved in the bead"]

[decision]
fusion = "zsum"
threshold = 0.0
"""


def write_carbide_assessment(ws: Workspace, with_references: bool = True) -> None:
    """EA-5 with prompts and (optionally) three positive and three negative references."""
    (ws.rules_dir / "assessments" / "EA-5.toml").write_text(CARBIDE_TOML)
    if with_references:
        refs = ws.rules_dir / "references" / "EA-5"
        for i in range(3):
            micrograph(refs / "positive" / f"pos-{i}.png", seed=i, pink_share=0.35 + 0.05 * i)
            micrograph(refs / "negative" / f"neg-{i}.png", seed=10 + i, pink_share=0.03 + 0.02 * i)


def example_copy(root: Path, unbind_roles: bool = True) -> Workspace:
    """A synced copy of the repo-root example workspace, so tests never write into the checkout.

    unbind_roles judges on measurements alone, whatever models the example binds.
    """
    from engine.sync import sync_workspace

    root.mkdir(parents=True, exist_ok=True)
    config = (REPO / "kb.toml").read_text(encoding="utf-8")
    if unbind_roles:
        config = re.sub(r'(?m)^(text|image|local)\s*=\s*"[^"]*"', r'\1 = ""', config)
    (root / "kb.toml").write_text(config, encoding="utf-8")
    shutil.copytree(REPO / "rules", root / "rules")
    workspace = Workspace.open(root)
    sync_workspace(VLKB(workspace))
    return workspace


def shipped_copy(root: Path) -> Workspace:
    """A synced copy of the example with its roles on the shipped model (models/ linked in)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "models").symlink_to(REPO / "models", target_is_directory=True)
    return example_copy(root, unbind_roles=False)


def use_database(root: Path, url: str) -> Workspace:
    """Point a workspace's [database] url at another knowledge base (e.g. PostgreSQL)."""
    config = (root / "kb.toml").read_text(encoding="utf-8")
    config, found = re.subn(r'(?m)^url\s*=\s*"[^"]*"', f'url = "{url}"', config, count=1)
    assert found == 1, "kb.toml has no [database] url line"
    (root / "kb.toml").write_text(config, encoding="utf-8")
    return Workspace.open(root)


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims other (e.g. huge) dimensions, with no pixel data."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path
