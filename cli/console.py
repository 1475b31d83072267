"""Where the `kb` command writes: results on stdout, everything else on stderr, verdicts in
colour for a person and plain JSON for a program."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

VERDICT_STYLE = {"accept": "green", "reject": "red", "review": "yellow", "not_assessed": "dim"}


def print_json(document: Any) -> None:
    """One JSON document on stdout, as every --json prints it."""
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def verdict_text(verdict: str) -> str:
    shown = verdict.replace("_", " ")
    return f"[{VERDICT_STYLE.get(verdict, '')}]{shown}[/]"
