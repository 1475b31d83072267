"""The one way tests run the `kb` command in-process: typer's CliRunner on the real app."""

from __future__ import annotations

from collections.abc import Mapping

from typer.testing import CliRunner

from cli.app import app

runner = CliRunner()


def kb(*args: object, env: Mapping[str, str | None] | None = None) -> tuple[int, str, str]:
    """Run `kb ARGS...`; (exit status, stdout, stderr). Arguments may be paths or numbers."""
    result = runner.invoke(app, [str(a) for a in args], env=env)
    return result.exit_code, result.stdout, result.stderr
