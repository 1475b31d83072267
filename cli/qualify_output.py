"""What `kb qualify` prints as results arrive: a verdict table for a person, or one JSON
document for a program (streamed item by item when nothing else must wait for the end).

Each output takes every stored result as it is stored (`add`), is told when the run stops on
an error (`abort`), and writes the rest when the run is over (`finish`). Errors and notes go
to stderr in every mode, so stdout stays the result alone.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich import box
from rich.table import Table
from rich.text import Text

from cli.console import err, out, print_json, verdict_text
from cli.streams import JsonArray


class QualifyOutput(Protocol):
    def add(self, result: Any) -> None: ...

    def abort(self, error: str) -> None: ...

    def finish(self, outcome: Any, failures: Sequence[Any]) -> None: ...


def output_for(json_output: bool, report: bool) -> QualifyOutput:
    """Streamed JSON unless reports are written (their paths are known only at the end)."""
    if not json_output:
        return TableOutput()
    return WholeJson() if report else StreamedJson()


def _extra(outcome: Any, failures: Sequence[Any]) -> dict[str, Any]:
    return {"failures": [f.to_dict() for f in failures], "skipped": outcome.skipped}


class StreamedJson:
    """`{"qualifications": [...], "failures": ..., "skipped": ...}`, each item as it is stored."""

    def __init__(self) -> None:
        self.array = JsonArray(sys.stdout, "qualifications")

    def add(self, result: Any) -> None:
        self.array.add(result.to_dict())

    def abort(self, error: str) -> None:
        if self.array.started:  # keep stdout one valid JSON document
            self.array.close({"error": error})

    def finish(self, outcome: Any, failures: Sequence[Any]) -> None:
        self.array.close(_extra(outcome, failures))


class WholeJson:
    """The whole document at the end, with the report paths and the run index."""

    def add(self, result: Any) -> None:
        pass  # the outcome keeps the results, with their report paths filled in at the end

    def abort(self, error: str) -> None:
        pass  # nothing was written: the error line on stderr is the whole output

    def finish(self, outcome: Any, failures: Sequence[Any]) -> None:
        print_json({
            "qualifications": [r.to_dict() for r in outcome.results],
            **_extra(outcome, failures),
            "index": outcome.index,
            "report_errors": outcome.report_errors,
        })


class TableOutput:
    """One compact row per stored sample, then where the reports went."""

    def __init__(self) -> None:
        self.table = VerdictTable()

    def add(self, result: Any) -> None:
        self.table.add(result)

    def abort(self, error: str) -> None:
        pass

    def finish(self, outcome: Any, failures: Sequence[Any]) -> None:
        self.table.print()
        for r in outcome.results:
            if r.report:
                out.print(f"Report {r.id}: {r.report}", markup=False)
        if outcome.index:
            out.print(f"Run index: {outcome.index}", markup=False)


def print_errors(outcome: Any, failures: Sequence[Any]) -> None:
    """One line per warning, input that failed and report not written, on stderr."""
    for warning in outcome.warnings:
        err.print(f"warning: {warning}", markup=False)
    for failure in failures:
        err.print(f"error: {failure.error}", markup=False)
    for problem in outcome.report_errors:
        err.print(f"error: {problem}", markup=False)


def print_counts(outcome: Any, failures: Sequence[Any]) -> None:
    """How many files were skipped or failed, after the results, on stderr."""
    if outcome.skipped:
        err.print(f"{len(outcome.skipped)} file(s) skipped: already judged under the same "
                  "ruleset, calibration and models.", markup=False)
    if failures:
        err.print(
            f"{len(failures)} input(s) failed; {outcome.stored} qualified and stored.",
            markup=False,
        )


@dataclass
class VerdictTable:
    """The human summary of a qualify run, one compact row per stored sample."""

    title: str = "Qualification"
    keys: list[str] = field(default_factory=list)
    rows: list[tuple[str, str, str, list[str]]] = field(default_factory=list)
    reasons: dict[str, set[str]] = field(default_factory=dict)  # why a column is not assessed

    def add(self, result: Any) -> None:
        assessments = [n for n in result.nodes if n.kind == "assessment"]
        if not self.rows:
            self.keys = [n.key for n in assessments]
            self.title = (
                f"Qualification (ruleset v{result.ruleset_version}, "
                f"{result.normalization} normalisation)"
            )
        verdicts = {n.key: n.verdict for n in assessments}
        for n in assessments:
            if n.verdict == "not_assessed" and n.reason:
                self.reasons.setdefault(n.key, set()).add(n.reason)
        self.rows.append((str(result.id), Path(result.sample_path).name, result.verdict,
                          [verdicts[k] for k in self.keys]))

    def print(self) -> None:
        if not self.rows:
            return
        table = Table(
            title=self.title,
            caption=Text(caption) if (caption := self.caption()) else None,  # not markup
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        table.add_column("ID", justify="right", no_wrap=True)
        table.add_column("sample", overflow="ellipsis", min_width=12)
        for header in ["verdict", *self.keys]:
            table.add_column(header, no_wrap=True)
        for ident, name, verdict, verdicts in self.rows:
            table.add_row(ident, name, verdict_text(verdict), *map(verdict_text, verdicts))
        out.print(table)

    def caption(self) -> str | None:
        """Why each not-assessed column was not assessed, in the engine's words."""
        lines = [f"{key} not assessed: {'; '.join(sorted(reasons))}"
                 for key, reasons in sorted(self.reasons.items())]
        return "\n".join(lines) or None
