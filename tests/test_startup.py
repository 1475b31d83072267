"""What each command imports, in a fresh process on a copy of the example workspace with the
shipped model bound: a command that needs no model imports neither torch nor transformers, and
`kb qualify` with VLKB's own dual encoder (prompts already cached by `kb sync`) imports torch
but not transformers. The seconds these save are measured by bench/startup.py, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kb.config import Workspace
from tests.workspaces import shipped_copy

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers")
# Runs `kb ARGS` in this process, then prints which heavy packages it imported.
PROBE = (
    "import json, sys\n"
    "from cli.app import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "except SystemExit as exc:\n"
    "    status = exc.code or 0\n"
    "else:\n"
    "    status = 0\n"
    f"print('IMPORTED', status, json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The example with its roles bound to the shipped model, synced (prompts cached)."""
    return shipped_copy(tmp_path_factory.mktemp("startup"))


def imported(workspace: Workspace, *args: str) -> list[str]:
    """The heavy packages `kb -w WORKSPACE ARGS` imported; the command must succeed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "-w", str(workspace.root), *args],
        capture_output=True, text=True, cwd=ROOT, env=env, check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("IMPORTED ")]
    assert lines, done.stdout + done.stderr
    _, status, packages = lines[-1].split(" ", 2)
    assert status == "0", done.stdout + done.stderr
    return json.loads(packages)


@pytest.mark.parametrize(
    "command",
    [("history",), ("tree",), ("audit", "verify"), ("sync",), ("models",)],
    ids=lambda c: " ".join(c),
)
def test_commands_that_need_no_model_import_neither_torch_nor_transformers(
    shipped: Workspace, command: tuple[str, ...]
) -> None:
    assert imported(shipped, *command) == []


def test_qualifying_with_the_shipped_model_imports_torch_but_not_transformers(
    shipped: Workspace,
) -> None:
    sample = ROOT / "examples" / "porous-bead.png"
    assert imported(shipped, "qualify", str(sample)) == ["torch"]


def test_showing_and_reporting_a_stored_qualification_need_no_model(shipped: Workspace) -> None:
    sample = ROOT / "examples" / "sound-bead-a.png"
    assert imported(shipped, "qualify", str(sample)) == ["torch"]
    assert imported(shipped, "show", "1") == []
    assert imported(shipped, "report", "1") == []
