"""How `kb --help` names arguments: by the metavar a person reads (IMAGE..., DIR, KEY), never by
the Python type behind it (typer appends `<list[str]>` or `<path>` to every argument)."""

from __future__ import annotations

from typing import Any

import typer.core


class NamedArgument(typer.core.TyperArgument):
    """An argument shown by its metavar alone."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None if self.metavar is not None else super().display_type_rich(ctx)


class KbGroup(typer.core.TyperGroup):
    """The `kb` command group: every command's named arguments show their metavar only."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for command in self.commands.values():
            for param in command.params:
                if type(param) is typer.core.TyperArgument and param.metavar is not None:
                    param.__class__ = NamedArgument  # same fields: only the help text changes
