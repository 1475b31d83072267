"""The kb command's contracts: workspaces, errors on one line, JSON only on stdout."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.app import app
from tests.cli_runner import kb
from tests.workspaces import REPO


def test_init_then_tree_and_models(tmp_path):
    root = tmp_path / "ws"
    code, out, _ = kb("init", root)
    assert code == 0 and (root / "kb.toml").is_file() and (root / "rules/tree.toml").is_file()
    code, out, _ = kb("tree", "--json", "-w", root)
    assert json.loads(out)["root"] == "qualification"
    code, out, err = kb("models", "--json", "-w", root)
    models = {m["name"]: m for m in json.loads(out)["models"]}
    assert models["efficientnet-lite0"]["roles"] == ["image"] and "clip" not in models


def test_init_with_clip_binds_text_and_says_how_to_get_it(tmp_path):
    root = tmp_path / "ws"
    kb("init", root, "--clip", "openai/clip-vit-base-patch32")
    code, out, err = kb("models", "--json", "-w", root)
    models = {m["name"]: m for m in json.loads(out)["models"]}
    assert models["clip"]["roles"] == ["text"] and models["clip"]["offline"] is False
    assert "hf download openai/clip-vit-base-patch32" in models["clip"]["detail"]
    assert models["efficientnet-lite0"]["roles"] == ["image"]


def test_init_refuses_an_existing_workspace(tmp_path):
    kb("init", tmp_path / "ws")
    code, _, err = kb("init", tmp_path / "ws")
    assert code == 1 and "already has a kb.toml" in err


def test_workspace_from_environment(tmp_path):
    kb("init", tmp_path / "ws")
    code, out, _ = kb("tree", "--json", env={"KB_WORKSPACE": str(tmp_path / "ws")})
    assert code == 0 and json.loads(out)["root"] == "qualification"


def test_not_a_workspace(tmp_path):
    code, out, err = kb("sync", "-w", tmp_path)
    assert code == 1 and out == ""
    assert "is not a VLKB workspace" in err and "kb init" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("append", "message"),
    [
        ('\n[output]\nfolder = "x"\n', "[output] has unknown key(s) ['folder']"),
        ('\n[roles]\ntexture = "clip"\n', "unknown role"),
        ("\n[metrology]\num_per_px = -2\n", "must be a positive number"),
    ],
)
def test_bad_kb_toml(tmp_path, append, message):
    kb("init", tmp_path / "ws")
    config = tmp_path / "ws/kb.toml"
    text = config.read_text()
    for section in ("[output]", "[roles]", "[metrology]"):
        if section in append:  # replace the section rather than repeat it
            start = text.index(section)
            end = text.find("\n[", start + 1)
            text = text[:start] + text[end + 1 if end != -1 else len(text) :]
    config.write_text(text + append)
    code, _, err = kb("tree", "-w", tmp_path / "ws")
    assert code == 1 and message in err


def test_unloadable_model_is_a_clear_error_and_sync_writes_nothing(tmp_path):
    from tests.workspaces import write_carbide_assessment

    root = tmp_path / "ws"
    kb("init", root, "--clip", tmp_path / "no-such-model")
    from kb.config import Workspace

    write_carbide_assessment(Workspace.open(root))
    code, out, err = kb("sync", "-w", root)
    assert code == 1
    assert "clip" in err and str(tmp_path / "no-such-model") in err
    assert err.count("\n") == 1
    import sqlite3

    with sqlite3.connect(root / "kb.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM ruleset_version").fetchone()[0] == 0


def test_add_reference_rejects_bad_images_and_leaves_rules_untouched(
    tmp_path, tiny_clip_dir, tiny_flava_dir
):
    root = tmp_path / "ws"
    kb("init", root, "--clip", tiny_clip_dir, "--flava", tiny_flava_dir)
    kb(
        "add-assessment",
        "EA-9",
        "--name",
        "n",
        "--criterion",
        "c",
        "--positive",
        "good",
        "--negative",
        "bad",
        "-w",
        root,
    )
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    code, _, err = kb("add-reference", "EA-9", bad, "--positive", "-w", root)
    assert code == 1 and "not a readable image" in err
    assert not (root / "rules/references/EA-9/positive/bad.png").exists()
    code, _, err = kb("add-reference", "EA-9", bad, "-w", root)
    assert code == 1 and "--positive or --negative" in err
    code, _, err = kb("add-reference", "EA-404", bad, "--positive", "-w", root)
    assert code == 1 and "no assessment 'EA-404'" in err


def test_add_assessment_failure_leaves_no_file(tmp_path):
    root = tmp_path / "ws"
    kb("init", root)
    code, _, err = kb(
        "add-assessment",
        "EA-1",
        "--name",
        "n",
        "--criterion",
        "c",
        "--positive",
        "p",
        "--negative",
        "n",
        "--parent",
        "geometry",
        "-w",
        root,
    )
    assert code == 1 and "not a gate" in err
    assert not (root / "rules/assessments/EA-1.toml").exists()
    code, _, err = kb(
        "add-assessment",
        "../evil",
        "--name",
        "n",
        "--criterion",
        "c",
        "--positive",
        "p",
        "--negative",
        "n",
        "-w",
        root,
    )
    assert code == 1 and "invalid key" in err


def test_console_script_is_installed(tmp_path):
    kb_script = Path(sys.executable).parent / "kb"
    done = subprocess.run([str(kb_script), "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "qualify" in done.stdout


def test_kb_tree_wraps_long_prompts_at_word_breaks_and_never_cuts_them():
    import re
    import tomllib

    code, out, err = kb("tree", "-w", REPO)
    assert code == 0, err
    lines = (re.sub(r"^[\s│├└─]*", "", line) for line in out.splitlines())
    flowing = " ".join(" ".join(lines).split())
    prompts = tomllib.loads((REPO / "rules/assessments/EA-1.toml").read_text())["prompts"]
    longest = max(prompts["positive"] + prompts["negative"], key=len)
    assert len(longest) > 80  # wider than the console: it must wrap
    assert longest in flowing


def test_kb_version_and_a_workspace_given_before_the_command(tmp_path):
    from cli.app import after_the_command

    assert after_the_command(["-w", "ws", "qualify", "a.png"]) == ["qualify", "-w", "ws", "a.png"]
    assert after_the_command(["-w", "ws", "audit", "head"]) == ["audit", "head", "-w", "ws"]
    assert after_the_command(["qualify", "-w", "ws"]) == ["qualify", "-w", "ws"]
    run = [sys.executable, "-c", "from cli.app import main; main()"]
    done = subprocess.run([*run, "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("kb (VLKB) ")
    done = subprocess.run([*run, "-w", str(REPO), "tree", "--json"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["root"]


def test_add_assessment_writes_measurement_rules_from_one_line_each(tmp_path):
    import tomllib

    from tests.workspaces import new_workspace

    ws = new_workspace(tmp_path / "ws")  # no model bound: measurements alone
    code, out, err = kb("add-assessment", "EA-4", "--name", "Porosity", "--criterion",
                        "At most 2 % pores", "--measurement",
                        "porosity_fraction <= 0.02 +- 0.002", "--measurement",
                        "max_pore_diameter_um<150", "-w", ws.root)
    assert code == 0, err
    rules = tomllib.loads((ws.rules_dir / "assessments/EA-4.toml").read_text())
    assert rules["measurements"] == [
        {"quantity": "porosity_fraction", "op": "<=", "limit": 0.02, "unit": "fraction",
         "uncertainty": 0.002},
        {"quantity": "max_pore_diameter_um", "op": "<", "limit": 150.0, "unit": "um"},
    ]
    assert "prompts" not in rules


@pytest.mark.parametrize("rule", ["porosity <= 0.02", "porosity_fraction ~ 0.02",
                                  "porosity_fraction <= 0.02 +- -1"])
def test_a_measurement_rule_that_does_not_parse_is_one_line_and_no_file(tmp_path, rule):
    from tests.workspaces import new_workspace

    ws = new_workspace(tmp_path / "ws")
    code, out, err = kb("add-assessment", "EA-4", "--name", "P", "--criterion", "c",
                        "--measurement", rule, "-w", ws.root)
    assert code == 1 and out == "" and err.count("\n") == 1 and "--measurement" in err
    assert not (ws.rules_dir / "assessments/EA-4.toml").exists()


def test_add_assessment_keeps_the_rule_file_when_only_a_model_cannot_load(tmp_path):
    root = tmp_path / "ws"
    code, _, err = kb("init", root, "--clip", tmp_path / "no-such-model")
    assert code == 0, err
    code, out, err = kb("add-assessment", "EA-7", "--name", "n", "--criterion", "c",
                        "--positive", "a dense bead", "--negative", "a porous bead", "-w", root)
    assert code == 1 and err.count("\n") == 1
    assert "rules/assessments/EA-7.toml written and kept, but not synced" in err
    assert "run `kb sync`" in err
    assert (root / "rules/assessments/EA-7.toml").is_file()


def test_kb_models_gives_download_advice_only_for_models_a_role_uses(tmp_path):
    root = tmp_path / "ws"
    code, _, err = kb("init", root, "--clip", tmp_path / "no-clip")  # text bound, not here
    assert code == 0, err
    config = root / "kb.toml"
    config.write_text(config.read_text() + '\n[models.spare]\nbackend = "flava"\n'
                      f'source = "{tmp_path / "no-flava"}"\n')
    code, _, err = kb("models", "-w", root)
    assert code == 0
    assert f"note: clip: directory {tmp_path / 'no-clip'} does not exist" in err
    assert "no-flava" not in err  # bound to no role: no advice, one short line
    assert "spare: not on this machine and bound to no role" in err


def test_kb_init_says_which_roles_will_work_offline(tmp_path):
    root = tmp_path / "ws"
    code, out, err = kb("init", root, "--clip", tmp_path / "no-clip")
    assert code == 0, err
    assert "image: efficientnet-lite0 (loads offline)" in out
    assert f"text: clip (will not load here: directory {tmp_path / 'no-clip'} does not exist" in out
    code, out, err = kb("init", tmp_path / "other", "--json")
    roles = {r["role"]: r for r in json.loads(out)["roles"]}
    assert roles["image"]["offline"] is True and "text" not in roles


def _every_command() -> list[list[str]]:
    """The argument path of each `kb` command and subcommand, as a person types it."""
    import typer.main

    found: list[list[str]] = []

    def walk(group: object, path: list[str]) -> None:
        for name, command in getattr(group, "commands", {}).items():
            if getattr(command, "commands", None):
                walk(command, [*path, name])
            else:
                found.append([*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_every_command_help_shows_an_example_and_no_python_type_names():
    import re

    commands = _every_command()
    assert ["qualify"] in commands and ["audit", "verify"] in commands
    for path in commands:
        code, out, err = kb(*path, "--help", env={"COLUMNS": "120"})
        assert code == 0, (path, err)
        assert "Example" in out, f"kb {' '.join(path)} --help has no example"
        types = re.findall(r"<(?:str|int|float|path|bool|list\[[a-z]+\])>", out)
        assert not types, f"kb {' '.join(path)} --help shows {types}"
