"""Output that grows while a long run goes on: a JSON array written item by item, and a
progress bar on stderr that never touches stdout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)


class JsonArray:
    """`{"name": [item, item, ...], extra...}` written as items arrive, valid JSON at the end.

    Memory stays flat however many items there are; a reader that parses the whole output
    gets one document, as with --json everywhere else.
    """

    def __init__(self, stream: TextIO, name: str) -> None:
        self.stream = stream
        self.name = name
        self.count = 0
        self.started = False  # nothing is written before the first item or the close

    def _start(self) -> None:
        if not self.started:
            self.stream.write("{\n  " + json.dumps(self.name) + ": [")
            self.started = True

    def add(self, item: Any) -> None:
        self._start()
        text = json.dumps(item, indent=2, ensure_ascii=False).replace("\n", "\n    ")
        self.stream.write(("," if self.count else "") + "\n    " + text)
        self.stream.flush()
        self.count += 1

    def close(self, extra: dict[str, Any]) -> None:
        self._start()
        self.stream.write("\n  ]" if self.count else "]")
        for key, value in extra.items():
            text = json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n  ")
            self.stream.write(f",\n  {json.dumps(key)}: {text}")
        self.stream.write("\n}\n")
        self.stream.flush()


@contextmanager
def progress_bar(console: Console, total: int) -> Iterator[Any]:
    """A callback (stage, done, total) drawing a bar with rate and time left on console."""
    columns = (
        TextColumn("{task.description:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True,
                  disable=total < 2 or not console.is_terminal) as bar:
        task = bar.add_task("judging", total=total, rate="")

        def update(stage: str, done: int, stage_total: int) -> None:
            elapsed = bar.tasks[task].elapsed or 0.0
            rate = f"{done / elapsed:.1f} img/s" if elapsed > 0 else ""
            bar.update(task, description=stage, completed=done, total=stage_total, rate=rate)

        yield update
