"""Batch qualification: folders and globs, chunked streaming, skip-existing, clean --json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.metrology.synthetic import write_dataset
from engine.qualify import CHUNK, QualifyOptions, qualify_paths
from engine.session import VLKB
from engine.sync import sync_workspace
from kb.config import Workspace
from tests.cli_runner import kb
from tests.workspaces import micrograph, new_workspace, write_carbide_assessment

REPO = Path(__file__).resolve().parent.parent




def test_folders_globs_and_a_bad_file_in_one_run(example: Workspace, tmp_path: Path) -> None:
    write_dataset(tmp_path / "set", n=5, seed=4)
    (tmp_path / "set" / "sub").mkdir()
    shutil.copy(tmp_path / "set" / "sample-0000.png", tmp_path / "set" / "sub" / "copy.png")
    (tmp_path / "set" / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, out, err = kb("qualify", tmp_path / "set", str(tmp_path / "nothing-*.png"),
                        "--json", "-w", example.root)
    assert code == 1
    document = json.loads(out)
    stored = sorted(Path(q["sample"]["path"]).name for q in document["qualifications"])
    assert stored == ["copy.png", *(f"sample-{i:04d}.png" for i in range(5))]
    failed = {Path(f["path"]).name: f["error"] for f in document["failures"]}
    assert set(failed) == {"broken.png", "nothing-*.png"}
    assert "no file matches this pattern" in failed["nothing-*.png"]
    assert "2 input(s) failed; 6 qualified and stored." in err


def test_skip_existing_skips_only_what_was_judged_under_the_same_conditions(
    example: Workspace, tmp_path: Path
) -> None:
    write_dataset(tmp_path, n=3, seed=5)
    pattern = str(tmp_path / "*.png")
    code, out, _ = kb("qualify", pattern, "--skip-existing", "--json", "-w", example.root)
    assert code == 0 and len(json.loads(out)["qualifications"]) == 3
    code, out, err = kb("qualify", pattern, "--skip-existing", "--json", "-w", example.root)
    document = json.loads(out)
    assert code == 0 and document["qualifications"] == [] and len(document["skipped"]) == 3
    assert "3 file(s) skipped" in err
    # Another pixel size is another measurement: nothing is skipped.
    code, out, _ = kb("qualify", pattern, "--skip-existing", "--um-per-px", 5, "--json",
                      "-w", example.root)
    assert len(json.loads(out)["qualifications"]) == 3
    write_dataset(tmp_path / "more", n=1, seed=6)
    code, out, _ = kb("qualify", pattern, tmp_path / "more", "--skip-existing", "--json",
                      "-w", example.root)
    assert [Path(q["sample"]["path"]).parent.name for q in json.loads(out)["qualifications"]] \
        == ["more"]


def test_streamed_run_keeps_nothing_and_batch_statistics_span_every_chunk(
    tmp_path: Path, tiny_clip_dir: Path, tiny_flava_dir: Path
) -> None:
    ws = new_workspace(tmp_path / "ws", tiny_clip_dir, tiny_flava_dir)
    write_carbide_assessment(ws)
    sync_workspace(VLKB(ws))
    n = CHUNK + 8
    paths = [micrograph(tmp_path / "m" / f"{i:03d}.png", seed=i, pink_share=0.02 + 0.01 * (i % 40))
             for i in range(n)]
    seen = []
    stages: set[str] = set()
    outcome = qualify_paths(
        VLKB(ws), paths, QualifyOptions(normalize="batch"),
        progress=lambda stage, done, total: stages.add(stage),
        on_result=seen.append, keep_results=False,
    )
    assert outcome.results == [] and outcome.stored == n and len(seen) == n
    assert stages == {"embedding", "judging"}
    for role in ("text", "image"):
        z = [next(e.z for nd in r.nodes if nd.key == "EA-5" for e in nd.evidence
                  if getattr(e, "role", None) == role) for r in seen]
        # One population over all images, not one per chunk: the z-scores of the whole run
        # have mean 0 and standard deviation 1.
        assert np.mean(z) == pytest.approx(0.0, abs=1e-9)
        assert np.std(z) == pytest.approx(1.0, abs=1e-9)
        assert all(r.normalization == "batch" for r in seen)


def test_json_stays_pure_while_the_progress_bar_draws(example: Workspace, tmp_path: Path) -> None:
    write_dataset(tmp_path, n=6, seed=8)
    env = {**os.environ, "TTY_COMPATIBLE": "1", "KB_WORKSPACE": str(example.root)}
    kb_command = str(Path(sys.executable).with_name("kb"))
    run = subprocess.run([kb_command, "qualify", str(tmp_path), "--json"], env=env,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "judging" in run.stderr and "img/s" in run.stderr  # the bar really ran
    assert len(json.loads(run.stdout)["qualifications"]) == 6
