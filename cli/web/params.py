"""Request parsing for `kb serve`: query strings and JSON bodies translated into the
engine's option objects, as `kb qualify` and `kb feedback` take them on the command line.

Translation only: `QualifyOptions` and `DecisionOverride` check every value when they are
built, so a bad threshold is refused with the same sentence here as in the CLI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query
from pydantic import BaseModel, Field

from engine.qualify import DecisionOverride, QualifyOptions, role_weights
from kb.audit import is_blank
from kb.errors import NotFoundError, VLKBError
from kb.vocabulary import ExpertVerdict

MAX_ID = 2**63 - 1  # SQLite's largest integer; a bigger ID cannot exist


@dataclass(frozen=True)
class QualifyParams:
    """The query options of a qualify request, as `kb qualify` takes them on its command line."""

    normalize: str
    um_per_px: float | None
    fusion: str | None
    weight: list[str]
    weights: str | None
    threshold: float | None
    review_margin: float | None
    operator: str | None
    report: bool

    def options(self, person: str | None = None) -> QualifyOptions:
        """The request as QualifyOptions (which check every value) and a DecisionOverride.

        The operator is the request's `operator` when given, else the signed-in person
        (person), else the OS user, and the stored record says which.
        """
        weights = parse_weights(self.weight, self.weights)
        decision = DecisionOverride.of_run(
            self.fusion or None, weights, self.threshold, self.review_margin
        )
        operator, source = (self.operator, "request")
        if is_blank(operator):
            operator, source = (person, "signed-in") if person else (None, "request")
        return QualifyOptions(
            normalize=self.normalize,
            um_per_px=self.um_per_px,
            operator=operator,
            operator_source=source,
            report=self.report,
            decision=decision,
        )


def parse_weights(pairs: list[str], as_json: str | None) -> dict[str, float]:
    """Role weights from repeated `weight=ROLE=NUMBER` and/or `weights={"ROLE": NUMBER}`."""
    parsed: dict[str, float] = {}
    if as_json:
        try:
            document = json.loads(as_json)
            if not isinstance(document, dict):
                raise ValueError
            parsed.update({str(k): float(v) for k, v in document.items()})
        except (ValueError, TypeError):
            raise VLKBError('weights: write a JSON object such as {"image": 2}') from None
    parsed.update(role_weights(pairs))
    return parsed


def qualify_params(
    normalize: Annotated[
        str, Query(description="z-score statistics: calibrated (default) or batch.")
    ] = "calibrated",
    um_per_px: Annotated[
        float | None, Query(description="Pixel size for this request (µm per pixel).")
    ] = None,
    fusion: Annotated[
        str | None, Query(description="This request only: zsum or weighted (rules unchanged).")
    ] = None,
    weight: Annotated[
        list[str] | None, Query(description="This request only: ROLE=NUMBER, repeatable.")
    ] = None,
    weights: Annotated[
        str | None, Query(description='This request only: JSON map, e.g. {"image": 2}.')
    ] = None,
    threshold: Annotated[
        float | None, Query(description="This request only: fused-score threshold.")
    ] = None,
    review_margin: Annotated[
        float | None, Query(description="This request only: review band around the threshold.")
    ] = None,
    operator: Annotated[
        str | None,
        Query(description="Who runs this, as recorded (default: the signed-in person, else "
              "the OS user, recorded as such)."),
    ] = None,
    report: Annotated[
        bool, Query(description="Also write each report to the workspace's output folder.")
    ] = False,
) -> QualifyParams:
    """The query of POST /api/qualify (and of the page's own POST /qualify)."""
    return QualifyParams(
        normalize, um_per_px, fusion, weight or [], weights, threshold, review_margin, operator,
        report,
    )


QualifyQuery = Annotated[QualifyParams, Depends(qualify_params)]


class FeedbackIn(BaseModel):
    """An expert's verdict on one node of a stored qualification (as `kb feedback`)."""

    node: str = Field(description="Node key, e.g. EA-5 or the root gate.")
    verdict: ExpertVerdict
    comment: str = Field(description="Why, in the expert's words.")
    expert: str | None = Field(default=None, description="Who says so (required: a name).")


def check_id(qualification_id: int) -> int:
    """An ID the router already parsed as digits; one beyond SQLite's range cannot exist."""
    if qualification_id > MAX_ID:
        raise NotFoundError(f"no qualification with ID {qualification_id}")
    return qualification_id
