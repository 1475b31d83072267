"""Which files a command works on: plain paths, folders of images and glob patterns."""

from __future__ import annotations

import glob
import os
import stat
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
        try:
            kind = _kind(path)
            if kind == "folder":
                found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
                if not found:
                    failures.append(SampleFailure(str(path), f"{path}: no images in this folder"))
                paths.extend(found)
            elif kind == "missing" and GLOB_CHARACTERS & set(str(item)):
                found = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
                found = [p for p in found if not _is_folder(p)]
                if not found:
                    failures.append(
                        SampleFailure(str(item), f"{item}: no file matches this pattern")
                    )
                paths.extend(found)
            else:
                paths.append(path)
        except OSError as exc:
            failures.append(
                SampleFailure(str(item), f"{item}: cannot be read: {exc.strerror or exc}")
            )
    return paths, failures


def _kind(path: Path) -> str:
    """folder, missing, or other (a file, a symlink loop, a name too long...: load_sample
    says what is wrong with those in its own words)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError):
        return "other"
    return "folder" if stat.S_ISDIR(mode) else "other"


def _is_folder(path: Path) -> bool:
    return _kind(path) == "folder"
