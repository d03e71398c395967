"""Drawing COCO-like objects: each category gets a recognisable shape, colour and texture.

Every drawer takes a :class:`~boldgpt.sim.painter.Painter` whose box is set to
the object's bounding box, and draws in box coordinates facing right (the painter
mirrors it when the object faces left).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from boldgpt.sim.painter import (
    BLACK,
    GRAY,
    SKIN,
    WHITE,
    Color,
    Painter,
    darker,
    jitter,
    pick,
)

# --- animals -----------------------------------------------------------------------


def _quadruped(
    p: Painter,
    rng: np.random.Generator,
    body: Color,
    *,
    body_box=(0.45, 0.42, 0.33, 0.17),
    legs=(0.5, 1.0, 0.06),
    neck=((0.66, 0.3), (0.74, 0.45), (0.9, 0.14), (0.8, 0.08)),
    head=(0.88, 0.14, 0.085, 0.065),
    leg_color: Color | None = None,
    tail: bool = True,
) -> tuple[float, float, float, float]:
    """Body, legs, neck, head and tail of a four-legged animal facing right."""
    cu, cv, ru, rv = body_box
    v0, v1, lw = legs
    lc = leg_color or darker(body, 0.85)
    for u in (cu - 0.75 * ru, cu - 0.5 * ru, cu + 0.5 * ru, cu + 0.75 * ru):
        p.rect(u - lw / 2, v0, u + lw / 2, v1, lc)
        p.rect(u - lw / 2, v1 - 0.04, u + lw / 2, v1, darker(lc, 0.5), segment=False)
    if tail:
        p.line([(cu - ru, cv - 0.3 * rv), (cu - ru - 0.05, cv + 1.2 * rv)], darker(body), 0.03)
    p.ellipse(cu, cv, ru, rv, body)
    if neck:
        p.poly(neck, body)
    p.ellipse(*head, body)
    hu, hv, hru, hrv = head
    p.circle(hu + 0.3 * hru, hv - 0.2 * hrv, 0.012, BLACK, segment=False)  # eye
    return body_box


def _stripes(p: Painter, body_box, color: Color, spacing: float, width: float) -> None:
    """Vertical stripes clipped to an elliptical body."""
    cu, cv, ru, rv = body_box
    for u in np.arange(cu - ru + spacing / 2, cu + ru, spacing):
        half = rv * np.sqrt(max(0.0, 1 - ((u - cu) / ru) ** 2))
        if half > 0.01:
            p.rect(u - width / 2, cv - half, u + width / 2, cv + half, color, segment=False)


def _spots(p: Painter, rng, body_box, color: Color, n: int, size: float) -> None:
    cu, cv, ru, rv = body_box
    for _ in range(n):
        a, r = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 0.7))
        su, sv = cu + r * ru * np.cos(a), cv + r * rv * np.sin(a)
        p.ellipse(su, sv, size * rng.uniform(0.6, 1.3), size * 1.2, color, n=8, segment=False)


def draw_horse(p: Painter, rng: np.random.Generator) -> None:
    body = jitter(rng, pick(rng, [(120, 70, 35), (60, 40, 25), (160, 110, 60), (200, 190, 180)]))
    _quadruped(p, rng, body)
    p.line([(0.68, 0.3), (0.83, 0.08)], darker(body, 0.4), 0.05)  # mane


def draw_zebra(p: Painter, rng: np.random.Generator) -> None:
    body = jitter(rng, (235, 235, 230), 8)
    box = _quadruped(p, rng, body, leg_color=body)
    _stripes(p, box, BLACK, 0.05, 0.022)
    for u in (0.2, 0.29, 0.62, 0.7):  # striped legs
        for v in np.arange(0.55, 0.95, 0.08):
            p.rect(u - 0.035, v, u + 0.035, v + 0.03, BLACK, segment=False)
    for v in np.arange(0.12, 0.42, 0.07):
        p.line([(0.7 + 0.2 * (0.42 - v), v), (0.78 + 0.2 * (0.42 - v), v + 0.02)], BLACK, 0.02)


def draw_giraffe(p: Painter, rng: np.random.Generator) -> None:
    body = jitter(rng, (215, 165, 85), 10)
    box = (0.36, 0.52, 0.26, 0.11)
    _quadruped(
        p,
        rng,
        body,
        body_box=box,
        legs=(0.56, 1.0, 0.045),
        neck=((0.52, 0.46), (0.62, 0.5), (0.86, 0.1), (0.78, 0.06)),
        head=(0.84, 0.07, 0.08, 0.045),
    )
    patch = jitter(rng, (125, 70, 30), 10)
    _spots(p, rng, box, patch, 14, 0.035)
    for t in np.linspace(0.15, 0.85, 6):
        p.ellipse(0.57 + t * 0.24, 0.48 - t * 0.4, 0.022, 0.025, patch, n=6, segment=False)


def draw_elephant(p: Painter, rng: np.random.Generator) -> None:
    body = jitter(rng, (128, 125, 125), 10)
    _quadruped(
        p,
        rng,
        body,
        body_box=(0.43, 0.45, 0.33, 0.25),
        legs=(0.55, 1.0, 0.11),
        neck=None,
        head=(0.8, 0.35, 0.14, 0.16),
    )
    p.ellipse(0.72, 0.36, 0.09, 0.17, darker(body, 0.85))  # ear
    p.line([(0.9, 0.4), (0.95, 0.6), (0.93, 0.85)], body, 0.08)  # trunk
    p.line([(0.86, 0.5), (0.92, 0.58)], WHITE, 0.025)  # tusk


def draw_cow(p: Painter, rng: np.random.Generator) -> None:
    holstein = rng.random() < 0.6
    body = WHITE if holstein else jitter(rng, pick(rng, [(120, 70, 40), (70, 45, 30)]))
    box = (0.45, 0.42, 0.34, 0.18)
    _quadruped(
        p, rng, body, body_box=box, legs=(0.5, 0.95, 0.065), neck=None, head=(0.84, 0.36, 0.08, 0.1)
    )
    if holstein:
        _spots(p, rng, box, BLACK, 6, 0.07)
    p.ellipse(0.45, 0.6, 0.06, 0.035, (235, 160, 170), segment=False)  # udder


def draw_sheep(p: Painter, rng: np.random.Generator) -> None:
    wool = jitter(rng, (232, 228, 210), 10)
    _quadruped(
        p,
        rng,
        wool,
        body_box=(0.45, 0.45, 0.3, 0.22),
        legs=(0.55, 0.97, 0.05),
        neck=None,
        head=(0.82, 0.33, 0.08, 0.1),
        leg_color=BLACK,
        tail=False,
    )
    for _ in range(9):  # fluffy outline
        a = rng.uniform(0, 2 * np.pi)
        p.circle(0.45 + 0.27 * np.cos(a), 0.45 + 0.19 * np.sin(a), 0.09, wool, n=10)
    p.ellipse(0.83, 0.34, 0.075, 0.095, BLACK)


def draw_person(p: Painter, rng: np.random.Generator) -> None:
    skin = jitter(rng, pick(rng, SKIN), 8)
    shirt = jitter(
        rng,
        pick(
            rng,
            [
                (200, 40, 40),
                (40, 80, 170),
                (240, 240, 240),
                (30, 30, 30),
                (60, 140, 70),
                (230, 180, 40),
            ],
        ),
    )
    pants = jitter(rng, pick(rng, [(40, 50, 90), (30, 30, 30), (120, 100, 80), (90, 90, 95)]))
    p.rect(0.3, 0.55, 0.48, 0.97, pants)
    p.rect(0.52, 0.55, 0.7, 0.97, pants)
    p.rect(0.27, 0.95, 0.49, 1.0, BLACK)
    p.rect(0.51, 0.95, 0.73, 1.0, BLACK)
    p.poly([(0.25, 0.2), (0.75, 0.2), (0.72, 0.58), (0.28, 0.58)], shirt)
    raise_arm = rng.random() < 0.3
    p.line([(0.27, 0.24), (0.12, 0.5 if not raise_arm else 0.02)], shirt, 0.12)
    p.line([(0.73, 0.24), (0.88, 0.5)], shirt, 0.12)
    p.circle(0.12, 0.52 if not raise_arm else 0.02, 0.07, skin)
    p.circle(0.88, 0.52, 0.07, skin)
    p.rect(0.44, 0.15, 0.56, 0.21, skin)
    p.ellipse(0.5, 0.09, 0.17, 0.085, skin)
    hair = jitter(rng, pick(rng, [(30, 20, 15), (90, 60, 30), (200, 170, 90), (60, 60, 60)]))
    p.ellipse(0.5, 0.035, 0.17, 0.04, hair)
    for u in (0.44, 0.56):  # eyes: faces are what face-selective cortex is about
        p.circle(u, 0.085, 0.02, BLACK, segment=False)
    p.rect(0.45, 0.125, 0.55, 0.135, darker(skin, 0.6), segment=False)


# --- vehicles ----------------------------------------------------------------------


def _wheel(p: Painter, cu: float, cv: float, r: float) -> None:
    p.circle(cu, cv, r, BLACK)
    p.circle(cu, cv, 0.5 * r, (150, 150, 155), segment=False)


def draw_bus(p: Painter, rng: np.random.Generator) -> None:
    body = jitter(
        rng,
        pick(rng, [(240, 190, 20), (200, 30, 30), (30, 90, 170), (235, 235, 235), (40, 140, 80)]),
    )
    decker = rng.random() < 0.3
    top = 0.0 if decker else 0.12
    p.rect(0.0, top, 1.0, 0.86, body)
    glass = (40, 55, 75)
    rows = (0.2, 0.52) if decker else (0.2,)
    for r in rows:
        for u in np.arange(0.04, 0.82, 0.11):
            p.rect(u, r, u + 0.09, r + 0.22, glass, segment=False)
    p.rect(0.86, 0.18, 0.99, 0.55, glass, segment=False)  # windscreen
    p.rect(0.74, 0.45, 0.84, 0.84, darker(body, 0.7), segment=False)  # door
    p.rect(0.0, 0.66, 1.0, 0.7, darker(body, 0.5), segment=False)
    _wheel(p, 0.18, 0.86, 0.12)
    _wheel(p, 0.8, 0.86, 0.12)


def draw_train(p: Painter, rng: np.random.Generator) -> None:
    body = jitter(
        rng,
        pick(rng, [(30, 60, 140), (190, 30, 30), (170, 170, 175), (240, 200, 40), (30, 110, 70)]),
    )
    stripe = pick(rng, [(240, 240, 240), (240, 200, 40), (20, 20, 20)])
    n = int(rng.integers(2, 4))
    w = 1.0 / n
    for i in range(n):
        u0, u1 = i * w + 0.01, (i + 1) * w - 0.01
        if i == n - 1:
            p.poly([(u0, 0.25), (u1 - 0.08, 0.25), (u1, 0.6), (u1, 0.85), (u0, 0.85)], body)
        else:
            p.rect(u0, 0.25, u1, 0.85, body)
        for u in np.arange(u0 + 0.02, u1 - 0.06, 0.06):
            p.rect(u, 0.35, u + 0.04, 0.52, (40, 50, 65), segment=False)
        p.rect(u0, 0.62, u1, 0.67, stripe, segment=False)
        for u in (u0 + 0.1 * w, u1 - 0.1 * w):
            _wheel(p, u, 0.88, 0.06)
    p.line([(0.0, 0.97), (1.0, 0.97)], (90, 80, 70), 0.03)


def draw_airplane(p: Painter, rng: np.random.Generator) -> None:
    body = jitter(rng, pick(rng, [(235, 235, 238), (200, 200, 205), (240, 240, 240)]), 8)
    livery = jitter(rng, pick(rng, [(200, 30, 30), (20, 60, 150), (240, 150, 20), (30, 120, 60)]))
    p.poly([(0.02, 0.1), (0.12, 0.1), (0.24, 0.42), (0.08, 0.42)], livery)  # tail fin
    p.ellipse(0.5, 0.5, 0.48, 0.1, body, n=28)
    p.poly([(0.4, 0.52), (0.58, 0.52), (0.35, 0.98), (0.27, 0.98)], darker(body, 0.8))  # wing
    p.ellipse(0.46, 0.68, 0.07, 0.05, GRAY)  # engine
    for u in np.arange(0.22, 0.85, 0.035):
        p.circle(u, 0.47, 0.012, (40, 50, 70), segment=False)
    p.rect(0.1, 0.53, 0.9, 0.56, livery, segment=False)


def draw_motorcycle(p: Painter, rng: np.random.Generator) -> None:
    frame = jitter(rng, pick(rng, [(200, 20, 20), (20, 20, 25), (20, 60, 160), (230, 130, 20)]))
    _wheel(p, 0.2, 0.72, 0.27)
    _wheel(p, 0.82, 0.72, 0.27)
    p.poly([(0.22, 0.55), (0.45, 0.35), (0.75, 0.35), (0.82, 0.6), (0.55, 0.7), (0.3, 0.7)], frame)
    p.ellipse(0.55, 0.33, 0.14, 0.08, darker(frame, 0.8))  # tank
    p.rect(0.25, 0.3, 0.45, 0.37, BLACK)  # seat
    p.line([(0.72, 0.35), (0.8, 0.1), (0.88, 0.08)], (60, 60, 60), 0.05)  # handlebar
    p.line([(0.3, 0.72), (0.05, 0.62)], (180, 180, 185), 0.05)  # exhaust


# --- outdoor objects, accessories, sports ---------------------------------------------


def draw_fire_hydrant(p: Painter, rng: np.random.Generator) -> None:
    color = jitter(rng, pick(rng, [(200, 25, 25), (230, 200, 30), (200, 25, 25), (40, 120, 60)]))
    p.rect(0.15, 0.9, 0.85, 1.0, darker(color))
    p.rect(0.25, 0.25, 0.75, 0.92, color)
    p.ellipse(0.5, 0.25, 0.27, 0.14, color)
    p.rect(0.43, 0.04, 0.57, 0.15, darker(color))
    p.rect(0.02, 0.42, 0.26, 0.56, color)
    p.rect(0.74, 0.42, 0.98, 0.56, color)
    p.circle(0.5, 0.5, 0.1, darker(color, 0.7), segment=False)


def draw_stop_sign(p: Painter, rng: np.random.Generator) -> None:
    p.rect(0.45, 0.45, 0.55, 1.0, GRAY)
    a = np.radians(22.5 + 45 * np.arange(8))
    m = p.unit
    ru, rv = 0.5 * m / p.box[2], 0.5 * m / p.box[3]
    cv = rv
    p.poly(list(zip(0.5 + ru * np.cos(a), cv + rv * np.sin(a))), WHITE)
    p.poly(
        list(zip(0.5 + 0.88 * ru * np.cos(a), cv + 0.88 * rv * np.sin(a))),
        jitter(rng, (200, 20, 30), 10),
        segment=False,
    )
    p.text(0.5, cv, "STOP", WHITE, 0.42 * rv)


def draw_clock(p: Painter, rng: np.random.Generator) -> None:
    rim = jitter(rng, pick(rng, [(20, 20, 20), (150, 110, 40), (40, 70, 50)]))
    p.circle(0.5, 0.5, 0.5, rim)
    p.circle(0.5, 0.5, 0.43, jitter(rng, (245, 242, 230), 6), segment=False)
    for k in range(12):
        a = np.radians(30 * k)
        p.line(
            [
                (0.5 + 0.36 * np.cos(a), 0.5 + 0.36 * np.sin(a)),
                (0.5 + 0.41 * np.cos(a), 0.5 + 0.41 * np.sin(a)),
            ],
            BLACK,
            0.02,
        )
    h, mnt = rng.uniform(0, 2 * np.pi, 2)
    p.line([(0.5, 0.5), (0.5 + 0.22 * np.sin(h), 0.5 - 0.22 * np.cos(h))], BLACK, 0.04)
    p.line([(0.5, 0.5), (0.5 + 0.34 * np.sin(mnt), 0.5 - 0.34 * np.cos(mnt))], BLACK, 0.025)


def draw_umbrella(p: Painter, rng: np.random.Generator) -> None:
    colors = [
        jitter(
            rng,
            pick(
                rng,
                [
                    (200, 30, 30),
                    (30, 60, 160),
                    (240, 200, 30),
                    (30, 140, 70),
                    (20, 20, 20),
                    (240, 240, 240),
                ],
            ),
        )
        for _ in range(2)
    ]
    p.line([(0.5, 0.1), (0.5, 0.92), (0.42, 0.97), (0.38, 0.9)], (60, 40, 30), 0.035)
    n = 8
    for k in range(n):
        a0, a1 = np.pi + np.pi * k / n, np.pi + np.pi * (k + 1) / n
        p.poly(
            [
                (0.5, 0.52),
                (0.5 + 0.5 * np.cos(a0), 0.52 + 0.47 * np.sin(a0)),
                (0.5 + 0.5 * np.cos(a1), 0.52 + 0.47 * np.sin(a1)),
            ],
            colors[k % 2],
        )


def draw_kite(p: Painter, rng: np.random.Generator) -> None:
    c1, c2 = (
        jitter(
            rng,
            pick(
                rng, [(220, 30, 30), (240, 200, 20), (30, 80, 200), (30, 160, 80), (230, 100, 200)]
            ),
        )
        for _ in range(2)
    )
    top, left, right, bottom = (0.5, 0.0), (0.0, 0.3), (1.0, 0.3), (0.5, 0.68)
    p.poly([top, left, (0.5, 0.3)], c1)
    p.poly([top, right, (0.5, 0.3)], c2)
    p.poly([left, bottom, (0.5, 0.3)], c2)
    p.poly([right, bottom, (0.5, 0.3)], c1)
    p.line([bottom, (0.45, 0.8), (0.55, 0.9), (0.48, 1.0)], (60, 60, 60), 0.015)
    for v in (0.8, 0.9):
        p.ellipse(0.5, v, 0.06, 0.015, c1, n=6, segment=False)


def _board(p: Painter, color: Color, u0, v0, u1, v1, nose: float = 0.08) -> None:
    vm = (v0 + v1) / 2
    p.poly(
        [(u0 + nose, v0), (u1 - nose, v0), (u1, vm), (u1 - nose, v1), (u0 + nose, v1), (u0, vm)],
        color,
    )


def draw_skis(p: Painter, rng: np.random.Generator) -> None:
    color = jitter(
        rng,
        pick(rng, [(220, 30, 30), (240, 240, 240), (30, 80, 200), (240, 200, 30), (20, 20, 20)]),
    )
    for off in (0.0, 0.22):
        p.poly([(0.05 + off, 0.0), (0.16 + off, 0.02), (0.78 + off, 1.0), (0.7 + off, 1.0)], color)
        p.rect(0.35 + off, 0.45, 0.47 + off, 0.52, BLACK, segment=False)


def draw_snowboard(p: Painter, rng: np.random.Generator) -> None:
    color = jitter(
        rng, pick(rng, [(220, 30, 30), (30, 80, 200), (240, 200, 30), (20, 20, 20), (150, 40, 160)])
    )
    _board(p, color, 0.0, 0.2, 1.0, 0.8, 0.1)
    p.rect(0.2, 0.35, 0.8, 0.45, darker(color, 0.5), segment=False)
    for u in (0.3, 0.65):
        p.rect(u, 0.3, u + 0.07, 0.7, BLACK, segment=False)


def draw_skateboard(p: Painter, rng: np.random.Generator) -> None:
    deck = jitter(rng, pick(rng, [(170, 120, 60), (20, 20, 20), (200, 40, 40), (40, 90, 180)]))
    _board(p, deck, 0.0, 0.2, 1.0, 0.55, 0.07)
    wheel = jitter(rng, (230, 220, 200), 10)
    for u in (0.18, 0.82):
        p.rect(u - 0.05, 0.55, u + 0.05, 0.66, GRAY)
        p.ellipse(u - 0.045, 0.8, 0.035, 0.16, wheel, n=10)
        p.ellipse(u + 0.045, 0.8, 0.035, 0.16, wheel, n=10)


def draw_surfboard(p: Painter, rng: np.random.Generator) -> None:
    color = jitter(rng, pick(rng, [(245, 245, 240), (240, 200, 40), (40, 140, 200), (230, 90, 40)]))
    p.poly([(0.0, 0.5), (0.15, 0.15), (0.6, 0.1), (1.0, 0.5), (0.6, 0.9), (0.15, 0.85)], color)
    p.line([(0.05, 0.5), (0.95, 0.5)], jitter(rng, (40, 40, 160), 30), 0.08)
    p.poly([(0.1, 0.85), (0.2, 0.85), (0.12, 1.0)], darker(color))


def draw_tennis_racket(p: Painter, rng: np.random.Generator) -> None:
    frame = jitter(rng, pick(rng, [(20, 20, 20), (200, 30, 30), (30, 60, 160), (240, 240, 240)]))
    p.rect(0.42, 0.62, 0.58, 1.0, frame)
    p.rect(0.43, 0.78, 0.57, 1.0, jitter(rng, (60, 60, 60)), segment=False)  # grip
    p.ellipse(0.5, 0.32, 0.48, 0.32, frame, n=28)
    p.ellipse(0.5, 0.32, 0.4, 0.26, (225, 225, 210), n=28, segment=False)
    for u in np.arange(0.18, 0.84, 0.07):
        p.line([(u, 0.1), (u, 0.54)], frame, 0.01)
    for v in np.arange(0.1, 0.56, 0.06):
        p.line([(0.12, v), (0.88, v)], frame, 0.01)


# --- food, furniture ---------------------------------------------------------------


def draw_pizza(p: Painter, rng: np.random.Generator) -> None:
    p.circle(0.5, 0.5, 0.5, jitter(rng, (200, 140, 70)), n=32)
    p.circle(0.5, 0.5, 0.43, jitter(rng, (240, 190, 80)), n=32, segment=False)
    for _ in range(int(rng.integers(6, 12))):
        a, r = rng.uniform(0, 2 * np.pi), 0.34 * np.sqrt(rng.uniform(0.05, 1))
        p.circle(
            0.5 + r * np.cos(a),
            0.5 + r * np.sin(a),
            0.06,
            jitter(rng, (170, 40, 30), 10),
            n=12,
            segment=False,
        )
    for _ in range(int(rng.integers(0, 10))):
        a, r = rng.uniform(0, 2 * np.pi), 0.38 * np.sqrt(rng.uniform(0.05, 1))
        p.circle(0.5 + r * np.cos(a), 0.5 + r * np.sin(a), 0.02, (40, 120, 40), n=6, segment=False)
    for k in range(4):
        a = np.pi * k / 4 + 0.2
        p.line(
            [
                (0.5 - 0.45 * np.cos(a), 0.5 - 0.45 * np.sin(a)),
                (0.5 + 0.45 * np.cos(a), 0.5 + 0.45 * np.sin(a)),
            ],
            (150, 90, 40),
            0.01,
        )


def draw_cake(p: Painter, rng: np.random.Generator) -> None:
    base = jitter(rng, pick(rng, [(90, 50, 30), (245, 240, 230), (240, 170, 190), (230, 200, 140)]))
    icing = jitter(
        rng, pick(rng, [(250, 250, 245), (240, 150, 180), (110, 60, 35), (250, 220, 120)])
    )
    p.ellipse(0.5, 0.93, 0.5, 0.07, (235, 235, 240))  # plate
    p.rect(0.06, 0.38, 0.94, 0.9, base)
    p.ellipse(0.5, 0.9, 0.44, 0.05, base)
    p.rect(0.06, 0.6, 0.94, 0.64, icing, segment=False)
    p.ellipse(0.5, 0.38, 0.44, 0.09, icing)
    for u in np.arange(0.1, 0.92, 0.08):
        p.circle(u, 0.44, 0.05, icing, n=8)
    for u in rng.uniform(0.2, 0.8, int(rng.integers(0, 6))):
        p.rect(
            u - 0.012,
            0.2,
            u + 0.012,
            0.36,
            pick(rng, [(240, 120, 150), (120, 180, 240), (250, 250, 250)]),
        )
        p.ellipse(u, 0.16, 0.015, 0.035, (255, 200, 40), n=8)


def draw_bed(p: Painter, rng: np.random.Generator) -> None:
    wood = jitter(rng, pick(rng, [(120, 80, 45), (70, 45, 30), (200, 190, 170)]))
    blanket = jitter(
        rng,
        pick(rng, [(60, 90, 160), (170, 50, 60), (230, 230, 225), (90, 140, 90), (220, 180, 90)]),
    )
    p.rect(0.0, 0.0, 0.12, 0.82, wood)  # headboard
    p.rect(0.08, 0.68, 1.0, 0.82, wood)
    p.rect(0.1, 0.4, 1.0, 0.7, (245, 245, 240))
    p.rect(0.35, 0.36, 1.0, 0.72, blanket)
    for u in np.arange(0.4, 1.0, 0.1):
        p.rect(u, 0.36, u + 0.04, 0.72, darker(blanket, 0.8), segment=False)
    p.ellipse(0.23, 0.38, 0.1, 0.07, (250, 250, 250))
    p.rect(0.0, 0.82, 0.06, 1.0, wood)
    p.rect(0.94, 0.82, 1.0, 1.0, wood)


def draw_toilet(p: Painter, rng: np.random.Generator) -> None:
    white = jitter(rng, (242, 242, 240), 5)
    shade = (200, 200, 205)
    p.rect(0.18, 0.0, 0.82, 0.36, white)
    p.rect(0.18, 0.3, 0.82, 0.36, shade, segment=False)
    p.rect(0.68, 0.06, 0.78, 0.1, GRAY, segment=False)  # flush handle
    p.poly([(0.3, 0.55), (0.7, 0.55), (0.64, 1.0), (0.36, 1.0)], white)
    p.ellipse(0.5, 0.5, 0.46, 0.15, white)
    p.ellipse(0.5, 0.5, 0.36, 0.1, shade, segment=False)
    p.ellipse(0.5, 0.51, 0.28, 0.065, (180, 200, 215), segment=False)


DRAWERS: dict[str, Callable[[Painter, np.random.Generator], None]] = {
    "person": draw_person,
    "motorcycle": draw_motorcycle,
    "airplane": draw_airplane,
    "bus": draw_bus,
    "train": draw_train,
    "fire hydrant": draw_fire_hydrant,
    "stop sign": draw_stop_sign,
    "horse": draw_horse,
    "sheep": draw_sheep,
    "cow": draw_cow,
    "elephant": draw_elephant,
    "zebra": draw_zebra,
    "giraffe": draw_giraffe,
    "umbrella": draw_umbrella,
    "skis": draw_skis,
    "snowboard": draw_snowboard,
    "kite": draw_kite,
    "skateboard": draw_skateboard,
    "surfboard": draw_surfboard,
    "tennis racket": draw_tennis_racket,
    "pizza": draw_pizza,
    "cake": draw_cake,
    "bed": draw_bed,
    "toilet": draw_toilet,
    "clock": draw_clock,
}
"""Category name -> drawer ``(painter, rng)``; the painter's box is already set."""
