"""Inputs never abort a batch: every OS error while reading a file is one failure line naming
that file, special files are refused without being read, and --json stays one document."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.inputs import expand_inputs
from engine.metrology.measure import measure_paths
from engine.qualify import QualifyOptions, qualify_paths
from engine.samples import load_sample
from engine.session import VLKB
from kb.config import Workspace
from kb.errors import ImageError, RulesError
from tests.cli_runner import kb
from tests.workspaces import example_copy

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"




def good_maps(folder: Path, n: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    names = ["sound-bead-a.png", "porous-bead.png", "sound-bead-b.png"][:n]
    paths = []
    for name in names:
        (folder / name).write_bytes((EXAMPLES / name).read_bytes())
        paths.append(folder / name)
    return paths


def finishes(seconds: float, work: Callable[[], Any], fifo: Path | None = None) -> Any:
    """Run work in a thread; fail the test (instead of hanging it) if it blocks.

    A reader blocked on a FIFO is released by opening the FIFO for writing once.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if fifo is not None:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        thread.join(5)
        pytest.fail(f"blocked for more than {seconds} s: the special file was read")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --- special files ---------------------------------------------------------------------------


def test_a_fifo_given_as_input_is_refused_without_being_read(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError) as caught:
        finishes(10, lambda: load_sample(fifo), fifo)
    message = str(caught.value)
    assert str(fifo) in message and "FIFO" in message


def test_kb_measure_on_a_fifo_answers_at_once_with_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    try:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "kb"), "measure", str(fifo), "-w", str(REPO)],
            capture_output=True, text=True, timeout=60, cwd=REPO,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    except subprocess.TimeoutExpired:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("kb measure blocked reading the FIFO")
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(fifo) in lines[0] and "Traceback" not in done.stderr


def test_a_socket_and_a_device_are_refused_as_not_regular_files(tmp_path: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="vlkb-"))  # a socket path must stay under ~100 chars
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(short / "s.png"))
        for path, kind in ((short / "s.png", "socket"), (Path("/dev/null"), "device")):
            with pytest.raises(ImageError) as caught:
                finishes(10, lambda p=path: load_sample(p))
            assert str(path) in str(caught.value) and kind in str(caught.value)
    finally:
        server.close()
        (short / "s.png").unlink(missing_ok=True)
        short.rmdir()


def test_a_fifo_met_while_scanning_a_folder_is_refused_and_the_rest_measured(
    tmp_path: Path,
) -> None:
    good_maps(tmp_path / "set")
    fifo = tmp_path / "set" / "zz-pipe.png"
    os.mkfifo(fifo)
    paths, failures = expand_inputs([tmp_path / "set"])
    assert failures == []
    workspace = Workspace.open(REPO)
    measured, failed = finishes(20, lambda: measure_paths(workspace, paths), fifo)
    assert [Path(m.path).name for m in measured] == ["porous-bead.png", "sound-bead-a.png"]
    assert [f.path for f in failed] == [str(fifo)] and "FIFO" in failed[0].error


def test_skip_existing_never_reads_a_fifo(tmp_path: Path) -> None:
    workspace = example_copy(tmp_path / "ws")
    (good,) = good_maps(tmp_path / "in", 1)
    fifo = tmp_path / "in" / "pipe.png"
    os.mkfifo(fifo)
    options = QualifyOptions(normalize="calibrated", skip_existing=True)
    outcome = finishes(60, lambda: qualify_paths(VLKB(workspace), [good, fifo], options), fifo)
    assert outcome.stored == 1
    assert [f.path for f in outcome.failures] == [str(fifo)]
    assert str(fifo) in outcome.failures[0].error


def test_add_reference_refuses_a_fifo_without_reading_it(tmp_path: Path) -> None:
    from kb.editing import copy_references

    workspace = example_copy(tmp_path / "ws")
    fifo = tmp_path / "ref.png"
    os.mkfifo(fifo)
    with pytest.raises(RulesError) as caught:
        finishes(10, lambda: copy_references(workspace, "EA-5", {"positive": [fifo]}), fifo)
    assert str(fifo) in str(caught.value) and "FIFO" in str(caught.value)


# --- OS errors -------------------------------------------------------------------------------


def test_a_symlink_loop_in_a_batch_with_good_files_fails_alone(tmp_path: Path) -> None:
    workspace = example_copy(tmp_path / "ws")
    good = good_maps(tmp_path / "in")
    loop = tmp_path / "in" / "loop.png"
    loop.symlink_to(loop)
    code, out, err = kb("qualify", good[0], loop, good[1], "--json", "-w", workspace.root)
    assert code == 1, err
    document = json.loads(out)  # one valid JSON document, nothing else on stdout
    stored = sorted(Path(q["sample"]["path"]).name for q in document["qualifications"])
    assert stored == ["porous-bead.png", "sound-bead-a.png"]
    (failure,) = document["failures"]
    assert failure["path"] == str(loop) and str(loop) in failure["error"]
    assert "Traceback" not in err and "1 input(s) failed; 2 qualified and stored." in err


def test_a_symlink_loop_in_a_scanned_folder_fails_alone(tmp_path: Path) -> None:
    good_maps(tmp_path / "set")
    loop = tmp_path / "set" / "loop.png"
    loop.symlink_to(loop)
    code, out, err = kb("measure", tmp_path / "set", "--json", "-w", REPO)
    assert code == 1
    document = json.loads(out)
    assert len(document["measurements"]) == 2
    assert [f["path"] for f in document["failures"]] == [str(loop)]


def test_a_file_name_longer_than_the_file_system_allows_is_one_failure_line(
    tmp_path: Path,
) -> None:
    (good,) = good_maps(tmp_path, 1)
    long_name = tmp_path / ("x" * 300 + ".png")
    code, out, err = kb("measure", long_name, good, "--json", "-w", REPO)
    assert code == 1, err
    document = json.loads(out)
    assert [Path(m["path"]).name for m in document["measurements"]] == ["sound-bead-a.png"]
    (failure,) = document["failures"]
    assert str(long_name) in failure["error"] and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(long_name) in errors[0]


def test_an_io_error_while_reading_names_the_file_and_the_batch_goes_on(tmp_path: Path) -> None:
    workspace = example_copy(tmp_path / "ws")
    good = good_maps(tmp_path / "in")
    broken = tmp_path / "in" / "eio.png"
    broken.symlink_to("/proc/self/mem")  # a regular file whose read fails with EIO
    outcome = qualify_paths(VLKB(workspace), [good[0], broken, good[1]], QualifyOptions())
    assert outcome.stored == 2
    (failure,) = outcome.failures
    assert failure.path == str(broken) and str(broken) in failure.error
    assert "input/output error" in failure.error.lower()


# --- failure lines name their file -----------------------------------------------------------


def test_the_legend_refusal_of_kb_measure_names_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(photo)
    code, _, err = kb("measure", photo, "-w", REPO)
    assert code == 1
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert str(photo) in line and "phase map" in line


def test_a_locked_database_fails_each_sample_naming_it_and_a_rerun_stores_them(
    tmp_path: Path,
) -> None:
    """Files are stored a chunk at a time; a lock held through that store fails the chunk and
    then each file alone, each failure naming its file, and nothing is half-written."""
    workspace = example_copy(tmp_path / "ws")
    config = workspace.root / "kb.toml"
    config.write_text(
        config.read_text().replace('url = "sqlite:///kb.sqlite"',
                                   'url = "sqlite:///kb.sqlite"\nbusy_timeout_s = 0.2')
    )
    workspace = Workspace.open(workspace.root)
    paths = good_maps(tmp_path / "in", 3)
    holder: dict[str, sqlite3.Connection] = {}

    def progress(stage: str, done: int, total: int) -> None:
        # Called as the last file is judged, before the chunk is stored.
        if stage == "judging" and done == 3:
            holder["lock"] = sqlite3.connect(workspace.root / "kb.sqlite", isolation_level=None)
            holder["lock"].execute("BEGIN EXCLUSIVE")

    try:
        outcome = qualify_paths(VLKB(workspace), paths, QualifyOptions(), progress=progress)
    finally:
        holder["lock"].execute("ROLLBACK")
        holder["lock"].close()
    assert outcome.stored == 0
    assert [failure.path for failure in outcome.failures] == [str(path) for path in paths]
    for failure, path in zip(outcome.failures, paths, strict=True):
        assert str(path) in failure.error and "locked" in failure.error
    again = qualify_paths(VLKB(workspace), paths, QualifyOptions())
    assert again.stored == 3 and not again.failures
