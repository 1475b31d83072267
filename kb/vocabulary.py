"""The words every layer shares: verdicts, how the strictest one is found, fusions, comparisons.

Each list is defined here once and imported everywhere else, so a new verdict or operator is one
edit. Verdicts are a StrEnum: they compare equal to the plain strings stored in the audit log
and written in the JSON documents, which therefore never change.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from enum import StrEnum


class Verdict(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    REVIEW = "review"
    NOT_ASSESSED = "not_assessed"  # nothing could be judged: a person decides


VERDICTS: tuple[str, ...] = tuple(v.value for v in Verdict)


class ExpertVerdict(StrEnum):
    """What an expert records on a node: it passes or it fails (review is the machine's word)."""

    ACCEPT = "accept"
    REJECT = "reject"


DECISIVE: tuple[str, ...] = tuple(v.value for v in ExpertVerdict)
"""The pair an expert gives, a label names and a metric counts: a part is good or it is not."""

STRICTEST_FIRST: tuple[str, ...] = (Verdict.REJECT.value, Verdict.REVIEW.value,
                                    Verdict.ACCEPT.value)


def strictest(verdicts: Iterable[str]) -> str:
    """The strictest of judged verdicts (reject, then review, then accept); not assessed when
    there are none. A not-assessed entry is ignored: it adds no evidence either way."""
    judged = [v for v in verdicts if v in STRICTEST_FIRST]
    if not judged:
        return Verdict.NOT_ASSESSED.value
    return min(judged, key=STRICTEST_FIRST.index)


NORMALIZATIONS: tuple[str, ...] = ("batch", "calibrated")
"""Where z-score statistics come from: the run's own images, or references and calibrations."""

PURPOSES: tuple[str, ...] = ("qualification", "evaluation")
"""Why a record was made: to judge a part, or to measure VLKB against expert labels
(`kb evaluate`); history can show one or the other."""

EXECUTORS: tuple[str, ...] = ("in-process", "ray")
"""Where `kb qualify` embeds and judges: in its own process, or on the workers of a Ray cluster
(the driver still stores every record, so the audit chain has one writer)."""

FUSIONS: tuple[str, ...] = ("zsum", "weighted")
"""How per-role z-scores become one score: their sum (the article) or their weighted mean."""

COMBINATIONS: tuple[str, ...] = ("strictest", "measurement-led")
"""How an assessment combines its kinds of evidence: every kind must accept (the strictest
verdict wins), or its measurement rules decide and vision-language evidence that contradicts
them only sends it to review when it is confident and applicable."""

DECIDERS: tuple[str, ...] = ("measurement", "vision-language", "strictest", "disagreement")
"""What decided an assessment: its measurement rules alone, its vision-language evidence alone,
the strictest of both kinds, or (measurement-led) confident, applicable vision-language evidence
contradicting the measurements, which sends it to review."""

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}
"""The operators a measurement rule may use, as `value OP limit`."""

COMPARISON_WORDS: dict[str, str] = {"<=": "at most", "<": "below", ">=": "at least", ">": "above"}


def meets(value: float, op: str, limit: float) -> bool:
    """Whether a value satisfies `value op limit`, e.g. 0.018 <= 0.02."""
    return bool(COMPARISONS[op](value, limit))
