"""The shape of the house: which package may import which, checked on the real import graph."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ("engine.qualify", "engine.sync", "engine.calibrate", "engine.evaluation.folder",
           "engine.metrology.measure", "engine.encoders.catalog", "cli.app", "cli.web")


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports at any level (top, functions, type-checking)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_qualification_runtime_never_loads_training_code():
    code = (
        "import importlib, sys\n"
        f"for name in {RUNTIME!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('engine.training')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_only_the_ray_executor_imports_ray_and_the_default_run_never_loads_it(example):
    for folder in ("kb", "engine", "cli", "reports"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "engine" / "ray_executor.py":
                continue
            bad = {m for m in imported_modules(path) if m.split(".")[0] == "ray"}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
    code = (
        "import sys\n"
        "from cli.app import main\n"
        f"try: main(['qualify', {str(ROOT / 'examples' / 'porous-bead.png')!r}, "
        f"'-w', {str(example.root)!r}, '--json'])\n"
        "except SystemExit as done: assert done.code in (0, None), done.code\n"
        "print('ray loaded' if 'ray' in sys.modules else 'no ray', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "no ray"
    assert '"verdict"' in done.stdout


def test_the_knowledge_base_imports_neither_engine_nor_torch():
    for path in sorted((ROOT / "kb").rglob("*.py")):
        bad = {m for m in imported_modules(path)
               if m.split(".")[0] in {"engine", "cli", "reports", "torch", "transformers"}}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_engine_never_imports_the_cli():
    for path in sorted((ROOT / "engine").rglob("*.py")):
        bad = {m for m in imported_modules(path) if m.split(".")[0] == "cli"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_only_the_cli_command_for_training_reaches_into_the_training_package():
    for path in sorted((ROOT / "engine").rglob("*.py")):
        if "training" in path.relative_to(ROOT).parts:
            continue
        bad = {m for m in imported_modules(path) if m.startswith("engine.training")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


WORD_LISTS = {
    "verdicts": {"accept", "reject", "review", "not_assessed"},
    "fusions": {"zsum", "weighted"},
    "normalizations": {"batch", "calibrated"},
    "comparisons": {"<=", "<", ">=", ">"},
    "combinations": {"strictest", "measurement-led"},
    "deciders": {"measurement", "vision-language", "disagreement"},
    "executors": {"in-process", "ray"},
}


def vocabulary_literals(path: Path) -> list[tuple[int, str, str]]:
    """(line, kind, shape) of each literal that spells out two or more words of one list."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            items, shape = node.elts, "list"
        elif isinstance(node, ast.Dict):
            items, shape = [k for k in node.keys if k is not None], "table"
        else:
            continue
        words = {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}
        for kind, vocabulary in WORD_LISTS.items():
            if len(words & vocabulary) >= 2:
                found.append((node.lineno, kind, shape))
    return found


def test_each_vocabulary_list_is_defined_once_in_kb_vocabulary():
    """Elsewhere words may key a translation table (labels, colours, sentences per verdict),
    but a tuple, list or set of them is a second definition of the vocabulary."""
    offenders = []
    for package in ("kb", "engine", "cli", "reports"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "kb" / "vocabulary.py":
                continue
            offenders += [f"{path.relative_to(ROOT)}:{line} {kind} as a {shape}"
                          for line, kind, shape in vocabulary_literals(path) if shape == "list"]
    assert not offenders, offenders


QUERY_CALLS = {"exec", "execute", "scalar", "scalars", "query", "get", "add", "add_all", "delete",
               "merge"}


def query_building(path: Path) -> list[str]:
    """What in a source file builds or runs a query: SQL constructors imported from SQLAlchemy
    or SQLModel (a Session as a type hint is fine), or a session's query methods called."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in {
            "sqlalchemy", "sqlmodel"
        }:
            found += [f"imports {a.name}" for a in node.names if a.name != "Session"]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "session"
              and node.func.attr in QUERY_CALLS):
            found.append(f"line {node.lineno}: session.{node.func.attr}()")
    return found


def test_no_module_outside_the_knowledge_base_builds_a_query():
    offenders = {
        str(path.relative_to(ROOT)): found
        for package in ("engine", "cli", "reports")
        for path in sorted((ROOT / package).rglob("*.py"))
        if (found := query_building(path))
    }
    assert not offenders, offenders
