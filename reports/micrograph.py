"""The micrograph shown large, with switchable layers over it: what metrology measured (the
record's `overlay`) and, per assessment with local evidence, its anomaly map and regions.

Everything drawn comes from the stored record; nothing is measured here. The layers are SVG
over the inline picture, switched by checkboxes and zoomed by radio buttons through CSS
alone, so the report stays one self-contained file and works under the web's policy of no
inline script. A record from before overlays, or one with malformed geometry, shows the
picture with the layers it can draw, never a broken report.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from reports.filters import is_missing
from reports.thumbnails import SAMPLE_SIDE, Thumbnail, Thumbnails

Record = Mapping[str, Any]

MAX_REGIONS = 10  # boxes drawn per assessment: its strongest regions
ZOOMS = (1, 2, 4)
# Colours chosen apart from every colour of the example legend (black, red, blue, green,
# pink, dark blue), so an outline never reads as a phase.
COLOURS = {
    "pores": "#ffd400",
    "largest": "#ffffff",
    "baseline": "#00e5ff",
    "fusion": "#ff8c00",
    "haz": "#ffffff",
    "quadrats": "#ffffff",
    "regions": "#c77dff",
    "map": "#ff6b6b",
}
_PNG_DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/]+={0,2}")


@dataclass(frozen=True)
class Shape:
    """One SVG primitive: kind is path, line, circle, rect, text or image; attrs its
    attributes (numbers already rounded); title a tooltip; text the content of a text."""

    kind: str
    attrs: dict[str, Any]
    title: str = ""
    text: str = ""


@dataclass(frozen=True)
class Layer:
    """One switchable layer: its checkbox id, what the toggle says, colour and shapes."""

    key: str
    label: str
    colour: str
    on: bool
    shapes: list[Shape]
    group: str  # "measurement" or the assessment key of a local layer
    dom_id: str = ""  # the checkbox's id, unique in the page (layer-1, layer-2, ...)

    @property
    def raster(self) -> bool:
        """A picture (an anomaly map): drawn under every outline, right over the micrograph."""
        return any(s.kind == "image" for s in self.shapes)


@dataclass(frozen=True)
class MicrographView:
    """What the micrograph partial reads."""

    picture: Thumbnail
    width: int
    height: int
    font: float  # text size in image pixels, so labels read the same at any picture size
    layers: list[Layer]
    notes: list[str] = field(default_factory=list)
    zooms: tuple[int, ...] = ZOOMS

    @property
    def groups(self) -> list[tuple[str, list[Layer]]]:
        ordered: dict[str, list[Layer]] = {}
        for layer in self.layers:
            ordered.setdefault(layer.group, []).append(layer)
        return list(ordered.items())


def sample_micrograph(document: Record, thumbnails: Thumbnails) -> MicrographView:
    """The figure of a qualification's sample, from its stored picture."""
    picture = thumbnails.get((document.get("sample") or {}).get("sha256"), SAMPLE_SIDE)
    return micrograph_view(document, picture, picture.size)


def micrograph_view(document: Record, picture: Thumbnail, picture_size: tuple[int, int] | None
                    ) -> MicrographView:
    """The figure of one qualification: picture, size in image pixels and layers.

    picture_size: the decoded picture's size, for records that state no size of their own
    (coordinates then assume the picture is the image at full size).
    """
    overlay = document.get("overlay") if isinstance(document.get("overlay"), Mapping) else None
    sample = document.get("sample") or {}
    width, height = _size(overlay, sample, picture_size)
    font = max(width, height) / 48.0
    layers: list[Layer] = []
    notes: list[str] = []
    if overlay is not None:
        layers += _measurement_layers(overlay, width, font)
    elif document.get("overlay", None) is None and _measured(document):
        notes.append("No measurement overlay in this record (qualified before overlays were "
                     "stored, or the picture is not a phase map).")
    for node in document.get("nodes") or []:
        if node.get("kind") != "assessment":
            continue
        for evidence in node.get("evidence") or []:
            if evidence.get("role") != "measurement" and (
                "map" in evidence or "regions" in evidence
            ):
                layers += _local_layers(node, evidence, width, height, font, notes)
    numbered = [replace(layer, dom_id=f"layer-{i}") for i, layer in enumerate(layers, 1)]
    return MicrographView(picture, width, height, round(font, 1), numbered, notes)


def _measured(document: Record) -> bool:
    return any(e.get("role") == "measurement" for n in document.get("nodes") or []
               for e in n.get("evidence") or [])


def _size(overlay: Record | None, sample: Record, picture: tuple[int, int] | None
          ) -> tuple[int, int]:
    for source in (overlay or {}, sample):
        w, h = _number(source.get("width")), _number(source.get("height"))
        if w and h and w > 0 and h > 0:
            return int(w), int(h)
    return picture if picture else (1, 1)


def _measurement_layers(overlay: Record, width: int, font: float) -> list[Layer]:
    layers = []
    pores = overlay.get("pores") or {}
    outlines = [o for o in pores.get("outlines") or [] if isinstance(o, Mapping)]
    shapes = []
    for rank, pore in enumerate(outlines):
        d = _path(pore.get("points"))
        if d is None:
            continue
        diameter = _number(pore.get("diameter_um"))
        tip = f"pore, equivalent diameter {diameter:.0f} µm" if diameter is not None else "pore"
        if rank == 0:
            shapes.append(Shape("path", {"d": d, "class": "largest"}, f"largest {tip}"))
            box = _bounds(pore.get("points"))
            if box and diameter is not None:
                shapes.append(_label(box, width, font, f"largest pore {diameter:.0f} µm"))
        else:
            shapes.append(Shape("path", {"d": d}, tip))
    count = _number(pores.get("count"))
    if shapes:
        shown = sum(1 for s in shapes if s.kind == "path")
        label = f"pores ({int(count) if count is not None else shown}"
        label += f", {shown} outlined)" if count is not None and shown < count else ")"
        layers.append(Layer("pores", label, COLOURS["pores"], True, shapes, "measurement"))
    baseline = _points(overlay.get("baseline"))
    if baseline and len(baseline) == 2:
        (x1, y1), (x2, y2) = baseline
        layers.append(Layer("baseline", "toe-to-toe baseline", COLOURS["baseline"], True, [
            Shape("line", {"x1": x1, "y1": y1, "x2": x2, "y2": y2},
                  "baseline: the original substrate surface")], "measurement"))
    fusion = [Shape("path", {"d": d}, "fusion line")
              for d in (_path(part) for part in overlay.get("fusion_line") or []) if d]
    if fusion:
        layers.append(Layer("fusion", "fusion line", COLOURS["fusion"], True, fusion,
                            "measurement"))
    haz = overlay.get("haz_deepest")
    if isinstance(haz, Mapping):
        point, foot = _points([haz.get("point")]), _points([haz.get("foot")])
        depth = _number(haz.get("depth_mm"))
        if point and foot and depth is not None:
            (px, py), (fx, fy) = point[0], foot[0]
            text = f"HAZ depth {depth:.2f} mm"
            layers.append(Layer("haz", f"deepest HAZ point ({depth:.2f} mm)", COLOURS["haz"],
                                True, [
                Shape("line", {"x1": fx, "y1": fy, "x2": px, "y2": py}, text),
                Shape("circle", {"cx": px, "cy": py, "r": round(font * 0.3, 1)}, text),
                _label((px, py, px, py), width, font, text, below=True),
            ], "measurement"))
    quadrats = _quadrat_shapes(overlay.get("quadrats"), font)
    if quadrats:
        layers.append(Layer("quadrats", "carbide quadrats, shaded by fraction",
                            COLOURS["quadrats"], False, quadrats, "measurement"))
    return layers


def _quadrat_shapes(grid: Any, font: float) -> list[Shape]:
    if not isinstance(grid, Mapping):
        return []
    x0, y0, side = (_number(grid.get(k)) for k in ("x", "y", "side"))
    columns, rows = _number(grid.get("columns")), _number(grid.get("rows"))
    fractions = grid.get("fractions")
    if (x0 is None or y0 is None or side is None or columns is None or rows is None
            or columns < 1 or not isinstance(fractions, Sequence)):
        return []
    values = [_number(f) for f in fractions]
    highest = max((v for v in values if v is not None), default=0.0) or 1.0
    shapes = []
    for index, value in enumerate(values[: int(columns) * int(rows)]):
        if value is None:
            continue
        row, column = divmod(index, int(columns))
        x, y = x0 + column * side, y0 + row * side
        shapes.append(Shape("rect", {
            "x": x, "y": y, "width": side, "height": side,
            "fill-opacity": round(0.08 + 0.62 * value / highest, 3),
        }, f"carbide fraction {value * 100:.1f} %"))
        if side >= font * 2.2:
            shapes.append(Shape("text", {"x": x + side / 2, "y": y + side / 2 + font * 0.35,
                                         "class": "label cell"}, text=f"{value * 100:.0f}"))
    return shapes


def _local_layers(node: Record, evidence: Record, width: int, height: int, font: float,
                  notes: list[str]) -> list[Layer]:
    key = str(node.get("key"))
    name = f"{key} {node.get('name') or ''}".strip()
    on = node.get("verdict") != "accept"
    layers = []
    source = evidence.get("map")
    if isinstance(source, str) and _PNG_DATA_URI.fullmatch(source):
        layers.append(Layer(f"map-{_slug(key)}", f"{name}: anomaly map", COLOURS["map"], False,
                            [Shape("image", {"href": source, "width": width, "height": height},
                                   f"{name}: anomaly map")], key))
    elif source is not None:
        notes.append(f"{name}: the anomaly map is not shown (not a PNG data URI).")
    boxes = []
    for rank, region in enumerate((evidence.get("regions") or [])[:MAX_REGIONS]):
        box = _box(region)
        if box is None:
            continue
        x, y, w, h = box
        score = _number(region.get("score"))
        what = f"{name}: region {rank + 1}" + (f", score {score:.2f}" if score is not None else "")
        boxes.append(Shape("rect", {"x": x, "y": y, "width": w, "height": h}, what))
        boxes.append(Shape("text", {"x": x, "y": max(y - font * 0.3, font), "class": "label"},
                           text=str(rank + 1)))
    if boxes:
        layers.append(Layer(f"regions-{_slug(key)}", f"{name}: strongest regions",
                            COLOURS["regions"], on, boxes, key))
    return layers


def _box(region: Any) -> tuple[float, float, float, float] | None:
    """x, y, width and height of a region, or None unless all four are finite and the box
    has an area."""
    if not isinstance(region, Mapping):
        return None
    x, y, w, h = (_number(region.get(k)) for k in ("x", "y", "width", "height"))
    if x is None or y is None or w is None or h is None or w <= 0 or h <= 0:
        return None
    return x, y, w, h


def _number(value: Any) -> float | None:
    """A finite number, or None for anything else (missing, text, NaN, a bool)."""
    if is_missing(value) or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return round(number, 2) if math.isfinite(number) else None


def _points(value: Any) -> list[tuple[float, float]] | None:
    if not isinstance(value, Sequence) or isinstance(value, str):
        return None
    points = []
    for item in value:
        if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 2:
            return None
        x, y = _number(item[0]), _number(item[1])
        if x is None or y is None:
            return None
        points.append((x, y))
    return points


def _path(value: Any) -> str | None:
    """A closed SVG path through the points; None unless there are at least three."""
    points = _points(value)
    if not points or len(points) < 3:
        return None
    first, *rest = points
    return f"M{first[0]:g} {first[1]:g}" + "".join(f"L{x:g} {y:g}" for x, y in rest) + "Z"


def _bounds(value: Any) -> tuple[float, float, float, float] | None:
    """Left, top, right and bottom of the points."""
    points = _points(value)
    if not points:
        return None
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return min(xs), min(ys), max(xs), max(ys)


def _label(box: tuple[float, float, float, float], width: int, font: float, text: str,
           below: bool = False) -> Shape:
    """A label beside a box: to its right, or to its left in the right third of the picture
    (so it is not cut off at the edge); level with its top, or under it."""
    left, top, right, bottom = box
    y = bottom + font * 1.1 if below else top + font * 0.4
    if right > width * 2 / 3:
        attrs = {"x": round(left - font * 0.4, 1), "y": round(y, 1), "text-anchor": "end"}
    else:
        attrs = {"x": round(right + font * 0.4, 1), "y": round(y, 1)}
    return Shape("text", {**attrs, "class": "label"}, text=text)


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", key).strip("-") or "node"
