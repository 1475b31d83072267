"""Geometry of the score chart: a number line with the threshold, the review band and the score.

Only positions and tick labels are computed here; the SVG markup lives in the template,
so this module holds no HTML and the template holds no arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WIDTH = 420
HEIGHT = 78
PAD = 24  # room at both ends for the outermost tick labels
AXIS_Y = 44


@dataclass(frozen=True)
class Tick:
    """A labelled mark on the axis."""

    x: float
    label: str


@dataclass(frozen=True)
class ScoreChart:
    """Where everything sits on the number line, in SVG user units."""

    width: int
    height: int
    axis_y: int
    left: float
    right: float
    threshold_x: float
    band_left: float
    band_right: float
    score: float
    score_x: float
    score_anchor: str  # text-anchor of the score label, kept inside the drawing
    ticks: tuple[Tick, ...]
    description: str

    @property
    def has_band(self) -> bool:
        """A band narrower than a pixel is not drawn, so a zero margin leaves no sliver."""
        return self.band_right - self.band_left > 0.5


def score_chart(score: float, threshold: float, margin: float | None) -> ScoreChart:
    """Centre the axis on the threshold, wide enough to show the score and the band."""
    margin = abs(margin or 0.0)
    half, step = _half_width(max(abs(score - threshold), margin))
    low, high = threshold - half, threshold + half
    left, right = float(PAD), float(WIDTH - PAD)

    def x(value: float) -> float:
        """Axis value to SVG x."""
        return round(left + (value - low) / (high - low) * (right - left), 2)

    decimals = max(0, -math.floor(math.log10(step)))
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    ticks = tuple(
        Tick(x(k * step), f"{k * step + 0.0:.{decimals}f}") for k in range(first, last + 1)
    )
    description = (
        f"Fused score {score:+.2f} against threshold {threshold:+.2f} with review band ±{margin:g}"
    )
    return ScoreChart(
        width=WIDTH,
        height=HEIGHT,
        axis_y=AXIS_Y,
        left=left,
        right=right,
        threshold_x=x(threshold),
        band_left=x(threshold - margin),
        band_right=x(threshold + margin),
        score=score,
        score_x=x(score),
        score_anchor=_anchor(x(score)),
        ticks=ticks,
        description=description,
    )


def _anchor(position: float) -> str:
    """Anchor the score label so it never runs off either end of the drawing."""
    if position < 70:
        return "start"
    if position > WIDTH - 70:
        return "end"
    return "middle"


def _half_width(reach: float) -> tuple[float, float]:
    """Half the axis span and its tick step: a round step, the reach plus a quarter of room."""
    wanted = max(reach * 1.25, 0.5)
    raw_step = wanted / 2
    exponent = math.floor(math.log10(raw_step))
    step = next(m * 10.0**exponent for m in (1, 2, 5, 10) if m * 10.0**exponent >= raw_step - 1e-12)
    return math.ceil(wanted / step - 1e-9) * step, step
