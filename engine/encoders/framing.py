"""Where the image tower looks: a map framed on its content, whatever the picture's margins.

How much background surrounds the bead, and how large the exported picture is, are choices
of whoever cut and saved the section; resized to the tower's fixed input they change the
bead's apparent size, place and aspect, and a model trained on one framing reads another one
wrongly. A checkpoint trained with `frame_on_content` therefore sees every picture through a
window centred on its content (every pixel far from the background colour: bead, fusion
line, HAZ), at least CANVAS pixels and of CANVAS's aspect, grown only where the content and
MARGIN would not fit: the content is never cut and keeps its scale in pixels, and what lies
outside the picture is filled with the background colour.

Training workers (engine/training/example.py) and the encoder (engine/encoders/vlkb_dual.py)
call the same functions, so a model sees at run time exactly the framing it learnt on. Plain
numpy and PIL: no torch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from PIL import Image

CANVAS = (640, 480)  # (width, height): the generator's default frame, 6.4 x 4.8 mm at 10 um/px
MARGIN = 20  # pixels of background kept around the content on every side
# A pixel is content when it lies this far (Euclidean RGB) from the background colour: beyond
# acquisition noise on the background (sigma 15 per channel stays under it) and below the
# nearest legend colour (porosity, 128 from black).
CONTENT_DISTANCE = 80.0
# A row or column is content when at least this share of it (and two pixels) is: isolated
# specks of noise or dust do not move the window.
MIN_LINE_SHARE = 0.01

RGB = tuple[int, int, int]


class Window(NamedTuple):
    """A rectangle in the picture's pixel coordinates; it may reach beyond the picture."""

    left: int
    top: int
    width: int
    height: int


def content_box(pixels: np.ndarray, background: RGB) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom), exclusive, of the rows and columns holding content in an
    (h, w, 3) uint8 picture; None when nothing stands out from the background."""
    far = np.linalg.norm(pixels.astype(np.float32) - np.asarray(background, np.float32), axis=2)
    far = far > CONTENT_DISTANCE
    height, width = far.shape
    rows = np.flatnonzero(far.sum(axis=1) >= max(2.0, MIN_LINE_SHARE * width))
    columns = np.flatnonzero(far.sum(axis=0) >= max(2.0, MIN_LINE_SHARE * height))
    if rows.size == 0 or columns.size == 0:
        return None
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def content_window(box: tuple[int, int, int, int]) -> Window:
    """The window centred on the content box: CANVAS, grown to CANVAS's aspect where the box
    and its margins are larger."""
    left, top, right, bottom = box
    width = max(CANVAS[0], right - left + 2 * MARGIN)
    height = max(CANVAS[1], bottom - top + 2 * MARGIN)
    if width * CANVAS[1] > height * CANVAS[0]:
        height = math.ceil(width * CANVAS[1] / CANVAS[0])
    else:
        width = math.ceil(height * CANVAS[0] / CANVAS[1])
    return Window(round((left + right - width) / 2), round((top + bottom - height) / 2),
                  width, height)


def window_of(pixels: np.ndarray, background: RGB) -> Window | None:
    """Where the tower looks in an (h, w, 3) uint8 picture; None when it holds no content
    (it is then seen as it is)."""
    box = content_box(pixels, background)
    return None if box is None else content_window(box)


def crop_padded(values: np.ndarray, window: Window, fill: object) -> np.ndarray:
    """The window of an (h, w, ...) array; what lies outside the array is `fill`."""
    out = np.empty((window.height, window.width, *values.shape[2:]), dtype=values.dtype)
    out[...] = fill
    top, left = max(window.top, 0), max(window.left, 0)
    bottom = min(window.top + window.height, values.shape[0])
    right = min(window.left + window.width, values.shape[1])
    if bottom > top and right > left:
        out[top - window.top:bottom - window.top, left - window.left:right - window.left] = (
            values[top:bottom, left:right]
        )
    return out


def frame_on_content(image: Image.Image, background: RGB) -> Image.Image:
    """The picture, as RGB, as a model trained with `frame_on_content` sees it."""
    pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    window = window_of(pixels, background)
    if window is None:
        return Image.fromarray(pixels)
    return Image.fromarray(crop_padded(pixels, window, np.asarray(background, np.uint8)))
