"""Jinja2 filters that turn the engine's raw numbers and strings into what a reader expects.

Every filter accepts a missing value (None, or Jinja's Undefined for a key an older
document lacks) and shows it as an em dash, so a report re-rendered months later from a
stored record never fails on a field that did not exist then.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import PureWindowsPath
from typing import Any

from jinja2 import Undefined

MISSING = "—"

VERDICT_LABELS = {
    "accept": "Accept",
    "reject": "Reject",
    "review": "Review",
    "not_assessed": "Not assessed",
}

# A symbol per verdict, so a black-and-white print still tells them apart at a glance.
VERDICT_SYMBOLS = {"accept": "✓", "reject": "✗", "review": "?", "not_assessed": "–"}

OP_SYMBOLS = {"<=": "≤", "<": "<", ">=": "≥", ">": ">"}

# How the rules spell a unit -> how a person writes it.
UNIT_LABELS = {"um": "µm", "mm2": "mm²", "um2": "µm²", "fraction": "", "count": ""}

_FRACTION_UNITS = {"fraction"}

# A sentence ends at a full stop followed by a space and a capital letter or opening quote;
# decimal points ("0.965") and file names ("pos-2.png”") are never followed by a space.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z“\"])")


def is_missing(value: Any) -> bool:
    """None, an absent key, or NaN: nothing to show."""
    if value is None or isinstance(value, Undefined):
        return True
    return isinstance(value, float) and math.isnan(value)


def shown(value: Any, missing: str = MISSING) -> str:
    """Any value as text, or a stated absence instead of "None"."""
    return missing if is_missing(value) else str(value)


def fixed(value: Any, digits: int = 2) -> str:
    """A number with a fixed count of decimals."""
    if is_missing(value):
        return MISSING
    return f"{float(value):.{digits}f}"


def signed(value: Any, digits: int = 2) -> str:
    """A number with its sign always shown: z-scores and net similarities read as +/- offsets."""
    if is_missing(value):
        return MISSING
    return f"{float(value):+.{digits}f}"


def percent(value: Any, digits: int = 1) -> str:
    """A fraction (0.042) as a percentage (4.2 %)."""
    if is_missing(value):
        return MISSING
    return f"{float(value) * 100:.{digits}f} %"


def unit_label(unit: Any) -> str:
    """The unit as printed after a number; fractions and counts print bare."""
    if is_missing(unit):
        return ""
    return UNIT_LABELS.get(str(unit), str(unit))


def quantity(value: Any, unit: Any) -> str:
    """A measured value in its unit: fractions also as %, counts as integers, else 4 digits."""
    if is_missing(value):
        return MISSING
    number = float(value)
    name = "" if is_missing(unit) else str(unit)
    if name in _FRACTION_UNITS:
        return f"{number:.4g} ({percent(number)})"
    if name == "count":
        return f"{number:.0f}" if number == int(number) else f"{number:g}"
    if name == "%":
        return f"{number:.4g} %"
    return f"{number:.4g} {unit_label(name)}".rstrip()


def headline_quantity(value: Any, unit: Any) -> str:
    """A value as a sentence quotes it: fractions as % only, 3 significant digits."""
    if is_missing(value):
        return MISSING
    if str(unit) in _FRACTION_UNITS:
        return f"{float(value) * 100:.3g} %"
    if str(unit) in ("count", "ratio"):
        return f"{float(value):.3g}" if str(unit) == "ratio" else f"{float(value):.0f}"
    return f"{float(value):.3g} {unit_label(unit)}".rstrip()


def op_symbol(op: Any) -> str:
    """The comparison as a mathematical sign."""
    if is_missing(op):
        return MISSING
    return OP_SYMBOLS.get(str(op), str(op))


def verdict_label(verdict: Any) -> str:
    """The verdict as a word; an unknown one shows as given rather than vanishing."""
    if is_missing(verdict):
        return "Unknown"
    return VERDICT_LABELS.get(str(verdict), str(verdict).replace("_", " ").capitalize())


def verdict_symbol(verdict: Any) -> str:
    """A symbol beside the word, for black-and-white prints."""
    return VERDICT_SYMBOLS.get(str(verdict), "•")


def verdict_class(verdict: Any) -> str:
    """The CSS class of a verdict badge; anything unknown is styled as not assessed."""
    return str(verdict) if str(verdict) in VERDICT_LABELS else "not_assessed"


def utc(stamp: Any) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM:SS UTC'; a time without zone is taken as UTC."""
    moment = parse_time(stamp)
    if moment is None:
        return MISSING if is_missing(stamp) else str(stamp)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_time(stamp: Any) -> datetime | None:
    """The ISO time in UTC, or None when there is none or it is unreadable."""
    if is_missing(stamp):
        return None
    if isinstance(stamp, datetime):
        moment = stamp
    else:
        try:
            moment = datetime.fromisoformat(str(stamp))
        except ValueError:
            return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def short_hash(digest: Any, length: int = 12) -> str:
    """The first characters of a hash, for tables; the full one is in the provenance block."""
    if is_missing(digest):
        return MISSING
    return str(digest)[:length]


def file_name(path: Any) -> str:
    """The last part of a path written on any platform."""
    if is_missing(path):
        return MISSING
    return PureWindowsPath(str(path)).name or str(path)


def sentences(text: Any) -> list[str]:
    """A rationale split into its sentences, so each reads on its own line."""
    if is_missing(text) or not str(text).strip():
        return []
    return [part.strip() for part in _SENTENCE_END.split(str(text).strip()) if part.strip()]


def skip_reason(node: Any) -> str:
    """Why a node was skipped, without the "<name>: not assessed; " lead-in of its rationale."""
    reason = node.get("reason") or node.get("rationale") or ""
    lead_in = f"{node.get('name')}: not assessed; "
    if reason.startswith(lead_in):
        reason = reason[len(lead_in) :]
    return reason.strip() or "no reason recorded"


def gate_rule(node: Any) -> str:
    """How a gate combines its children, in words; empty for a record from before gates said."""
    rule = node.get("rule")
    if is_missing(rule):
        return ""
    if rule == "all":
        return "all children must accept"
    if rule == "any":
        return "one accepting child suffices"
    if rule == "k_of_n":
        k = node.get("k")
        return f"{shown(k, 'k')} accepting children needed"
    if rule == "consensus":
        quorum = node.get("quorum")
        share = "a" if is_missing(quorum) else f"a {float(quorum):.0%}"
        return f"{share} consensus of the children needed"
    return str(rule)


OPERATOR_SOURCES = {
    "cli-option": "--operator",
    "request": "given with the request",
    "signed-in": "signed in",
    "os-user": "OS user, no name given",
}


def operator_source(source: Any) -> str:
    """Where a stored operator name came from, in words; empty for a record from before."""
    if is_missing(source):
        return ""
    return OPERATOR_SOURCES.get(str(source), str(source))


DECIDED_BY = {
    "measurement": "the measurement rules",
    "vision-language": "the vision-language evidence",
    "strictest": "the strictest of the vision-language evidence and the measurements",
    "disagreement": "review: confident, applicable vision-language evidence contradicts "
    "the measurements",
}


def decision_rule(node: Any) -> list[str]:
    """An assessment's stored decision rule as phrases; empty for a record from before."""
    rule = node.get("decision_rule")
    if not isinstance(rule, dict) or node.get("kind") != "assessment":
        return []
    weights = rule.get("weights") or {}
    how = "sum of z-scores" if rule.get("fusion") == "zsum" else "weighted mean of z-scores"
    if rule.get("fusion") == "weighted" and weights:
        how += " (" + ", ".join(f"{r} {float(w):g}" for r, w in weights.items()) + ")"
    band = rule.get("review_band") or []
    phrases = [f"vision-language fusion: {how}"]
    if len(band) == 2:
        source = rule.get("threshold_source")
        phrases.append(
            f"threshold {signed(rule.get('threshold'))}"
            + (f" (from {source})" if source else "")
            + f", review band [{float(band[0]):+g}, {float(band[1]):+g}]"
        )
    for m in rule.get("measurement_rules") or []:
        limits = m.get("review_band") or []
        text = f"{m.get('quantity')} {op_symbol(m.get('op'))} {m.get('limit'):g} {m.get('unit')}"
        if len(limits) == 2 and m.get("uncertainty"):
            text += f", review within [{float(limits[0]):g}, {float(limits[1]):g}]"
        phrases.append(f"measurement rule: {text}")
    combined = rule.get("combined")
    used = f" of {', '.join(combined)}" if combined else ""
    mode = rule.get("combination", "strictest")
    how_combined = f"evidence combined: {mode}{used}"
    if mode == "measurement-led" and not is_missing(rule.get("confidence_margin")):
        how_combined += (
            f" (vision-language evidence overrules the measurements to review only when"
            f" |score - threshold| >= {float(rule['confidence_margin']):g} and applicable)"
        )
    phrases.append(how_combined)
    decided = rule.get("decided_by")
    if not is_missing(decided):
        phrases.append(f"decided by: {DECIDED_BY.get(str(decided), str(decided))}")
    if rule.get("advisory"):
        phrases.append("vision-language evidence disagreed: advisory only")
    for p in rule.get("preconditions") or []:
        phrases.append(f"judged only if {p.get('node')} is {' or '.join(p.get('verdicts', []))}")
    return phrases


FILTERS: dict[str, Callable[..., Any]] = {
    "shown": shown,
    "fixed": fixed,
    "signed": signed,
    "percent": percent,
    "quantity": quantity,
    "unit_label": unit_label,
    "op_symbol": op_symbol,
    "verdict_label": verdict_label,
    "verdict_symbol": verdict_symbol,
    "verdict_class": verdict_class,
    "utc": utc,
    "short_hash": short_hash,
    "file_name": file_name,
    "sentences": sentences,
    "skip_reason": skip_reason,
    "gate_rule": gate_rule,
    "operator_source": operator_source,
    "decision_rule": decision_rule,
}
