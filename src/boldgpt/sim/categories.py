"""Object categories and scene types of the simulated stimuli, with the brain's view of them.

Categories are real COCO categories (public facts: name, official id, supercategory and
the contiguous 0-79 class index that the NSD decoding benchmark and
``nsd_clip_coco_targets.npy`` use). They are the 24 categories of that benchmark plus
``person``, each with a visual signature the drawing code gives it, a weight on each
category-selective domain of cortex (faces, bodies, animals, food, places, vehicles,
small objects) and the scenes in which COCO photographs usually show it.
"""

from __future__ import annotations

from dataclasses import dataclass

from boldgpt.sim.geometry import DOMAINS


@dataclass(frozen=True)
class Category:
    """One COCO category as drawn by the simulator.

    Attributes:
        name: COCO name (``"stop sign"``).
        coco_id: official COCO category id (1..90, with gaps).
        index: contiguous 0..79 class index (the ``target`` of NSD-Flat ``objects``).
        supercategory: COCO supercategory.
        scenes: scene types the object appears in, with relative weights.
        domains: weight of each category-selective domain (see ``geometry.DOMAINS``).
        aspect: typical width / height of its bounding box.
        ground: whether it stands on the ground (its box touches the lower part).
        plural: plural form for captions.
        meters: real-world size of the longer side of its box (m), so that a person next
            to a bus is smaller than the bus and larger than a pizza.
        extras: probability that more instances of the category are in the picture.
        with_person: probability that a person is in the picture too.
    """

    name: str
    coco_id: int
    index: int
    supercategory: str
    scenes: dict[str, float]
    domains: dict[str, float]
    aspect: float
    ground: bool = True
    plural: str = ""
    meters: float = 1.0  # real-world size of the longer box side, to scale companions
    extras: float = 0.1
    with_person: float = 0.25

    @property
    def plural_name(self) -> str:
        return self.plural or self.name + "s"


_ANIMAL = {"animals": 1.0, "bodies": 0.4, "faces": 0.2}
_SPORTS = {"objects": 1.0}

CATEGORIES: tuple[Category, ...] = (
    Category(
        "person",
        1,
        0,
        "person",
        {"street": 1.0},
        {"faces": 1.0, "bodies": 1.0, "animals": 0.3},
        0.42,
        plural="people",
        meters=1.7,
    ),
    Category(
        "motorcycle",
        4,
        3,
        "vehicle",
        {"street": 1.0},
        {"vehicles": 0.7, "objects": 0.4},
        1.4,
        with_person=0.7,
        meters=2.1,
    ),
    Category(
        "airplane",
        5,
        4,
        "vehicle",
        {"sky": 0.8, "field": 0.2},
        {"vehicles": 0.8, "objects": 0.3},
        2.2,
        ground=False,
        meters=35,
    ),
    Category(
        "bus",
        6,
        5,
        "vehicle",
        {"street": 1.0},
        {"vehicles": 1.0, "places": 0.3},
        1.8,
        plural="buses",
        meters=12,
    ),
    Category(
        "train",
        7,
        6,
        "vehicle",
        {"street": 0.4, "field": 0.6},
        {"vehicles": 1.0, "places": 0.3},
        3.0,
        meters=40,
    ),
    Category("fire hydrant", 11, 10, "outdoor", {"street": 1.0}, {"objects": 1.0}, 0.6, meters=0.8),
    Category("stop sign", 13, 11, "outdoor", {"street": 1.0}, {"objects": 1.0}, 0.5, meters=2.5),
    Category(
        "horse",
        19,
        17,
        "animal",
        {"field": 1.0},
        _ANIMAL | {"bodies": 0.5},
        1.3,
        extras=0.4,
        with_person=0.6,
        meters=2.4,
    ),
    Category(
        "sheep",
        20,
        18,
        "animal",
        {"field": 1.0},
        _ANIMAL,
        1.3,
        plural="sheep",
        extras=0.6,
        meters=1.3,
    ),
    Category("cow", 21, 19, "animal", {"field": 1.0}, _ANIMAL, 1.4, extras=0.5, meters=2.4),
    Category("elephant", 22, 20, "animal", {"savanna": 1.0}, _ANIMAL, 1.3, extras=0.4, meters=6),
    Category("zebra", 24, 22, "animal", {"savanna": 1.0}, _ANIMAL, 1.3, extras=0.5, meters=2.3),
    Category("giraffe", 25, 23, "animal", {"savanna": 1.0}, _ANIMAL, 0.75, extras=0.4, meters=5),
    Category(
        "umbrella",
        28,
        25,
        "accessory",
        {"street": 0.6, "water": 0.4},
        {"objects": 0.8},
        1.1,
        with_person=0.7,
        meters=1.0,
    ),
    Category(
        "skis",
        35,
        30,
        "sports",
        {"snow": 1.0},
        _SPORTS,
        1.0,
        plural="skis",
        with_person=0.7,
        meters=1.7,
    ),
    Category(
        "snowboard", 36, 31, "sports", {"snow": 1.0}, _SPORTS, 2.6, with_person=0.7, meters=1.5
    ),
    Category(
        "kite",
        38,
        33,
        "sports",
        {"sky": 0.6, "water": 0.2, "field": 0.2},
        {"objects": 0.8},
        0.7,
        ground=False,
        extras=0.3,
        with_person=0.4,
        meters=1.2,
    ),
    Category(
        "skateboard", 41, 36, "sports", {"street": 1.0}, _SPORTS, 2.6, with_person=0.7, meters=0.8
    ),
    Category(
        "surfboard", 42, 37, "sports", {"water": 1.0}, _SPORTS, 3.0, with_person=0.7, meters=2.2
    ),
    Category(
        "tennis racket",
        43,
        38,
        "sports",
        {"court": 1.0},
        _SPORTS,
        0.55,
        with_person=0.8,
        meters=0.7,
    ),
    Category(
        "pizza",
        59,
        53,
        "food",
        {"table": 1.0},
        {"food": 1.0, "objects": 0.2},
        1.0,
        with_person=0.15,
        meters=0.35,
    ),
    Category(
        "cake",
        61,
        55,
        "food",
        {"table": 1.0},
        {"food": 1.0, "objects": 0.2},
        1.1,
        with_person=0.15,
        meters=0.3,
    ),
    Category(
        "bed",
        65,
        59,
        "furniture",
        {"room": 1.0},
        {"places": 0.5, "objects": 0.6},
        1.6,
        with_person=0.15,
        meters=2.1,
    ),
    Category(
        "toilet",
        70,
        61,
        "furniture",
        {"bathroom": 1.0},
        {"places": 0.5, "objects": 0.6},
        0.65,
        with_person=0.05,
        meters=0.75,
    ),
    Category(
        "clock",
        85,
        74,
        "indoor",
        {"street": 0.5, "room": 0.5},
        {"objects": 1.0},
        1.0,
        ground=False,
        meters=0.6,
    ),
)
"""All drawable categories; ``CATEGORIES[0]`` is ``person``."""

CATEGORY_BY_NAME = {c.name: c for c in CATEGORIES}
PRIMARY_CATEGORIES = tuple(c for c in CATEGORIES if c.name != "person")
"""The 24 categories of the NSD 24-way decoding benchmark; every stimulus shows one of
them as its main (largest intended) object, uniformly at random."""

SCENES = (
    "sky",
    "field",
    "savanna",
    "snow",
    "water",
    "street",
    "room",
    "bathroom",
    "table",
    "court",
    "photo",
)
"""Scene types (backgrounds)."""

SCENE_PLACE_DRIVE = {
    "sky": 0.2,
    "field": 0.6,
    "savanna": 0.6,
    "snow": 0.6,
    "water": 0.6,
    "street": 1.0,
    "room": 1.0,
    "bathroom": 0.9,
    "table": 0.3,
    "court": 0.8,
    "photo": 0.5,
}
"""How strongly each scene type drives scene-selective cortex (PPA / OPA): open or
navigable layouts more than close-ups of a table or an empty sky."""

PHOTO_SCENE_PROB = 0.1
"""Share of stimuli shown on a crop of a real photograph instead of their usual scene."""

# Objects that COCO pictures of a scene often contain besides the main one.
SCENE_COMPANIONS = {
    "street": ("fire hydrant", "stop sign", "clock", "bus", "motorcycle", "umbrella"),
    "table": ("pizza", "cake"),
    "room": ("clock",),
    "field": ("horse", "cow", "sheep"),
    "savanna": ("zebra", "elephant", "giraffe"),
    "sky": ("kite", "airplane"),
    "water": ("surfboard", "umbrella"),
    "snow": ("skis", "snowboard"),
}


def domain_vector(category: Category) -> list[float]:
    """The category's weights on ``geometry.DOMAINS``, in that order."""
    unknown = set(category.domains) - set(DOMAINS)
    if unknown:
        raise ValueError(f"category {category.name!r} has unknown domains {sorted(unknown)}")
    return [category.domains.get(d, 0.0) for d in DOMAINS]
