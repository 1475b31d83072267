"""The evaluation page: metrics tables, a confusion matrix and a score histogram per assessment,
and the samples a person should look at.

Plots are PNG files written beside evaluation.html (matplotlib, no display needed) and embedded
in the page too, so the page alone is the whole evaluation, like a qualification report.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never open a window, never need a display

import matplotlib.pyplot as plt  # noqa: E402

from reports.render import environment, write_report  # noqa: E402

AXIS = {"accept": 0, "reject": 1}  # confusion-matrix row and column of each label

ACCEPT_COLOUR, REJECT_COLOUR = "#2e7d32", "#c62828"


def write_evaluation(evaluation: Mapping[str, Any], folder: Path) -> Path:
    """evaluation.html plus its PNG plots in folder; returns the page's path."""
    folder.mkdir(parents=True, exist_ok=True)
    plots: dict[str, dict[str, str]] = {}
    decisions = evaluation.get("decisions") or {}
    for key, blocks in evaluation["assessments"].items():
        plots[key] = {}
        final = blocks.get("final")
        if final:
            name = f"{_slug(key)}-confusion.png"
            confusion_plot(final["confusion"], f"{key}: final verdicts", folder / name)
            plots[key]["confusion"] = _inline(folder / name)
        if blocks.get("hybrid", {}).get("auroc") is not None:
            mode = "hybrid"
            name = f"{_slug(key)}-scores.png"
            score_plot(evaluation["samples"], key, mode, folder / name, decisions.get(key))
            plots[key]["scores"] = _inline(folder / name)
    html = environment().get_template("evaluation.html.j2").render(
        evaluation=evaluation, plots=plots, to_look_at=to_look_at(evaluation)
    )
    return write_report(folder / "evaluation.html", html)


def confusion_plot(confusion: Mapping[str, int], title: str, path: Path) -> None:
    """Rows: expert label; columns: verdict (reviews and skipped samples are not counted)."""
    cells = [[confusion["tp"], confusion["fn"]], [confusion["fp"], confusion["tn"]]]
    figure, axes = plt.subplots(figsize=(3.2, 2.8), dpi=100)
    axes.imshow(cells, cmap="Blues")
    for row in range(2):
        for column in range(2):
            axes.text(column, row, str(cells[row][column]), ha="center", va="center",
                      fontsize=13, color="black")
    axes.set_xticks(list(AXIS.values()), list(AXIS))
    axes.set_yticks(list(AXIS.values()), list(AXIS))
    axes.set_xlabel("verdict")
    axes.set_ylabel("expert label")
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def to_look_at(evaluation: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per assessment, the samples whose final verdict disagrees with the label or is review."""
    found: dict[str, list[dict[str, Any]]] = {}
    for key in evaluation["assessments"]:
        rows = []
        for sample in evaluation["samples"]:
            verdict = sample["verdicts"].get(key, {}).get("final", {}).get("verdict")
            label = sample["labels"].get(key)
            if verdict == "review" or (verdict in AXIS and verdict != label):
                rows.append({"image": sample["image"], "label": label, "verdict": verdict,
                             "id": sample.get("qualification_id")})
        found[key] = rows
    return found


def _inline(path: Path) -> str:
    """A written PNG as a data: URI, so the page needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def score_plot(
    samples: list[Mapping[str, Any]], key: str, mode: str, path: Path,
    decision: Mapping[str, Any] | None = None,
) -> None:
    """Histogram of the continuous score, split by expert label, with the threshold and the
    review band the verdicts were given against."""
    by_label: dict[str, list[float]] = {label: [] for label in AXIS}
    for sample in samples:
        verdict = sample["verdicts"].get(key, {}).get(mode, {})
        if verdict.get("score") is not None:
            by_label[sample["labels"][key]].append(verdict["score"])
    figure, axes = plt.subplots(figsize=(4.2, 2.8), dpi=100)
    for label, colour in (("accept", ACCEPT_COLOUR), ("reject", REJECT_COLOUR)):
        if by_label[label]:
            axes.hist(by_label[label], bins=20, alpha=0.6, color=colour,
                      label=f"labelled {label}")
    threshold = (decision or {}).get("threshold")
    if threshold is not None:
        margin = (decision or {}).get("review_margin") or 0.0
        if margin > 0:
            axes.axvspan(threshold - margin, threshold + margin, color="#999999", alpha=0.25,
                         label="review band")
        axes.axvline(threshold, color="black", linewidth=1, label="threshold")
    axes.set_xlabel(f"{mode} score")
    axes.set_ylabel("images")
    axes.set_title(f"{key}: {mode} score by expert label", fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in key)
