"""Expert labels for a folder of micrographs: read, and checked against images and rules."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from engine.inputs import image_files
from kb.errors import VLKBError
from kb.rules import Assessment
from kb.vocabulary import DECISIVE, Verdict


class LabelsError(VLKBError):
    """The labels file does not match the images or the assessments."""


def read_labels(
    path: Path, keys: Sequence[str], images: Sequence[Path]
) -> dict[str, dict[str, str]]:
    """image file name -> {assessment key (and maybe overall): accept/reject}, all checked."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read the labels ({exc.strerror or exc})") from exc
    if "image" not in columns:
        raise LabelsError(f"{path}: no `image` column; the header must be image,{','.join(keys)}")
    missing = [k for k in keys if k not in columns]
    if missing:
        raise LabelsError(f"{path}: missing label columns {', '.join(missing)}")
    wanted = [c for c in columns if c in keys or c == "overall"]
    bad = [
        f"{row['image']}/{column}={row[column]!r}"
        for row in rows
        for column in wanted
        if (row[column] or "").strip() not in DECISIVE
    ]
    if bad:
        raise LabelsError(
            f"{path}: labels must be accept or reject, not {_listing(bad)}"
        )
    labels: dict[str, dict[str, str]] = {}
    for row in rows:
        name = row["image"].strip()
        if name in labels:
            raise LabelsError(f"{path}: image {name} is labelled twice")
        labels[name] = {c: row[c].strip() for c in wanted}
    present = {p.name for p in images}
    unknown = sorted(set(labels) - present)
    if unknown:
        raise LabelsError(f"{path}: labels name images that are not in the folder: "
                          f"{_listing(unknown)}")
    unlabelled = sorted(present - set(labels))
    if unlabelled:
        raise LabelsError(f"{path}: images without labels: {_listing(unlabelled)}")
    return labels


def folder_labels(
    directory: Path, key: str, accept: Sequence[str], keys: Sequence[str]
) -> tuple[list[Path], dict[str, dict[str, str]]]:
    """The images of DIR's class subfolders, each labelled for one assessment: accept when its
    class is one of `accept`, reject otherwise (the layout of image datasets, no CSV).

    Labels are keyed by the path relative to DIR, so good/001.png and hole/001.png differ.
    """
    if key not in keys:
        raise LabelsError(f"--labels-from-folders {key}: no such assessment; "
                          f"the rules have {', '.join(keys)}")
    if not directory.is_dir():
        raise LabelsError(f"{directory}: not a folder of class subfolders")
    classes = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = [c.name for c in classes]
    unknown = [name for name in accept if name not in names]
    if not accept or unknown:
        raise LabelsError(
            f"{directory}: --accept must name class subfolders; "
            f"{'no such folder ' + ', '.join(unknown) if unknown else 'none given'} "
            f"(the folder has {', '.join(names) or 'no subfolders'})"
        )
    images, labels = [], {}
    for folder in classes:
        verdict = Verdict.ACCEPT if folder.name in accept else Verdict.REJECT
        for path in image_files(folder):
            images.append(path)
            labels[path.relative_to(directory).as_posix()] = {key: verdict.value}
    if not images:
        raise LabelsError(f"{directory}: its class subfolders hold no images")
    return images, labels


def _listing(items: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def labels_drawn_from_rules(
    labels_path: Path, assessments: Mapping[str, Assessment]
) -> list[str]:
    """The assessments whose labels `kb synth` drew with exactly their measurement rules'
    quantities, comparisons and limits (labels.json beside the CSV says how it drew them).

    For those, agreement of the measurement evidence checks the metrology, not the criterion:
    the evaluation page says so. A hand-made labels file has no labels.json: nothing is said.
    """
    path = labels_path.with_suffix(".json")
    try:
        criteria = json.loads(path.read_text(encoding="utf-8"))["criteria"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    same = []
    for key, assessment in assessments.items():
        drawn = criteria.get(key) if isinstance(criteria, dict) else None
        rules = [{"quantity": r.quantity, "op": r.op, "limit": r.limit}
                 for r in assessment.measurements]
        if rules and drawn == rules:
            same.append(key)
    return same
