"""Writing rules/ from the command line, so the files in git stay the source of truth."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from kb.config import Workspace
from kb.errors import RulesError
from kb.rules import ASSESSMENTS_DIR, POLARITIES, REFERENCES_DIR, MeasurementRule
from kb.vocabulary import COMPARISONS

KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
MEASUREMENT = re.compile(
    rf"^\s*(?P<quantity>[a-z][a-z0-9_]*)\s*(?P<op><=|>=|<|>)\s*(?P<limit>{NUMBER})"
    rf"(?:\s*(?:\+-|±)\s*(?P<uncertainty>{NUMBER}))?\s*$"
)


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise RulesError(
            f"invalid key {key!r}: use letters, digits, '-', '_' or '.', starting with a letter "
            "or digit (e.g. EA-7)"
        )
    return key


def parse_measurement(text: str, units: Mapping[str, str]) -> MeasurementRule:
    """`porosity_fraction <= 0.02 +- 0.002` as a rule, in the unit metrology reports it in."""
    match = MEASUREMENT.match(text)
    if match is None:
        raise RulesError(
            f"--measurement {text!r}: write QUANTITY OP LIMIT [+- UNCERTAINTY], e.g. "
            f"\"porosity_fraction <= 0.02 +- 0.002\" (OP one of {', '.join(COMPARISONS)})"
        )
    quantity = match["quantity"]
    if quantity not in units:
        raise RulesError(f"--measurement {text!r}: unknown quantity {quantity!r}; "
                         f"known: {', '.join(units)}")
    uncertainty = float(match["uncertainty"] or 0.0)
    if uncertainty < 0:
        raise RulesError(f"--measurement {text!r}: the uncertainty must not be negative")
    return MeasurementRule(quantity, match["op"], float(match["limit"]), units[quantity],
                           uncertainty)


def _toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are a subset TOML accepts)."""
    return json.dumps(text, ensure_ascii=False)


def _toml_list(items: Sequence[str]) -> str:
    if not items:
        return "[]"
    return "[\n" + "".join(f"    {_toml_string(i)},\n" for i in items) + "]"


def assessment_text(
    key: str,
    name: str,
    criterion: str,
    parent: str,
    positive: Sequence[str],
    negative: Sequence[str],
    threshold: float | None = None,
    review_margin: float | None = None,
    fusion: str = "zsum",
    measurements: Sequence[MeasurementRule] = (),
) -> str:
    """The TOML of a new assessment; a threshold or band left None is left out, so it is
    chosen from the references once there are enough (docs/rules.md)."""
    chosen = "".join(
        f"{name} = {value!r}\n" if value is not None
        else f"# {name}: chosen from the references' leave-one-out scores (5+ a side)\n"
        for name, value in (("threshold", threshold), ("review_margin", review_margin))
    )
    return (
        f"key = {_toml_string(key)}\n"
        f"name = {_toml_string(name)}\n"
        f"parent = {_toml_string(parent)}\n"
        f"criterion = {_toml_string(criterion)}\n"
        + (
            "\n[prompts]\n"
            f"positive = {_toml_list(positive)}\n"
            f"negative = {_toml_list(negative)}\n"
            if positive or negative else ""
        )
        + "".join(
            "\n[[measurements]]\n"
            f"quantity = {_toml_string(m.quantity)}\n"
            f"op = {_toml_string(m.op)}\n"
            f"limit = {m.limit!r}\n"
            f"unit = {_toml_string(m.unit)}\n"
            + (f"uncertainty = {m.uncertainty!r}\n" if m.uncertainty else "")
            for m in measurements
        )
        + "\n[decision]\n"
        f"fusion = {_toml_string(fusion)}\n"
        + chosen
    )


def write_assessment(workspace: Workspace, key: str, text: str) -> Path:
    """Create rules/assessments/KEY.toml; an existing assessment is never overwritten."""
    path = workspace.rules_dir / ASSESSMENTS_DIR / f"{check_key(key)}.toml"
    if path.exists():
        raise RulesError(
            f"rules/{ASSESSMENTS_DIR}/{key}.toml already exists; edit that file instead"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def copy_references(
    workspace: Workspace, key: str, images_by_polarity: Mapping[str, Sequence[Path]]
) -> list[Path]:
    """Copy images under rules/references/KEY/POLARITY/; returns only the files it created.

    Every image of every polarity is checked before anything is copied, so a bad file leaves
    rules/ untouched, and both polarities land in one ruleset version.
    """
    unknown = sorted(set(images_by_polarity) - set(POLARITIES))
    if unknown:
        raise RulesError(f"polarity must be one of {POLARITIES}, not {', '.join(unknown)}")
    if not (workspace.rules_dir / ASSESSMENTS_DIR / f"{check_key(key)}.toml").is_file():
        raise RulesError(f"no assessment {key!r} in rules/{ASSESSMENTS_DIR}/; add it first")
    for images in images_by_polarity.values():
        for image in images:
            _check_image(image)
    created = []
    for polarity, images in images_by_polarity.items():
        target_dir = workspace.rules_dir / REFERENCES_DIR / key / polarity
        target_dir.mkdir(parents=True, exist_ok=True)
        for image in images:
            target = _free_target(target_dir, Path(image))
            if target is not None:
                shutil.copyfile(image, target)
                created.append(target)
    return created


def _check_image(image: Path) -> None:
    """A regular file that PIL can verify as an image, or a RulesError naming it."""
    try:
        if not stat.S_ISREG(os.stat(image).st_mode):  # a FIFO would block Image.open
            raise RulesError(
                f"{image}: not a regular file (a folder, FIFO, socket or device); "
                "it was not read"
            )
        with Image.open(image) as opened:
            opened.verify()
    except FileNotFoundError:
        raise RulesError(f"{image}: no such file") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise RulesError(f"{image}: not a readable image ({exc})") from None


def _free_target(target_dir: Path, image: Path) -> Path | None:
    """Where a reference goes: its own name, or name-DIGEST when another file has it; None
    when the same bytes are already there."""
    data = image.read_bytes()
    target = target_dir / image.name
    if target.exists():
        if target.read_bytes() == data:
            return None
        digest = hashlib.sha256(data).hexdigest()[:10]
        target = target_dir / f"{image.stem}-{digest}{image.suffix}"
        if target.exists():
            return None
    return target
