"""The painter that draws simulated objects, and its colour helpers.

Objects are drawn in *box coordinates*: (0, 0) is the top-left and (1, 1) the
bottom-right of the object's bounding box, mirrored when the object faces left. The
:class:`Painter` draws into the RGB picture and, with the object's id, into a label
image, so the visible area, tight bounding box and polygon segmentation of every
object come out of the drawing itself.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Point = tuple[float, float]
Color = tuple[int, int, int]


class Painter:
    """Draw primitives of one object at a time on an RGB image and a label image.

    Args:
        background: (S, S, 3) uint8 picture to draw on.
    """

    def __init__(self, background: np.ndarray):
        self.size = background.shape[0]
        self.image = Image.fromarray(background, "RGB")
        self.draw = ImageDraw.Draw(self.image)
        self.labels = Image.new("L", (self.size, self.size), 0)
        self.ldraw = ImageDraw.Draw(self.labels)
        self.box = (0.0, 0.0, 1.0, 1.0)
        self.label = 0
        self.flip = False
        self.polygons: list[list[float]] = []

    def begin(self, box: Sequence[float], label: int, flip: bool = False) -> None:
        """Start object ``label`` (1..255) in pixel box ``(x, y, w, h)``."""
        self.box = tuple(float(v) for v in box)
        self.label = label
        self.flip = flip
        self.polygons = []

    @property
    def unit(self) -> float:
        """Pixels per box unit along the shorter box side (for round shapes)."""
        return min(self.box[2], self.box[3])

    def _xy(self, pts: Sequence[Point] | np.ndarray) -> np.ndarray:
        x0, y0, w, h = self.box
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        u = 1.0 - pts[:, 0] if self.flip else pts[:, 0]
        return np.stack([x0 + u * w, y0 + pts[:, 1] * h], axis=1)

    def poly(self, pts: Sequence[Point] | np.ndarray, fill: Color, *, segment: bool = True) -> None:
        """A filled polygon; ``segment`` adds it to the object's segmentation."""
        xy = self._xy(pts)
        flat = xy.ravel().tolist()
        self.draw.polygon(flat, fill=tuple(int(c) for c in fill))
        self.ldraw.polygon(flat, fill=self.label)
        if segment:
            self.polygons.append(np.round(xy, 1).ravel().tolist())

    def rect(self, u0: float, v0: float, u1: float, v1: float, fill: Color, **kw) -> None:
        self.poly([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], fill, **kw)

    def ellipse(
        self, cu: float, cv: float, ru: float, rv: float, fill: Color, n: int = 20, **kw
    ) -> None:
        """An ellipse (a polygon of ``n`` vertices) centred at (cu, cv), radii in box units."""
        ring = _unit_circle(n)
        self.poly(ring * (ru, rv) + (cu, cv), fill, **kw)

    def circle(self, cu: float, cv: float, r: float, fill: Color, **kw) -> None:
        """A round circle whose radius ``r`` is in units of the shorter box side."""
        x0, y0, w, h = self.box
        m = min(w, h)
        self.ellipse(cu, cv, r * m / w, r * m / h, fill, **kw)

    def line(self, pts: Sequence[Point], fill: Color, width: float) -> None:
        """A polyline; ``width`` in units of the shorter box side (not segmented)."""
        px = max(1, int(round(width * self.unit)))
        xy = self._xy(pts).ravel().tolist()
        self.draw.line(xy, fill=tuple(int(c) for c in fill), width=px, joint="curve")
        self.ldraw.line(xy, fill=self.label, width=px)

    def text(self, cu: float, cv: float, s: str, fill: Color, height: float) -> None:
        """Centred text ``height`` box-heights tall (decoration: no segmentation)."""
        x0, y0, w, h = self.box
        px = max(6, int(height * h))
        font = _font(px)
        u = 1 - cu if self.flip else cu
        self.draw.text((x0 + u * w, y0 + cv * h), s, fill=fill, font=font, anchor="mm")


@functools.lru_cache(maxsize=64)
def _unit_circle(n: int) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.stack([np.cos(a), np.sin(a)], axis=1)
    ring.setflags(write=False)
    return ring


@functools.lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError):  # Pillow without FreeType: a fixed bitmap font
        return ImageFont.load_default()


def jitter(rng: np.random.Generator, color: Sequence[int], amount: int = 18) -> Color:
    c = np.clip(np.asarray(color) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def pick(rng: np.random.Generator, options: Sequence[Color]) -> Color:
    return tuple(options[int(rng.integers(len(options)))])


def darker(c: Color, f: float = 0.6) -> Color:
    return int(c[0] * f), int(c[1] * f), int(c[2] * f)


BLACK, WHITE, GRAY = (20, 20, 22), (240, 240, 238), (128, 128, 132)
SKIN = ((241, 194, 160), (224, 172, 105), (198, 134, 66), (141, 85, 36), (95, 60, 35))
