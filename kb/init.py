"""`kb init`: a new workspace with a commented kb.toml and a rules/ folder holding the root gate."""

from __future__ import annotations

import shutil
from pathlib import Path

from kb.config import CONFIG_FILE, DEFAULT_LEGEND, DEFAULT_UM_PER_PX, RULES_DIR, Workspace
from kb.errors import WorkspaceError
from kb.rules import ASSESSMENTS_DIR, TREE_FILE

HUB_CLIP = "openai/clip-vit-base-patch32"
HUB_FLAVA = "facebook/flava-full"
# The generic image encoder `make install` converts (engine/encoders/cnn_install.py).
GENERIC_IMAGE_MODEL = "efficientnet-lite0"


def config_text(clip_source: str | None = None, flava_source: str | None = None) -> str:
    """kb.toml of a new workspace: reference images on the generic CNN (or FLAVA when given),
    text prompts on CLIP when given, else unbound with a note saying what they need."""
    if clip_source is None:
        text_models = f"""# Text prompts need a vision-language model: until one is bound, prompt
# evidence is not assessed (reference images and measurements still judge). To bind CLIP,
# make it load offline (a local folder, or the Hugging Face cache), uncomment these lines and
# bind the role below (text = "clip"):
# [models.clip]
# backend = "clip"
# source = "{HUB_CLIP}"   # or a local directory
"""
        text_role = 'text = ""       # unbound: text prompts are not assessed (see [models] above)'
    else:
        text_models = f"""[models.clip]
backend = "clip"
source = "{clip_source}"
"""
        text_role = 'text = "clip"    # image <-> prompt similarity (vision-language)'
    flava_model = "" if flava_source is None else f"""
[models.flava]
backend = "flava"
source = "{flava_source}"
"""
    image_name = GENERIC_IMAGE_MODEL if flava_source is None else "flava"
    image_role = f'image = "{image_name}"'
    return _config_text(text_models, flava_model, text_role, image_role)


def _config_text(text_models: str, flava_model: str, text_role: str, image_role: str) -> str:
    legend = "\n".join(f"{name} = [{r}, {g}, {b}]" for name, (r, g, b) in DEFAULT_LEGEND.items())
    return f"""# VLKB workspace configuration.

[database]
# SQLite (sqlite:///FILE, relative to this folder) or a shared PostgreSQL database
# (postgresql+psycopg://USER@HOST:PORT/DB; kb migrate --to URL copies this one there).
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

# Models: `source` is a local directory (config.json, weights, ...), a hub id (with
# HF_HUB_OFFLINE=1 read from the local Hugging Face cache only) or vlkb:NAME, a model that
# `kb models install NAME` (run by `make install`) converted into this installation.
# The generic image encoder: an ImageNet-pretrained CNN, offline, for any material.
[models.{GENERIC_IMAGE_MODEL}]
backend = "cnn"
source = "vlkb:{GENERIC_IMAGE_MODEL}"
{flava_model}
{text_models}
# Assessments name roles, never models: rebinding a role is this one edit.
[roles]
{text_role}
{image_role}  # image <-> reference-image similarity (vision-vision)
# local = "{GENERIC_IMAGE_MODEL}"  # anomaly maps, for assessments with a [local] table
"""


TREE_TEXT = """# The detection tree: gates combine the verdicts of their children.
# Each assessment under assessments/ names its parent gate; rules: all, any, k_of_n, consensus.

# What every assessment's [decision] inherits unless it sets its own: where an assessment has
# measurement limits they decide, and image or prompt evidence that contradicts them sends the
# part to review only when it is confident (docs/rules.md); "strictest" lets any evidence veto.
[defaults.decision]
combine = "measurement-led"

[gates.qualification]
name = "Overall qualification"
rule = "all"
"""


EXAMPLES = ("ni-wc-ded",)
# The example workspace is the repository root itself (kb.toml, rules/, examples/).
REPOSITORY = Path(__file__).resolve().parent.parent


def init_example(directory: Path, name: str) -> Workspace:
    """A copy of an example workspace: its kb.toml, rules/ (with references) and samples."""
    if name not in EXAMPLES:
        raise WorkspaceError(f"unknown example {name!r}; known examples: {', '.join(EXAMPLES)}")
    source = REPOSITORY
    if not (source / CONFIG_FILE).is_file() or not (source / RULES_DIR).is_dir():
        raise WorkspaceError(
            f"the {name} example is not next to this installation ({source}); "
            "install VLKB from a clone of its repository to use --example"
        )
    directory = directory.expanduser().resolve()
    for existing in (CONFIG_FILE, RULES_DIR):
        if (directory / existing).exists():
            raise WorkspaceError(f"{directory} already has {existing}; nothing was changed")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source / RULES_DIR, directory / RULES_DIR)
        shutil.copytree(source / "examples", directory / "examples",
                        ignore=shutil.ignore_patterns("*.py", "__pycache__"))
        if (source / "models").is_dir():  # the example's own trained model, if it ships one
            shutil.copytree(source / "models", directory / "models")
        shutil.copy2(source / CONFIG_FILE, directory / CONFIG_FILE)
    except OSError as exc:
        shutil.rmtree(directory / RULES_DIR, ignore_errors=True)
        raise WorkspaceError(f"cannot create a workspace in {directory}: {exc.strerror}") from exc
    return Workspace.open(directory)


def init_workspace(
    directory: Path, clip_source: str | None = None, flava_source: str | None = None
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
