"""Folder-labelled datasets, the convention of image datasets: references and evaluation
labels taken from class subfolders, both polarities of references in one call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_runner import kb
from tests.workspaces import micrograph, new_workspace, write_carbide_assessment


@pytest.fixture
def root(tmp_path: Path, tiny_clip_dir: Path, tiny_flava_dir: Path) -> Path:
    ws = new_workspace(tmp_path / "ws", tiny_clip_dir, tiny_flava_dir)
    write_carbide_assessment(ws, with_references=False)
    code, _, err = kb("sync", "-w", str(ws.root))
    assert code == 0, err
    return ws.root


def dataset(folder: Path, classes: dict[str, float], per_class: int = 3) -> Path:
    """DIR/CLASS/000.png ...: the same file names in every class, pink share per class."""
    for index, (name, share) in enumerate(classes.items()):
        for i in range(per_class):
            micrograph(folder / name / f"{i:03d}.png", seed=10 * index + i, pink_share=share)
    return folder


def version(root: Path) -> int:
    code, out, err = kb("sync", "--json", "-w", str(root))
    assert code == 0, err
    return json.loads(out)["version"]


def test_one_call_adds_a_folder_of_good_and_files_of_bad_references_as_one_ruleset_version(
    root: Path, tmp_path: Path
):
    good = dataset(tmp_path / "good-set", {"good": 0.4})
    bad = [micrograph(tmp_path / f"bad-{i}.png", seed=40 + i, pink_share=0.02) for i in range(2)]
    before = version(root)
    code, out, err = kb("add-reference", "EA-5", "--positive", str(good / "good"),
                        "--negative", *map(str, bad), "--json", "-w", str(root))
    assert code == 0, err
    assert json.loads(out)["version"] == before + 1
    refs = root / "rules" / "references" / "EA-5"
    assert sorted(p.name for p in (refs / "positive").iterdir()) == ["000.png", "001.png",
                                                                    "002.png"]
    assert sorted(p.name for p in (refs / "negative").iterdir()) == ["bad-0.png", "bad-1.png"]


def test_the_older_spelling_with_the_flag_after_the_images_still_works(root: Path, tmp_path: Path):
    images = [micrograph(tmp_path / f"p{i}.png", seed=i, pink_share=0.4) for i in range(2)]
    code, _, err = kb("add-reference", "EA-5", *map(str, images), "--positive", "-w", str(root))
    assert code == 0, err
    assert len(list((root / "rules/references/EA-5/positive").iterdir())) == 2


def test_a_bad_image_in_either_polarity_copies_nothing_of_the_other(root: Path, tmp_path: Path):
    good = micrograph(tmp_path / "good.png", seed=1, pink_share=0.4)
    broken = tmp_path / "broken.png"
    broken.write_text("not a png")
    code, _, err = kb("add-reference", "EA-5", "--positive", str(good), "--negative", str(broken),
                      "-w", str(root))
    assert code == 1 and "broken.png: not a readable image" in err
    assert not (root / "rules/references/EA-5/positive").exists() or not any(
        (root / "rules/references/EA-5/positive").iterdir())


def test_images_that_precede_both_flags_are_refused_as_ambiguous(root: Path, tmp_path: Path):
    a, b = (micrograph(tmp_path / f"{n}.png", seed=3, pink_share=0.1) for n in "ab")
    code, _, err = kb("add-reference", "EA-5", str(a), "--positive", str(b), "--negative",
                      str(b), "-w", str(root))
    assert code == 1 and "--positive or --negative" in err


def test_evaluate_takes_its_labels_from_class_subfolders_with_repeated_file_names(
    root: Path, tmp_path: Path
):
    data = dataset(tmp_path / "data", {"good": 0.4, "hole": 0.03, "stain": 0.05})
    code, out, err = kb("evaluate", str(data), "--labels-from-folders", "EA-5", "--accept",
                        "good", "--json", "-w", str(root))
    assert code == 0, err
    document = json.loads(out)
    assert document["images"] == 9
    labels = {s["image"]: s["labels"]["EA-5"] for s in document["samples"]}
    assert labels == {f"{c}/{i:03d}.png": "accept" if c == "good" else "reject"
                      for c in ("good", "hole", "stain") for i in range(3)}
    assert list(document["assessments"]) == ["EA-5"]


def test_evaluate_names_the_class_folders_when_accept_names_none_of_them(
    root: Path, tmp_path: Path
):
    data = dataset(tmp_path / "data", {"good": 0.4, "hole": 0.03})
    code, out, err = kb("evaluate", str(data), "--labels-from-folders", "EA-5", "--accept",
                        "nominal", "-w", str(root))
    assert code == 1 and out == ""
    assert "no such folder nominal" in err and "good, hole" in err
