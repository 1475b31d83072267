"""Which files a command works on: plain paths, folders of images and glob patterns."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from engine.results import SampleFailure
from kb.errors import VLKBError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
GLOB_CHARACTERS = set("*?[")


def image_files(directory: Path) -> list[Path]:
    """The micrographs of a folder (not its subfolders), in name order."""
    if not directory.is_dir():
        raise VLKBError(f"{directory}: not a folder of images")
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def expand_inputs(items: Sequence[str | Path]) -> tuple[list[Path], list[SampleFailure]]:
    """Files in the order given: a folder gives its images (recursively, by name), a pattern
    its matches; a folder or pattern with nothing in it is a failure of its own.

    A plain path is passed through even if it does not exist, so that loading it reports
    the problem in the same words as any other unreadable file.
    """
    paths: list[Path] = []
    failures: list[SampleFailure] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                failures.append(SampleFailure(str(path), f"{path}: no images in this folder"))
            paths.extend(found)
        elif not path.exists() and GLOB_CHARACTERS & set(str(item)):
            found = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
            found = [p for p in found if p.is_file()]
            if not found:
                failures.append(SampleFailure(str(item), f"{item}: no file matches this pattern"))
            paths.extend(found)
        else:
            paths.append(path)
    return paths, failures
