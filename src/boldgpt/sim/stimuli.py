"""Simulated stimuli: COCO-like pictures with objects of known categories, annotated.

Every picture is a deterministic function of ``(seed, nsd_id, size)``: the same NSD id
gives the same picture in every preset and for every subject. A picture shows one
*main* object of one of the 24 categories of the NSD 24-way decoding benchmark (uniform
over them), drawn last so nothing hides it, in a scene where COCO photographs usually
show it (zebras on a savanna, skis on snow, ...; one picture in ten on a crop of a real
photograph instead). Often it also shows more of the same (herds), a person (riders,
surfers, players) or an object that goes with the scene (a stop sign on a street). Its
annotations follow COCO: visible area, tight ``[x, y, w, h]`` box, polygon
segmentation, category, supercategory, contiguous class index, five captions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from boldgpt.sim import categories as cats
from boldgpt.sim.objects import DRAWERS
from boldgpt.sim.painter import Painter
from boldgpt.sim.scenes import BACKGROUNDS

DEFAULT_IMAGE_SIZE = 256
_STREAM = 0x5715  # random stream id of stimuli (distinct from design, brains and noise)
_COCO_ID_MOD = 1 << 19


@dataclass
class Stimulus:
    """One picture and its annotations.

    Attributes:
        nsd_id: stimulus id (0..72999).
        image: (S, S, 3) uint8 RGB picture.
        scene: scene type (``categories.SCENES``).
        objects: the NSD-Flat ``objects`` struct (lists of equal length, one entry per
            visible object, the main object first).
        captions: five captions.
        label: contiguous COCO class index (0..79) of the main object.
        place: how strongly the scene drives scene-selective cortex (0..1).
    """

    nsd_id: int
    image: np.ndarray
    scene: str
    objects: dict[str, list[Any]]
    captions: list[str]
    label: int
    place: float
    coco_id: int
    coco_split: str
    flagged: bool
    bold5000: bool


def _box(rng, category: cats.Category, scale: float, size: int, horizon: float) -> list[float]:
    """A pixel box ``[x, y, w, h]`` inside the picture; objects that stand on the ground
    have their feet below the horizon, flying ones are above it."""
    side = scale * size
    aspect = category.aspect * rng.uniform(0.9, 1.1)
    w, h = (side, side / aspect) if aspect >= 1 else (side * aspect, side)
    w, h = min(w, size - 1.0), min(h, size - 1.0)
    x = rng.uniform(0, size - w)
    h0 = horizon * size
    if category.ground and 0.0 < horizon < 1.0:
        low = min(max(h0 + 0.05 * size, h), size)
        bottom = rng.uniform(low, size)
        y = bottom - h
    elif not category.ground and 0.0 < horizon < 1.0 and h0 - h > 0:
        y = rng.uniform(0, h0 - h)
    else:
        y = rng.uniform(0, size - h)
    return [x, y, w, h]


def _compose(rng: np.random.Generator, main: cats.Category, scene: str) -> list[tuple]:
    """(category, relative scale) of each object in drawing order (main object last)."""
    scale = float(np.exp(rng.uniform(np.log(0.3), np.log(0.8))))

    def relative(other: cats.Category) -> float:
        # Real-world size ratio, times a depth factor (nearer or farther than the main).
        s = scale * other.meters / main.meters * float(np.exp(rng.uniform(-0.4, 0.3)))
        return float(np.clip(s, 0.08, 0.9))

    objects: list[tuple[cats.Category, float]] = []
    if rng.random() < main.extras:
        for _ in range(int(rng.integers(1, 4))):
            objects.append((main, relative(main)))
    if rng.random() < main.with_person:
        objects.append((cats.CATEGORY_BY_NAME["person"], relative(cats.CATEGORY_BY_NAME["person"])))
    companions = [c for c in cats.SCENE_COMPANIONS.get(scene, ()) if c != main.name]
    if companions and rng.random() < 0.25:
        other = cats.CATEGORY_BY_NAME[companions[int(rng.integers(len(companions)))]]
        objects.append((other, relative(other)))
    objects.append((main, scale))
    return objects


def render_stimulus(nsd_id: int, seed: int = 0, size: int = DEFAULT_IMAGE_SIZE) -> Stimulus:
    """Draw stimulus ``nsd_id`` of the dataset with seed ``seed`` at ``size`` pixels."""
    if size < 32:
        raise ValueError(f"image size must be at least 32 pixels; got {size}")
    rng = np.random.default_rng([seed, _STREAM, int(nsd_id)])
    main = cats.PRIMARY_CATEGORIES[int(rng.integers(len(cats.PRIMARY_CATEGORIES)))]
    if rng.random() < cats.PHOTO_SCENE_PROB:
        scene = "photo"
    else:
        names = list(main.scenes)
        weights = np.array([main.scenes[n] for n in names])
        scene = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    background, horizon = BACKGROUNDS[scene](rng, size)
    painter = Painter((np.clip(background, 0, 1) * 255 + 0.5).astype(np.uint8))

    placed = []
    for k, (category, scale) in enumerate(_compose(rng, main, scene)):
        box = _box(rng, category, min(scale, 0.95), size, horizon)
        painter.begin(box, label=k + 1, flip=bool(rng.random() < 0.5))
        DRAWERS[category.name](painter, rng)
        placed.append((category, painter.polygons))

    labels = np.asarray(painter.labels)
    objects = _annotate(labels, placed, size)
    return Stimulus(
        nsd_id=int(nsd_id),
        image=np.asarray(painter.image, dtype=np.uint8),
        scene=scene,
        objects=objects,
        captions=captions(rng, main, objects, scene),
        label=main.index,
        place=cats.SCENE_PLACE_DRIVE[scene],
        coco_id=1 + (int(nsd_id) * 40_503 + seed * 7_919 + 12_345) % _COCO_ID_MOD,
        coco_split="train2017" if rng.random() < 0.9 else "val2017",
        flagged=bool(rng.random() < 0.01),
        bold5000=bool(rng.random() < 0.015),
    )


def _annotate(labels: np.ndarray, placed: list, size: int) -> dict[str, list[Any]]:
    """COCO annotations of the visible part of every object, main object first."""
    counts = np.bincount(labels.ravel(), minlength=len(placed) + 1)
    boxes = ndimage.find_objects(labels, max_label=len(placed))
    rows = []
    order = [len(placed) - 1] + sorted(
        range(len(placed) - 1), key=lambda k: -counts[k + 1]
    )  # main object first, then by visible area
    for k in order:
        category, polygons = placed[k]
        area = int(counts[k + 1])
        if area < 16 and k != len(placed) - 1:  # hidden behind others: not annotated
            continue
        if boxes[k] is not None:
            ys, xs = boxes[k]
            bbox = [float(xs.start), float(ys.start), float(xs.stop - xs.start),
                    float(ys.stop - ys.start)]  # fmt: skip
        else:
            bbox = [0.0, 0.0, 0.0, 0.0]
        rows.append((category, area, bbox, polygons))
    return {
        "area": [r[1] for r in rows],
        "bbox": [r[2] for r in rows],
        "category": [r[0].name for r in rows],
        "iscrowd": [0 for _ in rows],
        "segmentation": [{"counts": "", "poly": r[3], "size": [size, size]} for r in rows],
        "supercategory": [r[0].supercategory for r in rows],
        "target": [r[0].index for r in rows],
    }


_SCENE_PHRASES = {
    "sky": ("in the blue sky", "high up in the sky", "against a cloudy sky"),
    "field": ("in a grassy field", "on green grass", "out in a pasture"),
    "savanna": ("on a dry savanna", "in the grassland", "out in the wild"),
    "snow": ("on a snowy slope", "in the snow", "on a ski hill"),
    "water": ("on the water", "at the beach", "by the ocean"),
    "street": ("on a city street", "next to a building", "by the road"),
    "room": ("in a bedroom", "inside a room", "in a quiet room"),
    "bathroom": ("in a bathroom", "next to a tiled wall", "in a small restroom"),
    "table": ("on a table", "on a wooden table", "ready to be eaten"),
    "court": ("on a tennis court", "at the court", "during a tennis match"),
    "photo": ("in front of a busy background", "in a cluttered scene", "in an odd picture"),
}
_COUNT_WORDS = {2: "two", 3: "three", 4: "four"}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def captions(rng: np.random.Generator, main: cats.Category, objects: dict, scene: str) -> list[str]:
    """Five short COCO-style captions that name the visible objects and the scene."""
    names = objects["category"]
    n_main = names.count(main.name)
    person = "person" in names
    where = list(_SCENE_PHRASES[scene])
    rng.shuffle(where)
    if n_main > 1:
        thing = f"{_COUNT_WORDS.get(n_main, 'several')} {main.plural_name}"
        some = f"some {main.plural_name}"
    else:
        thing = f"{_article(main.name)} {main.name}"
        some = thing
    options = [
        f"{thing.capitalize()} {where[0]}.",
        f"A picture of {some} {where[1]}.",
        f"There {'are' if n_main > 1 else 'is'} {thing} {where[2]}.",
        f"{some.capitalize()} seen up close.",
        f"A photo showing {thing}.",
    ]
    if person:
        who = ("A man", "A woman", "A person", "A child")[int(rng.integers(4))]
        options += [f"{who} with {thing} {where[0]}.", f"{who} standing near {some}."]
    others = [n for n in dict.fromkeys(names) if n not in (main.name, "person")]
    if others:
        options.append(f"{thing.capitalize()} and {_article(others[0])} {others[0]} {where[1]}.")
    picked = rng.choice(len(options), size=5, replace=False)
    return [options[i] for i in sorted(picked)]
