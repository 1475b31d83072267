"""`kb measure`: metrology quantities of colour-segmented micrographs, file by file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.metrology.quantities import NotASegmentationMap, measure_image
from engine.results import SampleFailure
from engine.samples import load_sample
from kb.config import Workspace
from kb.errors import VLKBError


@dataclass(frozen=True)
class MeasuredSample:
    path: str
    sha256: str
    um_per_px: float
    quantities: dict[str, float]
    unmeasurable: dict[str, str]
    notes: dict[str, str]  # quantities measured on a stand-in, and what stood in

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "um_per_px": self.um_per_px,
            "quantities": self.quantities,
            "unmeasurable": self.unmeasurable,
            "notes": self.notes,
        }


def measure_paths(
    workspace: Workspace, paths: Sequence[Path], um_per_px: float | None = None
) -> tuple[list[MeasuredSample], list[SampleFailure]]:
    """Measure each file with the workspace legend; a bad file fails alone."""
    scale = workspace.config.pixel_size(um_per_px)
    measured, failures = [], []
    for path in paths:
        try:
            sample = load_sample(Path(path))
            m = measure_image(sample.image, workspace.config.legend, scale)
        except NotASegmentationMap as exc:
            failures.append(SampleFailure(str(path), f"{path}: {exc}"))
            continue
        except VLKBError as exc:
            failures.append(SampleFailure(str(path), str(exc)))
            continue
        measured.append(
            MeasuredSample(
                str(path), sample.sha256, scale, dict(m.quantities), dict(m.unmeasurable),
                dict(m.notes),
            )
        )
    return measured, failures
