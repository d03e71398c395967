"""Backgrounds of the simulated stimuli: skies, fields, streets, rooms, ...

Natural textures come from the photographs that ship inside scikit-image
(``skimage.data``: grass, gravel, brick, astronaut, coffee, chelsea, rocket, the Hubble
deep field, ...), cropped, zoomed and tinted, so the images carry natural 1/f-like
texture statistics without any download.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from PIL import Image

from boldgpt.errors import DataError

Background = tuple[np.ndarray, float]
"""An (S, S, 3) float32 image in [0, 1] and the horizon as a fraction of the height
(where objects standing on the ground have their feet; 0 for top-down views)."""

GRAY_TEXTURES = ("grass", "gravel", "brick", "moon")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")


@functools.cache
def texture(name: str) -> np.ndarray:
    """A scikit-image sample picture as float32 in [0, 1]: (H, W) or (H, W, 3)."""
    import skimage.data

    try:
        arr = np.asarray(getattr(skimage.data, name)())
    except Exception as exc:  # a broken or stripped scikit-image install
        raise DataError(
            f"cannot load the scikit-image sample image {name!r} used as a texture by the "
            f"simulator ({type(exc).__name__}: {exc}); reinstall scikit-image"
        ) from exc
    arr = arr.astype(np.float32) / 255.0
    arr.setflags(write=False)
    return arr


def texture_crop(
    rng: np.random.Generator, name: str, height: int, width: int, zoom: float = 1.0
) -> np.ndarray:
    """A random crop of texture ``name`` resized to (height, width), ``zoom`` times
    magnified relative to the image side ``max(height, width)`` of 256 px."""
    tex = texture(name)
    th, tw = tex.shape[:2]
    scale = 256.0 / max(height, width, 1) / zoom
    ch = int(min(th, max(4, round(height * scale))))
    cw = int(min(tw, max(4, round(width * scale))))
    y0 = int(rng.integers(0, th - ch + 1))
    x0 = int(rng.integers(0, tw - cw + 1))
    crop = tex[y0 : y0 + ch, x0 : x0 + cw]
    if crop.shape[:2] != (height, width):
        mode = "RGB" if crop.ndim == 3 else "L"
        img = Image.fromarray((crop * 255).astype(np.uint8), mode)
        crop = np.asarray(img.resize((width, height), Image.BILINEAR), np.float32) / 255.0
    return crop


def _tint(gray: np.ndarray, color, contrast: float) -> np.ndarray:
    """Colour a gray texture: ``color * (1 + contrast * (gray - mean))``, (H, W, 3)."""
    g = (gray - gray.mean()) * contrast
    return np.clip(np.asarray(color, np.float32) * (1.0 + g[..., None]), 0.0, 1.0)


def _gradient(top, bottom, height: int, width: int) -> np.ndarray:
    a = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    col = (1 - a) * np.asarray(top, np.float32) + a * np.asarray(bottom, np.float32)
    return np.broadcast_to(col, (height, width, 3)).copy()


def _jitter(rng: np.random.Generator, color, amount: float = 0.06) -> np.ndarray:
    return np.clip(np.asarray(color, np.float32) + rng.uniform(-amount, amount, 3), 0, 1)


def _sky(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    top = _jitter(rng, (0.25, 0.45, 0.80), 0.08)
    bottom = _jitter(rng, (0.70, 0.82, 0.95), 0.05)
    img = _gradient(top, bottom, height, width)
    if rng.random() < 0.3:  # overcast
        img = 0.4 * img + 0.6 * _gradient((0.72, 0.74, 0.78), (0.85, 0.86, 0.88), height, width)
    for _ in range(int(rng.integers(0, 5))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.08, 0.3) * width, rng.uniform(0.03, 0.08) * width
        # Only the cloud's neighbourhood: exp() over the whole sky is the slow part.
        x0, x1 = int(max(cx - 2.5 * rx, 0)), int(min(cx + 2.5 * rx, width))
        y0, y1 = int(max(cy - 2.5 * ry, 0)), int(min(cy + 2.5 * ry, height))
        if x1 <= x0 or y1 <= y0:
            continue
        xx = ((np.arange(x0, x1, dtype=np.float32) - cx) / rx) ** 2
        yy = ((np.arange(y0, y1, dtype=np.float32) - cy) / ry) ** 2
        puff = 0.8 * np.exp(-(yy[:, None] + xx[None, :]))[..., None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - puff) + 0.97 * puff
    return img


def _ground(rng, size, horizon, gray_name, color, contrast, zoom) -> np.ndarray:
    sky = _sky(rng, size, size)
    h0 = int(horizon * size)
    tex = texture_crop(rng, gray_name, size - h0, size, zoom)
    ground = _tint(tex, _jitter(rng, color), contrast)
    # Ground recedes: darker and finer-grained toward the horizon.
    shade = np.linspace(0.8, 1.05, size - h0, dtype=np.float32)[:, None, None]
    sky[h0:] = np.clip(ground * shade, 0, 1)
    return sky


def field(rng: np.random.Generator, size: int) -> Background:
    horizon = rng.uniform(0.25, 0.5)
    return _ground(rng, size, horizon, "grass", (0.30, 0.55, 0.20), 1.6, rng.uniform(1, 2)), horizon


def savanna(rng: np.random.Generator, size: int) -> Background:
    horizon = rng.uniform(0.3, 0.5)
    img = _ground(rng, size, horizon, "grass", (0.72, 0.62, 0.35), 1.2, rng.uniform(1, 2))
    h0 = int(horizon * size)
    for _ in range(int(rng.integers(0, 3))):  # acacia trees on the horizon
        cx, w = rng.uniform(0, size), rng.uniform(0.08, 0.2) * size
        x0, x1 = int(max(cx - w, 0)), int(min(cx + w, size))
        top = max(h0 - int(0.12 * size), 0)
        img[top : top + max(2, int(0.03 * size)), x0:x1] = _jitter(rng, (0.2, 0.3, 0.12))
        xc = int(np.clip(cx, 0, size - 2))
        img[top:h0, xc : xc + max(1, size // 128)] = (0.3, 0.22, 0.15)
    return img, horizon


def snow(rng: np.random.Generator, size: int) -> Background:
    horizon = rng.uniform(0.2, 0.45)
    img = _ground(rng, size, horizon, "gravel", (0.92, 0.94, 0.98), 0.25, rng.uniform(1, 3))
    h0 = int(horizon * size)
    for _ in range(int(rng.integers(0, 8))):  # pines on the horizon
        cx, w, h = rng.uniform(0, size), rng.uniform(0.02, 0.05) * size, rng.uniform(0.06, 0.14)
        rows = np.arange(max(h0 - int(h * size), 0), h0)
        for r in rows:
            half = w * (r - rows[0] + 1) / max(len(rows), 1)
            img[r, int(max(cx - half, 0)) : int(min(cx + half, size))] = (0.1, 0.25, 0.15)
    return img, horizon


def water(rng: np.random.Generator, size: int) -> Background:
    horizon = rng.uniform(0.25, 0.5)
    img = _sky(rng, size, size)
    h0 = int(horizon * size)
    waves = texture_crop(rng, "grass", size - h0, size, rng.uniform(0.5, 1.0))
    waves = np.asarray(
        Image.fromarray((waves * 255).astype(np.uint8)).resize((size, size - h0)), np.float32
    )
    # Stretch horizontally: wave crests are long and flat.
    waves = np.repeat(waves[:, ::4], 4, axis=1)[:, :size] / 255.0
    img[h0:] = _tint(waves, _jitter(rng, (0.10, 0.35, 0.55)), 1.2)
    if rng.random() < 0.5:  # sand in the foreground
        s0 = int(rng.uniform(0.75, 0.9) * size)
        img[s0:] = _tint(texture_crop(rng, "gravel", size - s0, size, 2.0), (0.85, 0.75, 0.55), 0.5)
    return img, horizon


def street(rng: np.random.Generator, size: int) -> Background:
    horizon = rng.uniform(0.45, 0.65)
    img = _sky(rng, size, size)
    h0 = int(horizon * size)
    x = 0
    while x < size:  # a row of buildings
        w = int(rng.uniform(0.2, 0.45) * size)
        top = int(rng.uniform(0.0, 0.35) * size)
        wall = _tint(
            texture_crop(rng, "brick", h0 - top, min(w, size - x), rng.uniform(1, 3)),
            _jitter(rng, rng.choice([(0.6, 0.35, 0.25), (0.75, 0.7, 0.6), (0.5, 0.5, 0.55)]), 0.1),
            0.6,
        )
        img[top:h0, x : x + w] = wall
        win = _jitter(rng, (0.25, 0.3, 0.4), 0.05)
        step = max(6, size // 16)
        for wy in range(top + step // 2, h0 - step, step):
            for wx in range(x + step // 3, min(x + w, size) - step // 2, step):
                img[wy : wy + step // 2, wx : wx + step // 3] = win
        x += w
    road = texture_crop(rng, "gravel", size - h0, size, rng.uniform(1, 2))
    img[h0:] = _tint(road, _jitter(rng, (0.42, 0.42, 0.44), 0.04), 0.7)
    lane = int(h0 + 0.6 * (size - h0))
    for lx in range(0, size, max(8, size // 6)):
        img[lane : lane + max(2, size // 100), lx : lx + size // 12] = (0.9, 0.85, 0.5)
    return img, horizon


def room(rng: np.random.Generator, size: int) -> Background:
    horizon = rng.uniform(0.55, 0.75)
    h0 = int(horizon * size)
    wall = _jitter(
        rng, rng.choice([(0.85, 0.82, 0.72), (0.7, 0.78, 0.85), (0.9, 0.88, 0.86)]), 0.08
    )
    img = _tint(texture_crop(rng, "moon", size, size, 1.0), wall, 0.15)
    if rng.random() < 0.5:  # a window
        wx, wy = int(rng.uniform(0.05, 0.6) * size), int(rng.uniform(0.05, 0.2) * size)
        ww, wh = int(0.3 * size), int(0.3 * size)
        img[wy : wy + wh, wx : wx + ww] = (0.95, 0.95, 0.95)
        img[wy + 3 : wy + wh - 3, wx + 3 : wx + ww - 3] = _sky(rng, wh - 6, ww - 6)
    floor = texture_crop(rng, "gravel", size - h0, size, 1.0)
    floor = np.repeat(floor[:, ::6], 6, axis=1)[:, :size]  # wood grain runs along boards
    img[h0:] = _tint(floor, _jitter(rng, (0.55, 0.38, 0.22), 0.08), 0.8)
    return img, horizon


def bathroom(rng: np.random.Generator, size: int) -> Background:
    horizon = rng.uniform(0.6, 0.8)
    tile = _jitter(rng, rng.choice([(0.92, 0.92, 0.92), (0.75, 0.85, 0.92)]), 0.04)
    img = np.broadcast_to(tile, (size, size, 3)).copy()
    step = max(6, size // 10)
    img[::step] *= 0.7
    img[:, ::step] *= 0.7
    h0 = int(horizon * size)
    img[h0:] = _jitter(rng, (0.6, 0.6, 0.62), 0.05)
    img[h0 :: step // 2] *= 0.8
    return img, horizon


def table(rng: np.random.Generator, size: int) -> Background:
    if rng.random() < 0.35:  # checked tablecloth
        step = max(8, size // 8)
        yy, xx = np.mgrid[0:size, 0:size]
        check = ((yy // step + xx // step) % 2).astype(np.float32)[..., None]
        col = _jitter(rng, (0.8, 0.15, 0.15), 0.1)
        img = check * col + (1 - check) * np.float32(0.95)
    else:
        grain = texture_crop(rng, "gravel", size, size, 1.0)
        grain = np.repeat(grain[:, ::8], 8, axis=1)[:, :size]
        img = _tint(grain, _jitter(rng, (0.5, 0.33, 0.18), 0.08), 0.9)
    return img.astype(np.float32), 0.0


def court(rng: np.random.Generator, size: int) -> Background:
    horizon = rng.uniform(0.25, 0.4)
    h0 = int(horizon * size)
    img = np.empty((size, size, 3), np.float32)
    img[:h0] = _tint(texture_crop(rng, "gravel", h0, size, 2.0), (0.1, 0.3, 0.18), 0.6)
    surface = rng.choice([(0.2, 0.5, 0.3), (0.2, 0.35, 0.6), (0.7, 0.4, 0.25)])
    img[h0:] = _tint(texture_crop(rng, "gravel", size - h0, size, 1.0), _jitter(rng, surface), 0.3)
    lw = max(2, size // 100)
    for frac in (0.2, 0.55):
        y = h0 + int(frac * (size - h0))
        img[y : y + lw] = 0.95
    img[h0:, size // 2 : size // 2 + lw] = 0.95
    return img, horizon


def photo(rng: np.random.Generator, size: int) -> Background:
    name = PHOTOS[int(rng.integers(len(PHOTOS)))]
    img = texture_crop(rng, name, size, size, rng.uniform(1.0, 2.0))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return np.ascontiguousarray(img, dtype=np.float32), 0.0


def sky(rng: np.random.Generator, size: int) -> Background:
    img = _sky(rng, size, size)
    if rng.random() < 0.3:  # a strip of land at the bottom
        h0 = int(rng.uniform(0.8, 0.95) * size)
        tex = texture_crop(rng, "grass", size - h0, size, 2.0)
        img[h0:] = _tint(tex, (0.3, 0.45, 0.25), 1.0)
    return img, 1.0


BACKGROUNDS: dict[str, Callable[[np.random.Generator, int], Background]] = {
    "sky": sky,
    "field": field,
    "savanna": savanna,
    "snow": snow,
    "water": water,
    "street": street,
    "room": room,
    "bathroom": bathroom,
    "table": table,
    "court": court,
    "photo": photo,
}
"""Scene type -> background painter ``(rng, size) -> (image, horizon)``."""
