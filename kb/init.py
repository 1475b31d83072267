"""`kb init`: a new workspace with a commented kb.toml and a rules/ folder holding the root gate."""

from __future__ import annotations

from pathlib import Path

from kb.config import CONFIG_FILE, DEFAULT_LEGEND, DEFAULT_UM_PER_PX, RULES_DIR, Workspace
from kb.errors import WorkspaceError
from kb.rules import ASSESSMENTS_DIR, TREE_FILE

HUB_CLIP = "openai/clip-vit-base-patch32"
HUB_FLAVA = "facebook/flava-full"


def config_text(clip_source: str = HUB_CLIP, flava_source: str = HUB_FLAVA) -> str:
    legend = "\n".join(f"{name} = [{r}, {g}, {b}]" for name, (r, g, b) in DEFAULT_LEGEND.items())
    return f"""# VLKB workspace configuration.

[database]
# Any SQLAlchemy URL; a relative SQLite path is relative to this folder.
url = "sqlite:///kb.sqlite"

[metrology]
# Default pixel size of the micrographs (micrometres per pixel); --um-per-px overrides it.
um_per_px = {DEFAULT_UM_PER_PX}

[output]
# Where reports are written (never inside reports/, which holds the templates).
dir = "out"

[legend]
# Phase colours of the segmented micrographs (R, G, B).
{legend}

# Models: a hub id or a local directory (config.json, weights, tokenizer, preprocessor).
# With HF_HUB_OFFLINE=1 hub ids are read from the local Hugging Face cache only.
[models.clip]
backend = "clip"
source = "{clip_source}"

[models.flava]
backend = "flava"
source = "{flava_source}"

# Assessments name roles, never models: rebinding a role is this one edit.
[roles]
text = "clip"    # image <-> prompt similarity (vision-language)
image = "flava"  # image <-> reference-image similarity (vision-vision)
"""


TREE_TEXT = """# The detection tree: gates combine the verdicts of their children.
# Each assessment under assessments/ names its parent gate; rules: all, any, k_of_n, consensus.

[gates.qualification]
name = "Overall qualification"
rule = "all"
"""


def init_workspace(
    directory: Path, clip_source: str = HUB_CLIP, flava_source: str = HUB_FLAVA
) -> Workspace:
    """Create the workspace files; refuses to overwrite an existing kb.toml or rules/."""
    directory = directory.expanduser().resolve()
    if (directory / CONFIG_FILE).exists():
        raise WorkspaceError(f"{directory} already has a {CONFIG_FILE}; nothing was changed")
    if (directory / RULES_DIR).exists():
        raise WorkspaceError(f"{directory} already has a {RULES_DIR}/ folder; nothing was changed")
    try:
        (directory / RULES_DIR / ASSESSMENTS_DIR).mkdir(parents=True)
        (directory / RULES_DIR / TREE_FILE).write_text(TREE_TEXT, encoding="utf-8")
        (directory / CONFIG_FILE).write_text(
            config_text(clip_source, flava_source), encoding="utf-8"
        )
    except OSError as exc:
        raise WorkspaceError(f"cannot create a workspace in {directory}: {exc.strerror}") from exc
    return Workspace.open(directory)
