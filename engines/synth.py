"""Deterministic synthetic scenes: still images with YOLO labels, and videos with MOT ground truth.

Why synthetic: tests, the demo camera, benchmarks and the shipped demo model all need pictures with
exact ground truth and no licence strings attached. Everything here is a pure function of a seed
(and a frame index), so a test failure reproduces, a stream can restart at any frame, and two
machines render identical pixels.

What a scene has (so a detector trained on it learns shape, not colour):
- 4 classes (:data:`CLASS_NAMES`), each a shape family with random colours, textures, limb poses and
  aspect ratios drawn from the *same* colour distribution for every class;
- cluttered backgrounds: sky/ground gradients, buildings with windows, a road band with lane marks,
  poles, circles and boxes as distractors, low- and high-frequency noise;
- a wide scale range (objects from ~2 % to ~60 % of the picture's long side), truncation at the
  borders, occlusion (objects drawn far to near, visibility measured from an id buffer), motion blur
  along each object's velocity, global gain/gamma drift, optional haze (:mod:`engines.haze`).

Rendering uses NumPy + OpenCV drawing only (no torch). A video pre-renders its background once and
each object's sprite once per appearance, so a 1280x720 frame is a copy, a few small blends and a
lookup table (a few milliseconds).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from engines.haze import add_haze, transmission_map

__all__ = [
    "CLASS_NAMES",
    "GTObject",
    "SceneVideo",
    "render_image",
    "write_yolo_dataset",
    "write_video",
    "cli",
]

#: Class names of the synthetic world. Index = class id.
CLASS_NAMES: list[str] = ["person", "car", "bicycle", "dog"]

PERSON, CAR, BICYCLE, DOG = 0, 1, 2, 3


@dataclass
class GTObject:
    """Ground truth of one object in one picture.

    box is (x1, y1, x2, y2) in pixels, clipped to the picture; it is the object's full (amodal)
    extent, so an occluded object keeps its whole box. visibility is the fraction of the object's
    pixels that are seen (not hidden by nearer objects and not cut off by the picture border), the
    MOTChallenge convention.
    """

    track_id: int
    class_id: int
    box: tuple[float, float, float, float]
    visibility: float = 1.0


# ----------------------------------------------------------------------------------------------
# colours and textures


def _rand_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A colour from one distribution shared by every class (so colour alone never tells class)."""
    hsv = np.array(
        [[[rng.uniform(0, 180), rng.uniform(20, 230), rng.uniform(50, 245)]]], dtype=np.float32
    ).astype(np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def _dark_color(rng: np.random.Generator) -> tuple[int, int, int]:
    v = rng.uniform(15, 70)
    tint = rng.uniform(-10, 10, size=3)
    c = np.clip(v + tint, 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def _shade(color: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * f, 0, 255)) for c in color)  # type: ignore[return-value]


def _texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A multiplicative texture in about 1 +- 0.3: smooth blotches, stripes or fine grain."""
    kind = int(rng.integers(0, 3))
    amp = rng.uniform(0.05, 0.3)
    if kind == 0:
        g = rng.uniform(-1, 1, size=(int(rng.integers(2, 7)), int(rng.integers(2, 7)))).astype(np.float32)
        pat = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(3, max(4.0, 0.3 * max(h, w)))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        pat = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * (2 * math.pi / period))
    else:
        pat = rng.uniform(-1, 1, size=(h, w)).astype(np.float32)
    # a soft top-lit shading gradient gives bodies some volume
    shade = np.linspace(1.1, 0.85, h, dtype=np.float32)[:, None]
    return (1.0 + amp * pat.astype(np.float32)) * shade


# ----------------------------------------------------------------------------------------------
# sprites: one object, drawn on its own canvas with an alpha mask


class _Pen:
    """Draws each primitive on the colour canvas and on the mask at once."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.img = np.zeros((h, w, 3), np.uint8)
        self.mask = np.zeros((h, w), np.uint8)

    def p(self, u: float, v: float) -> tuple[int, int]:
        return int(round(u * (self.w - 1))), int(round(v * (self.h - 1)))

    def circle(self, c: tuple[int, int], r: float, color, thickness: int = -1) -> None:
        r = max(1, int(round(r)))
        cv2.circle(self.img, c, r, color, thickness, cv2.LINE_AA)
        cv2.circle(self.mask, c, r, 255, thickness, cv2.LINE_AA)

    def ellipse(self, c: tuple[int, int], axes: tuple[float, float], angle: float, color) -> None:
        ax = (max(1, int(round(axes[0]))), max(1, int(round(axes[1]))))
        cv2.ellipse(self.img, c, ax, angle, 0, 360, color, -1, cv2.LINE_AA)
        cv2.ellipse(self.mask, c, ax, angle, 0, 360, 255, -1, cv2.LINE_AA)

    def line(self, a: tuple[int, int], b: tuple[int, int], color, thickness: float) -> None:
        t = max(1, int(round(thickness)))
        cv2.line(self.img, a, b, color, t, cv2.LINE_AA)
        cv2.line(self.mask, a, b, 255, t, cv2.LINE_AA)

    def poly(self, pts: list[tuple[int, int]], color) -> None:
        arr = np.array(pts, np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(self.img, [arr], color, cv2.LINE_AA)
        cv2.fillPoly(self.mask, [arr], 255, cv2.LINE_AA)

    def rect(self, a: tuple[int, int], b: tuple[int, int], color) -> None:
        cv2.rectangle(self.img, a, b, color, -1)
        cv2.rectangle(self.mask, a, b, 255, -1)


def _draw_person(L: int, rng: np.random.Generator) -> _Pen:
    h = L
    w = max(8, int(round(L / rng.uniform(2.4, 3.4))))
    pen = _Pen(h, w)
    p = pen.p
    shirt, pants = _rand_color(rng), _rand_color(rng)
    skin = _rand_color(rng) if rng.random() < 0.3 else _shade((205, 160, 125), rng.uniform(0.45, 1.15))
    spread = rng.uniform(0.0, 0.2)
    leg_t = 0.17 * w
    pen.line(p(0.40, 0.56), p(0.40 - spread, 0.98), pants, leg_t)
    pen.line(p(0.60, 0.56), p(0.60 + spread * rng.uniform(0.3, 1.0), 0.98), pants, leg_t)
    if rng.random() < 0.4:  # a coat or dress: a trapezoid over the hips
        pen.poly([p(0.2, 0.3), p(0.8, 0.3), p(0.92, 0.68), p(0.08, 0.68)], shirt)
    pen.ellipse(p(0.5, 0.38), (0.33 * w, 0.19 * h), 0, shirt)
    arm_t = 0.12 * w
    pen.line(p(0.22, 0.25), p(rng.uniform(0.0, 0.15), rng.uniform(0.45, 0.55)), shirt, arm_t)
    pen.line(p(0.78, 0.25), p(rng.uniform(0.85, 1.0), rng.uniform(0.45, 0.55)), shirt, arm_t)
    head_r = min(0.085 * h, 0.3 * w)
    c = (int(round(0.5 * (w - 1))), int(round(head_r + 0.5)))
    pen.circle(c, head_r, skin)
    if rng.random() < 0.6:  # hair or a hat: a darker cap on the head
        cv2.ellipse(pen.img, c, (max(1, int(head_r)), max(1, int(head_r * 0.7))), 0, 180, 360,
                    _dark_color(rng) if rng.random() < 0.7 else _rand_color(rng), -1, cv2.LINE_AA)
    return pen


def _draw_car(L: int, rng: np.random.Generator) -> _Pen:
    w = L
    h = max(6, int(round(L * rng.uniform(0.42, 0.62))))
    pen = _Pen(h, w)
    p = pen.p
    body = _rand_color(rng)
    cab = _shade(body, rng.uniform(0.75, 1.0))
    glass = _shade(_rand_color(rng), 0.35)
    top = rng.uniform(0.02, 0.12)
    fl, fr = rng.uniform(0.12, 0.28), rng.uniform(0.72, 0.88)
    pen.poly([p(fl, 0.42), p(fl + 0.1, top), p(fr - 0.12, top), p(fr, 0.42)], cab)
    pen.poly([p(fl + 0.05, 0.40), p(fl + 0.12, top + 0.07), p(0.49, top + 0.07), p(0.49, 0.40)], glass)
    pen.poly([p(0.52, 0.40), p(0.52, top + 0.07), p(fr - 0.14, top + 0.07), p(fr - 0.04, 0.40)], glass)
    pen.rect(p(0.0, 0.40), p(1.0, 0.80), body)
    pen.line(p(0.03, 0.6), p(0.97, 0.6), _shade(body, 0.6), max(1, 0.02 * h))
    pen.rect(p(0.0, 0.45), p(0.05, 0.56), (235, 225, 150))
    pen.rect(p(0.95, 0.45), p(1.0, 0.56), (200, 40, 30))
    r = 0.19 * h
    tyre, hub = _dark_color(rng), _shade((170, 170, 170), rng.uniform(0.6, 1.2))
    for u in (0.2, 0.8):
        c = (int(round(u * (w - 1))), int(round(h - 1 - r)))
        pen.circle(c, r, tyre)
        pen.circle(c, r * 0.45, hub)
    if rng.random() < 0.5:
        pen.img[:], pen.mask[:] = pen.img[:, ::-1].copy(), pen.mask[:, ::-1].copy()
    return pen


def _draw_bicycle(L: int, rng: np.random.Generator) -> _Pen:
    w = L
    h = max(6, int(round(L * rng.uniform(0.55, 0.7))))
    pen = _Pen(h, w)
    frame_c, tyre = _rand_color(rng), _dark_color(rng)
    r = 0.33 * h
    tt = max(1.0, 0.06 * h)
    hub_y = int(round(h - 1 - r - tt / 2))
    pr = (int(round(r + tt / 2)), hub_y)
    pf = (int(round(w - 1 - r - tt / 2)), hub_y)
    pen.circle(pr, r, tyre, max(1, int(round(tt))))
    pen.circle(pf, r, tyre, max(1, int(round(tt))))
    pc = (int(round(0.46 * w)), hub_y)
    ps = (int(round(0.36 * w)), int(round(0.22 * h)))
    ph = (int(round(0.66 * w)), int(round(0.2 * h)))
    ft = max(1.0, 0.05 * h)
    for a, b in ((pr, ps), (pr, pc), (ps, pc), (ps, ph), (ph, pc), (ph, pf)):
        pen.line(a, b, frame_c, ft)
    bar = (int(round(0.62 * w)), int(round(0.04 * h)))
    pen.line(ph, bar, frame_c, ft)
    pen.line(bar, (int(round(0.72 * w)), int(round(0.03 * h))), _dark_color(rng), ft)
    pen.line((int(round(0.28 * w)), int(round(0.17 * h))), (int(round(0.42 * w)), int(round(0.17 * h))),
             _dark_color(rng), max(1.0, 0.07 * h))
    pen.circle(pc, max(1.0, 0.07 * h), _shade(frame_c, 0.7))
    if rng.random() < 0.5:
        pen.img[:], pen.mask[:] = pen.img[:, ::-1].copy(), pen.mask[:, ::-1].copy()
    return pen


def _draw_dog(L: int, rng: np.random.Generator) -> _Pen:
    w = L
    h = max(6, int(round(L * rng.uniform(0.5, 0.72))))
    pen = _Pen(h, w)
    p = pen.p
    fur = _rand_color(rng)
    dark = _shade(fur, rng.uniform(0.5, 0.8))
    leg_t = 0.07 * w
    for u0, du in ((0.2, -0.04), (0.3, 0.03), (0.58, -0.03), (0.67, 0.04)):
        pen.line(p(u0, 0.5), p(u0 + du * rng.uniform(0.5, 2), 0.97), dark if u0 in (0.3, 0.67) else fur, leg_t)
    pen.ellipse(p(0.44, 0.45), (0.3 * w, 0.19 * h), rng.uniform(-6, 6), fur)
    pen.line(p(0.15, 0.38), p(rng.uniform(0.0, 0.06), rng.uniform(0.05, 0.3)), fur, 0.045 * w)
    pen.line(p(0.66, 0.42), p(0.8, 0.3), fur, 0.12 * w)
    hr = 0.16 * h
    hc = p(0.82, 0.28)
    pen.circle(hc, hr, fur)
    pen.ellipse(p(0.93, 0.34), (0.065 * w, 0.07 * h), 0, _shade(fur, 0.9))
    pen.poly([p(0.74, 0.2), p(0.8, 0.0), p(0.84, 0.18)], dark)
    if rng.random() < 0.5:
        pen.img[:], pen.mask[:] = pen.img[:, ::-1].copy(), pen.mask[:, ::-1].copy()
    return pen


_DRAWERS = (_draw_person, _draw_car, _draw_bicycle, _draw_dog)


@dataclass
class _Sprite:
    """An object's picture: premultiplied colour (float32 0..255) and alpha (float32 0..1), tight box."""

    rgb: np.ndarray
    alpha: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        return self.alpha.shape[0], self.alpha.shape[1]


def _render_sprite(class_id: int, long_side: float, rng: np.random.Generator) -> _Sprite:
    """Draw an object of class `class_id` whose longer side is about `long_side` pixels.

    Small objects are drawn at >= 48 px and shrunk with area interpolation, so a 10 px person
    still looks like a blurred figure rather than a few aliased pixels.
    """
    target = max(3.0, float(long_side))
    draw_L = int(round(max(48.0, target)))
    pen = _DRAWERS[class_id](draw_L, rng)
    ys, xs = np.nonzero(pen.mask > 0)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    img = pen.img[y0:y1, x0:x1].astype(np.float32)
    alpha = pen.mask[y0:y1, x0:x1].astype(np.float32) * (1.0 / 255.0)
    img *= _texture(img.shape[0], img.shape[1], rng)[:, :, None]
    np.clip(img, 0, 255, out=img)
    return _scale_sprite(_Sprite(img * alpha[:, :, None], alpha), target / max(img.shape[:2]))


def _scale_sprite(s: _Sprite, f: float) -> _Sprite:
    if abs(f - 1.0) < 1e-3:
        return s
    h, w = s.size
    nh, nw = max(1, int(round(h * f))), max(1, int(round(w * f)))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    return _Sprite(cv2.resize(s.rgb, (nw, nh), interpolation=interp),
                   cv2.resize(s.alpha, (nw, nh), interpolation=interp))


def _motion_blur(s: _Sprite, dx: float, dy: float) -> tuple[_Sprite, int]:
    """Blur along the motion vector (dx, dy) in pixels per exposure; returns sprite and padding.

    The sprite is padded by the kernel radius so the smear can leave the tight box, as it does in
    a real camera; the ground-truth box stays the unblurred object (what annotators mark).
    """
    length = math.hypot(dx, dy)
    if length < 1.5:
        return s, 0
    k = int(math.ceil(length)) | 1
    kern = np.zeros((k, k), np.float32)
    c = k // 2
    ux, uy = dx / length, dy / length
    half = (length - 1) / 2
    cv2.line(kern, (int(round(c - ux * half)), int(round(c - uy * half))),
             (int(round(c + ux * half)), int(round(c + uy * half))), 1.0, 1, cv2.LINE_AA)
    kern /= kern.sum()
    pad = c
    rgb = cv2.copyMakeBorder(s.rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    alpha = cv2.copyMakeBorder(s.alpha, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    rgb = cv2.filter2D(rgb, -1, kern, borderType=cv2.BORDER_CONSTANT)
    alpha = cv2.filter2D(alpha, -1, kern, borderType=cv2.BORDER_CONSTANT)
    return _Sprite(rgb, alpha), pad


# ----------------------------------------------------------------------------------------------
# backgrounds


def _render_background(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A cluttered street-like background; returns (RGB uint8 image, horizon row)."""
    horizon = int(h * rng.uniform(0.15, 0.42))
    img = np.empty((h, w, 3), np.float32)
    sky0, sky1 = np.array(_rand_color(rng), np.float32), np.array(_rand_color(rng), np.float32)
    g0, g1 = np.array(_rand_color(rng), np.float32) * 0.8, np.array(_rand_color(rng), np.float32) * 0.8
    if horizon > 0:
        a = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
        img[:horizon] = sky0 * (1 - a) + sky1 * a
    a = np.linspace(0, 1, h - horizon, dtype=np.float32)[:, None, None]
    img[horizon:] = g0 * (1 - a) + g1 * a
    # low-frequency blotches over the whole picture (lighting, dirt)
    lf = rng.uniform(-1, 1, size=(int(rng.integers(3, 9)), int(rng.integers(3, 12)))).astype(np.float32)
    img *= (1 + rng.uniform(0.05, 0.25) * cv2.resize(lf, (w, h), interpolation=cv2.INTER_CUBIC))[:, :, None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    unit = max(h, w) / 640.0
    # buildings along the horizon, with window grids (hard edges, repeated structure)
    x = int(rng.uniform(-0.1, 0.05) * w)
    while x < w:
        bw = int(rng.uniform(0.06, 0.25) * w)
        top = int(horizon - rng.uniform(0.05, 0.4) * h)
        col = _rand_color(rng)
        cv2.rectangle(img, (x, top), (x + bw, horizon + int(0.02 * h)), col, -1)
        if rng.random() < 0.7:
            wc = _shade(_rand_color(rng), rng.uniform(0.4, 1.0))
            step = max(4, int(rng.uniform(8, 20) * unit))
            for yy in range(top + step // 2, horizon - step // 2, step):
                for xx in range(x + step // 2, x + bw - step // 2, step):
                    cv2.rectangle(img, (xx, yy), (xx + step // 2, yy + step // 2), wc, -1)
        x += bw + int(rng.uniform(0, 0.05) * w)
    # a road band with dashed lane marks
    if rng.random() < 0.85:
        y0 = int(rng.uniform(horizon + 0.05 * h, 0.7 * h))
        y1 = min(h, y0 + int(rng.uniform(0.15, 0.35) * h))
        grey = int(rng.uniform(50, 140))
        cv2.rectangle(img, (0, y0), (w, y1), _shade((grey, grey, grey), 1.0), -1)
        lane_y = (y0 + y1) // 2
        dash, gap = max(1, int(rng.uniform(15, 40) * unit)), max(1, int(rng.uniform(10, 30) * unit))
        lt = max(1, int(rng.uniform(2, 5) * unit))
        for xx in range(int(rng.uniform(-dash, 0)), w, dash + gap):
            cv2.rectangle(img, (xx, lane_y - lt), (xx + dash, lane_y + lt), (230, 230, 220), -1)
        cv2.line(img, (0, y0), (w, y0), (200, 200, 200), lt)
    # distractors: poles, boxes, rings, discs, lines (parts that look like parts of objects)
    for _ in range(int(rng.integers(8, 30))):
        kind = int(rng.integers(0, 5))
        col = _rand_color(rng)
        cx, cy = int(rng.uniform(0, w)), int(rng.uniform(horizon * 0.5, h))
        s = int(rng.uniform(3, 40) * unit)
        if kind == 0:
            cv2.rectangle(img, (cx, cy), (cx + max(1, s // 5), cy + s * 3), col, -1)
        elif kind == 1:
            cv2.rectangle(img, (cx, cy), (cx + s, cy + int(s * rng.uniform(0.3, 1.5))), col, -1)
        elif kind == 2:
            cv2.circle(img, (cx, cy), s // 2 + 1, col, max(1, s // 8), cv2.LINE_AA)
        elif kind == 3:
            cv2.ellipse(img, (cx, cy), (s // 2 + 1, s // 4 + 1), rng.uniform(0, 180), 0, 360, col, -1,
                        cv2.LINE_AA)
        else:
            cv2.line(img, (cx, cy), (cx + int(rng.uniform(-3, 3) * s), cy + int(rng.uniform(-1, 1) * s)),
                     col, max(1, s // 10), cv2.LINE_AA)
    noise = rng.standard_normal(size=(h, w, 1), dtype=np.float32) * np.float32(rng.uniform(2, 8))
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (3, 3), 0), horizon


def _lighting_lut(gain: float, gamma: float) -> np.ndarray:
    v = np.arange(256, dtype=np.float32) / 255.0
    return np.clip(255.0 * gain * np.power(v, gamma) + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# compositing


def _composite(
    frame: np.ndarray,
    ids: np.ndarray,
    sprite: _Sprite,
    x0: int,
    y0: int,
    label: int,
    t_rows: np.ndarray | None = None,
    airlight: float = 0.9,
) -> tuple[int, int] | None:
    """Blend a premultiplied sprite into `frame` at (x0, y0); mark its solid pixels in `ids`.

    Returns (y_offset, x_offset) of the clipped region, or None when nothing is inside the frame.
    With `t_rows` (transmission per row), the sprite is hazed with the rows it lands on, so a
    hazy video pays for haze only on its moving objects (the background was hazed once).
    """
    H, W = frame.shape[:2]
    h, w = sprite.size
    fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(W, x0 + w), min(H, y0 + h)
    if fx0 >= fx1 or fy0 >= fy1:
        return None
    sx0, sy0 = fx0 - x0, fy0 - y0
    a = sprite.alpha[sy0:sy0 + fy1 - fy0, sx0:sx0 + fx1 - fx0]
    c = sprite.rgb[sy0:sy0 + fy1 - fy0, sx0:sx0 + fx1 - fx0]
    if t_rows is not None:
        t = t_rows[fy0:fy1].reshape(-1, 1, 1)
        c = c * t + (255.0 * airlight) * (1.0 - t) * a[:, :, None]
    region = frame[fy0:fy1, fx0:fx1]
    out = region.astype(np.float32) * (1.0 - a[:, :, None]) + c
    frame[fy0:fy1, fx0:fx1] = np.clip(out, 0, 255).astype(np.uint8)
    ids[fy0:fy1, fx0:fx1][a > 0.5] = label
    return sy0, sx0


@dataclass
class _Placed:
    """An object placed in a picture, for visibility accounting."""

    track_id: int
    class_id: int
    x0: int
    y0: int
    h: int
    w: int
    solid: np.ndarray  # bool mask of the unblurred sprite (alpha > 0.5)


def _ground_truth(placed: list[_Placed], ids: np.ndarray, min_size: float = 2.0) -> list[GTObject]:
    """Boxes clipped to the picture and visibility from the id buffer (label = position + 1)."""
    H, W = ids.shape
    out: list[GTObject] = []
    for k, p in enumerate(placed):
        total = int(p.solid.sum())
        x1, y1 = max(0, p.x0), max(0, p.y0)
        x2, y2 = min(W, p.x0 + p.w), min(H, p.y0 + p.h)
        if total == 0 or x2 - x1 < min_size or y2 - y1 < min_size:
            continue
        sub = ids[y1:y2, x1:x2] == (k + 1)
        solid = p.solid[y1 - p.y0:y2 - p.y0, x1 - p.x0:x2 - p.x0]
        vis = float(np.count_nonzero(sub & solid)) / total
        if vis <= 0.0:
            continue
        out.append(GTObject(p.track_id, p.class_id, (float(x1), float(y1), float(x2), float(y2)), vis))
    return out


# ----------------------------------------------------------------------------------------------
# still images (training data)


def render_image(
    seed: int | tuple[int, ...],
    width: int,
    height: int,
    haze: float = 0.0,
    max_objects: int = 12,
) -> tuple[np.ndarray, list[GTObject]]:
    """One random still picture and its ground truth; a pure function of the arguments.

    haze is 1 - transmission at the farthest rows (0 = clear). Objects get track ids 1..n in
    drawing order (far to near). Objects less than 20 % visible are left out of the ground truth
    (they are mostly hidden; a label on a few pixels teaches the model noise).
    """
    if width < 16 or height < 16:
        raise ValueError(f"render_image needs at least 16x16 pixels, got {width}x{height}")
    rng = np.random.default_rng(seed)
    frame, horizon = _render_background(height, width, rng)
    n = 0 if rng.random() < 0.04 else int(rng.integers(1, max_objects + 1))
    S = max(width, height)
    objs = []
    for _ in range(n):
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        L = math.exp(rng.uniform(math.log(0.02 * S), math.log(0.6 * S)))
        sprite = _render_sprite(cls, L, rng)
        h, w = sprite.size
        cx = rng.uniform(-0.05 * width, 1.05 * width)
        yb = rng.uniform(horizon + 0.3 * h, height + 0.25 * h)
        blur = (rng.normal(0, 0.06 * L), rng.normal(0, 0.015 * L)) if rng.random() < 0.3 else (0.0, 0.0)
        objs.append((yb, cls, sprite, int(round(cx - w / 2)), int(round(yb - h)), blur))
    objs.sort(key=lambda o: o[0])
    ids = np.zeros((height, width), np.uint8)
    placed: list[_Placed] = []
    for k, (_, cls, sprite, x0, y0, blur) in enumerate(objs):
        solid = sprite.alpha > 0.5
        drawn, pad = _motion_blur(sprite, *blur)
        _composite(frame, ids, drawn, x0 - pad, y0 - pad, 0)
        # visibility is judged on the solid (unblurred) shape, in the id buffer
        h, w = sprite.size
        fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(width, x0 + w), min(height, y0 + h)
        if fx0 < fx1 and fy0 < fy1:
            ids[fy0:fy1, fx0:fx1][solid[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]] = k + 1
        placed.append(_Placed(k + 1, cls, x0, y0, h, w, solid))
    gts = [g for g in _ground_truth(placed, ids) if g.visibility >= 0.2]
    frame = cv2.LUT(frame, _lighting_lut(rng.uniform(0.7, 1.3), rng.uniform(0.75, 1.35)))
    if haze > 0:
        frame = add_haze(frame, 1.0 - float(haze), airlight=rng.uniform(0.75, 0.95), rng=rng)
    sigma = rng.uniform(0, 6)
    if sigma > 0.5:
        noisy = frame.astype(np.float32) + rng.standard_normal(size=frame.shape, dtype=np.float32) * np.float32(sigma)
        frame = np.clip(noisy, 0, 255).astype(np.uint8)
    return frame, gts


def _yolo_rows(gts: list[GTObject], width: int, height: int) -> str:
    lines = []
    for g in gts:
        x1, y1, x2, y2 = g.box
        lines.append(
            f"{g.class_id} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
            f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}"
        )
    return "\n".join(lines) + ("\n" if lines else "")


_ASPECTS = (1.0, 4 / 3, 16 / 9, 3 / 2, 3 / 4, 9 / 16)


def _write_still(job: tuple[Path, Path, int, int, int, int, float]) -> None:
    """Render and write one dataset image and its label file (a pure function of its job)."""
    img_dir, lab_dir, seed, split_id, i, imgsz, haze_fraction = job
    rng = np.random.default_rng([seed, split_id, i, 7])
    long_side = int(round(imgsz * rng.uniform(0.75, 1.25)))
    aspect = _ASPECTS[int(rng.integers(0, len(_ASPECTS)))]
    if aspect >= 1:
        w, h = long_side, int(round(long_side / aspect))
    else:
        h, w = long_side, int(round(long_side * aspect))
    haze = rng.uniform(0.2, 0.7) if rng.random() < haze_fraction else 0.0
    img, gts = render_image((seed, split_id, i), w, h, haze=haze)
    name = f"{i:06d}"
    ok = cv2.imwrite(str(img_dir / f"{name}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                     [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise OSError(f"could not write {img_dir / (name + '.jpg')}")
    (lab_dir / f"{name}.txt").write_text(_yolo_rows(gts, w, h))


def write_yolo_dataset(
    out_dir: Path,
    n_train: int,
    n_val: int,
    imgsz: int = 320,
    seed: int = 0,
    haze_fraction: float = 0.0,
    workers: int = 1,
) -> Path:
    """Write a YOLO-format dataset of synthetic stills and return its data.yaml path.

    Layout: images/{train,val}/NNNNNN.jpg, labels/{train,val}/NNNNNN.txt (``cls cx cy w h``,
    normalised), data.yaml with path/train/val/names. Picture sizes vary around `imgsz` (long side
    0.75..1.25 x imgsz, several aspect ratios) so letterboxing and scale augmentation get exercised.
    `haze_fraction` of the pictures get haze of random thickness. Train and val never share a seed.
    Every image is a pure function of (seed, split, index), so `workers` > 1 (processes) writes
    the same files faster on a machine with free cores.
    """
    import yaml

    if n_train < 0 or n_val < 0 or (n_train + n_val) == 0:
        raise ValueError(f"need a positive number of images, got train={n_train} val={n_val}")
    if imgsz < 32:
        raise ValueError(f"imgsz must be at least 32, got {imgsz}")
    if not 0.0 <= haze_fraction <= 1.0:
        raise ValueError(f"haze_fraction must be in 0..1, got {haze_fraction}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)
    jobs = []
    for split, n, split_id in (("train", n_train, 0), ("val", n_val, 1)):
        img_dir, lab_dir = out_dir / "images" / split, out_dir / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        jobs.extend((img_dir, lab_dir, int(seed), split_id, i, int(imgsz), float(haze_fraction)) for i in range(n))
    if workers == 1:
        for job in jobs:
            _write_still(job)
    else:
        import multiprocessing as mp

        # fork: workers inherit this module as loaded (spawn would re-run the caller's __main__)
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_still, jobs, chunksize=16):
                pass
    data = {
        "path": str(out_dir.resolve()),
        "train": "images/train",
        "val": "images/val",
        "nc": len(CLASS_NAMES),
        "names": list(CLASS_NAMES),
    }
    yaml_path = out_dir / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return yaml_path


# ----------------------------------------------------------------------------------------------
# video


# base long side (pixels at the bottom of a 720-row frame) and speed (pixels/second) per class
_BASE_SIZE = {PERSON: 200.0, CAR: 300.0, BICYCLE: 190.0, DOG: 110.0}
_SPEED = {PERSON: (40.0, 110.0), CAR: (180.0, 420.0), BICYCLE: (110.0, 230.0), DOG: (70.0, 170.0)}


@dataclass
class _Life:
    """One appearance of an object in a slot: from entering to leaving the frame."""

    j: int  # the slot's life number (0, 1, 2, ...)
    start: float  # frame index at which it enters (may be negative: already in view at frame 0)
    duration: float  # frames
    track_id: int
    class_id: int
    size_mul: float
    p0: tuple[float, float]  # (x centre, bottom y) at the start, in frame-height units
    p1: tuple[float, float]
    wiggle: tuple[float, float, float]  # amplitude (px at 720), cycles per life, phase
    slow: float  # time-warp strength 0..0.85: slows down mid-way (loitering)
    sprite_seed: int


class SceneVideo:
    """A deterministic synthetic camera: `frame(i)` is a pure function of (seed, i).

    Objects live in `num_objects` slots. Each slot holds one object at a time, which enters, moves
    along a smooth path (constant heading with a lateral wiggle and an optional mid-way slow-down)
    and leaves; then, after a short gap, a new object with a new `track_id` enters. Slot 0 always
    moves vertically and crosses the horizontal middle line (y = height / 2); the other slots move
    horizontally with their feet in the lower 2/3 of the frame, so all of them pass through
    :attr:`zone_hint`. Size follows a simple perspective: objects lower in the frame are bigger.

    haze is 1 - transmission at the farthest rows (0 = clear, 0.7 = thick).
    """

    def __init__(
        self,
        seed: int,
        width: int = 1280,
        height: int = 720,
        fps: float = 25.0,
        num_objects: int = 6,
        haze: float = 0.0,
    ) -> None:
        if width < 32 or height < 32:
            raise ValueError(f"SceneVideo needs at least 32x32 pixels, got {width}x{height}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if num_objects < 0 or num_objects > 250:
            raise ValueError(f"num_objects must be 0..250, got {num_objects}")
        if not 0.0 <= haze < 1.0:
            raise ValueError(f"haze must be in [0, 1), got {haze}")
        self.seed, self.width, self.height = int(seed), int(width), int(height)
        self.fps, self.num_objects, self.haze = float(fps), int(num_objects), float(haze)
        rng = np.random.default_rng([self.seed, 0xB6])
        bg, horizon = _render_background(self.height, self.width, rng)
        self.horizon = horizon
        self._airlight = 0.88
        self._t_rows: np.ndarray | None = None
        if self.haze > 0:
            self._t_rows = transmission_map(self.height, self.width, 1.0 - self.haze, True, 0.3)
            bg = add_haze(bg, self._t_rows, self._airlight)
        self.background = bg
        light = np.random.default_rng([self.seed, 0x11]).uniform(0, 2 * math.pi, size=4)
        self._light_phase = light
        self._lives: list[list[_Life]] = [[] for _ in range(self.num_objects)]
        self._max_lives = 64
        self._sprites: OrderedDict[int, _Sprite] = OrderedDict()

    # -- geometry hints for tests and demos -----------------------------------------------------
    @property
    def middle_line(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """A horizontal line across the middle of the frame that slot 0's objects cross."""
        y = self.height / 2
        return (0.0, y), (float(self.width), y)

    @property
    def zone_hint(self) -> tuple[float, float, float, float]:
        """A box (x1, y1, x2, y2) in the middle of the frame that every horizontal mover crosses."""
        return (0.4 * self.width, 0.35 * self.height, 0.6 * self.width, 1.0 * self.height)

    # -- timeline ------------------------------------------------------------------------------
    def _new_life(self, slot: int, j: int, start: float | None) -> _Life:
        rng = np.random.default_rng([self.seed, slot, j, 0x5CE])
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        size_mul = math.exp(rng.uniform(math.log(0.4), math.log(1.4)))
        aspect = self.width / self.height
        # largest long side this object reaches (perspective scale tops out at 1.3), in heights
        l_max = _BASE_SIZE[cls] / 720.0 * size_mul * 1.3
        if slot == 0:
            x_a, x_b = rng.uniform(0.2, 0.8) * aspect, rng.uniform(0.2, 0.8) * aspect
            top, bottom = rng.uniform(0.12, 0.3), 1.02 + l_max  # leaves just past the bottom edge
            p0, p1 = ((x_a, top), (x_b, bottom)) if rng.random() < 0.5 else ((x_b, bottom), (x_a, top))
        else:
            ya, yb = rng.uniform(0.4, 1.05), rng.uniform(0.4, 1.05)
            margin = 0.5 * l_max + 0.02
            p0, p1 = (-margin, ya), (aspect + margin, yb)
            if rng.random() < 0.5:
                p0, p1 = (p1[0], yb), (p0[0], ya)
        dist = math.hypot(p1[0] - p0[0], p1[1] - p0[1]) * self.height
        speed = rng.uniform(*_SPEED[cls]) * (self.height / 720.0) * (0.6 + 0.4 * size_mul)
        duration = max(8.0, dist / speed * self.fps)
        wig = (rng.uniform(0, 25.0), rng.uniform(0.5, 2.5), rng.uniform(0, 2 * math.pi))
        slow = rng.uniform(0.0, 0.85) if rng.random() < 0.5 else 0.0
        if start is None:
            start = -rng.uniform(0.0, 0.9) * duration
        return _Life(j, start, duration, j * self.num_objects + slot + 1, cls, size_mul, p0, p1, wig, slow,
                     int(rng.integers(0, 2**31)))

    def _life_at(self, slot: int, index: int) -> _Life | None:
        lives = self._lives[slot]
        if not lives or lives[0].start > index:
            # first call, or a jump back before the kept window: replay the timeline from life 0
            lives.clear()
            lives.append(self._new_life(slot, 0, None))
        while lives[-1].start + lives[-1].duration <= index:
            last = lives[-1]
            gap_rng = np.random.default_rng([self.seed, slot, last.j + 1, 0x6A9])
            gap = gap_rng.uniform(0.0, 2.5) * self.fps
            lives.append(self._new_life(slot, last.j + 1, last.start + last.duration + gap))
            if len(lives) > self._max_lives:  # bounded memory on endless streams
                del lives[: len(lives) - self._max_lives // 2]
        # binary search for the life covering this index
        lo, hi = 0, len(lives) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if lives[mid].start <= index:
                lo = mid
            else:
                hi = mid - 1
        life = lives[lo]
        if life.start <= index < life.start + life.duration:
            return life
        return None

    def _position(self, life: _Life, t: float) -> tuple[float, float]:
        """(x centre, bottom y) in pixels at frame time t (may lie outside the frame)."""
        tau = min(max((t - life.start) / life.duration, 0.0), 1.0)
        u = tau - life.slow * math.sin(2 * math.pi * tau) / (2 * math.pi)  # monotone, slow mid-way
        x = (life.p0[0] + (life.p1[0] - life.p0[0]) * u) * self.height
        y = (life.p0[1] + (life.p1[1] - life.p0[1]) * u) * self.height
        amp, cycles, phase = life.wiggle
        off = amp * (self.height / 720.0) * math.sin(2 * math.pi * cycles * tau + phase)
        dx, dy = life.p1[0] - life.p0[0], life.p1[1] - life.p0[1]
        n = math.hypot(dx, dy) or 1.0
        return x - dy / n * off, y + dx / n * off

    def _scale(self, y_bottom: float) -> float:
        """Perspective: 1 at the bottom row, shrinking towards the horizon."""
        return float(np.clip(0.2 + 0.8 * y_bottom / self.height, 0.2, 1.3))

    def _sprite(self, life: _Life) -> _Sprite:
        s = self._sprites.get(life.track_id)
        if s is None:
            L = _BASE_SIZE[life.class_id] * life.size_mul * self.height / 720.0
            s = _render_sprite(life.class_id, max(8.0, L), np.random.default_rng(life.sprite_seed))
            self._sprites[life.track_id] = s
            while len(self._sprites) > 4 * self.num_objects + 8:  # bounded: old lives never return
                self._sprites.popitem(last=False)
        else:
            self._sprites.move_to_end(life.track_id)
        return s

    def _lighting(self, index: int) -> np.ndarray:
        t = index / self.fps
        ph = self._light_phase
        gain = 1.0 + 0.12 * math.sin(2 * math.pi * t / 23.0 + ph[0]) + 0.05 * math.sin(2 * math.pi * t / 7.0 + ph[1])
        gamma = 1.0 + 0.12 * math.sin(2 * math.pi * t / 31.0 + ph[2])
        return _lighting_lut(gain, gamma)

    # -- rendering -----------------------------------------------------------------------------
    def background_frame(self, index: int) -> np.ndarray:
        """The empty scene at frame `index` (background with that frame's lighting)."""
        return cv2.LUT(self.background, self._lighting(index))

    def ground_truth(self, index: int) -> list[GTObject]:
        """Ground truth of frame `index` without painting it, for tracker benchmarks that need only
        labels: the same objects and boxes as `frame(index)[1]` in about half the time. Visibility
        can differ by a few hundredths, because motion-blurred sprite edges are not painted over the
        objects behind them."""
        return self._render(index, paint=False)[1]

    def frame(self, index: int) -> tuple[np.ndarray, list[GTObject]]:
        """Render frame `index` (0-based): RGB uint8 [height, width, 3] and its ground truth."""
        img, gts = self._render(index, paint=True)
        assert img is not None
        return img, gts

    def _render(self, index: int, paint: bool) -> tuple[np.ndarray | None, list[GTObject]]:
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        placed_src = []
        for slot in range(self.num_objects):
            life = self._life_at(slot, index)
            if life is None:
                continue
            x, yb = self._position(life, index)
            # motion over half a frame interval (a 1/50 s shutter at 25 fps)
            xa, ya = self._position(life, index - 0.25)
            xb, yb2 = self._position(life, index + 0.25)
            placed_src.append((yb, life, x, xb - xa, yb2 - ya))
        placed_src.sort(key=lambda o: o[0])
        frame = self.background.copy() if paint else None
        ids = np.zeros((self.height, self.width), np.uint8)
        placed: list[_Placed] = []
        for k, (yb, life, x, vx, vy) in enumerate(placed_src):
            base = self._sprite(life)
            sprite = _scale_sprite(base, self._scale(yb))
            h, w = sprite.size
            x0, y0 = int(round(x - w / 2)), int(round(yb - h))
            if x0 >= self.width or y0 >= self.height or x0 + w <= 0 or y0 + h <= 0:
                continue
            solid = sprite.alpha > 0.5
            if frame is not None:
                drawn, pad = _motion_blur(sprite, vx, vy)
                _composite(frame, ids, drawn, x0 - pad, y0 - pad, 0, self._t_rows, self._airlight)
            fx0, fy0 = max(0, x0), max(0, y0)
            fx1, fy1 = min(self.width, x0 + w), min(self.height, y0 + h)
            ids[fy0:fy1, fx0:fx1][solid[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]] = len(placed) + 1
            placed.append(_Placed(life.track_id, life.class_id, x0, y0, h, w, solid))
        gts = _ground_truth(placed, ids)
        return (None if frame is None else cv2.LUT(frame, self._lighting(index))), gts


def _codec_name(codec: str) -> str:
    return {"h264": "libx264", "avc": "libx264", "hevc": "libx265", "h265": "libx265"}.get(codec, codec)


def write_video(
    path: Path,
    seed: int,
    frames: int,
    width: int,
    height: int,
    fps: float,
    num_objects: int = 6,
    haze: float = 0.0,
    codec: str = "h264",
) -> Path:
    """Encode a :class:`SceneVideo` to a file with PyAV and write MOTChallenge ground truth beside it.

    The container comes from the suffix (.mp4, .mkv, .ts, ...); H.264 is libx264 with yuv420p
    (so width and height must be even). Ground truth goes to ``<stem>.gt.txt`` in the same folder,
    one row per object per frame: ``frame,id,x,y,w,h,1,class_id,visibility`` with 1-based frames,
    top-left/width/height boxes in pixels and our 0-based class ids.
    """
    import av

    path = Path(path)
    if frames <= 0:
        raise ValueError(f"frames must be positive, got {frames}")
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p video needs even width and height, got {width}x{height}")
    scene = SceneVideo(seed, width, height, fps, num_objects, haze)
    codec_name = _codec_name(codec)
    try:
        av.codec.Codec(codec_name, "w")
    except Exception:
        raise ValueError(f"unknown or unavailable video encoder {codec!r}; use h264 (libx264), hevc or mpeg4") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    gt_path = path.with_name(path.stem + ".gt.txt")
    rows: list[str] = []
    try:
        container = av.open(str(path), mode="w")
    except ValueError:
        raise ValueError(f"cannot tell the container format from {path.name!r}; use a .mp4, .mkv or .ts "
                         "suffix") from None
    try:
        stream = container.add_stream(codec_name, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if stream.codec_context.name in ("libx264", "libx265"):
            stream.options = {"preset": "veryfast", "crf": "20"}
        for i in range(frames):
            img, gts = scene.frame(i)
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1) / rate
            for packet in stream.encode(vf):
                container.mux(packet)
            for g in gts:
                x1, y1, x2, y2 = g.box
                rows.append(f"{i + 1},{g.track_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},1,"
                            f"{g.class_id},{g.visibility:.4f}")
        for packet in stream.encode(None):
            container.mux(packet)
    finally:
        container.close()
    gt_path.write_text("\n".join(rows) + ("\n" if rows else ""))
    return path


# ----------------------------------------------------------------------------------------------
# command line


def _check_cli(argv: list[str]) -> int:
    """`vap data check DATA.yaml`: validate a YOLO dataset and print what is wrong with it."""
    from engines.dataset import DatasetError, load_data_yaml, validate_dataset

    ap = argparse.ArgumentParser(prog="vap data check",
                                 description="Validate a YOLO dataset: every image and label of each split.")
    ap.add_argument("data", type=Path, help="data.yaml")
    ap.add_argument("--examples", type=int, default=5, help="example paths shown per problem")
    args = ap.parse_args(argv)
    try:
        spec = load_data_yaml(args.data)
    except DatasetError as e:
        print(f"vap data check: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.data}: {len(spec.names)} classes ({', '.join(spec.names)}), root {spec.root}")
    rc = 0
    for split in ("train", "val"):
        if not getattr(spec, split):
            print(f"{split}: none")
            continue
        try:
            print(validate_dataset(spec, split, max_examples=args.examples).summary())
        except DatasetError as e:
            print(f"vap data check: error: {e}", file=sys.stderr)
            rc = 2
    return rc


def cli(argv: list[str]) -> int:
    """`vap data synth ...` (write a synthetic YOLO dataset or video) and `vap data check DATA.yaml`."""
    argv = list(argv)
    try:
        if argv[:1] == ["check"]:
            return _check_cli(argv[1:])
        if argv[:1] == ["synth"]:
            argv = argv[1:]
        return _synth_cli(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, message already printed)
        return e.code if isinstance(e.code, int) else 2


def _synth_cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="vap data synth",
        description="Write deterministic synthetic data: a YOLO dataset (--dataset) or a video with "
        "MOTChallenge ground truth (--video).",
    )
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset", type=Path, metavar="OUT", help="folder for a YOLO dataset")
    what.add_argument("--video", type=Path, metavar="OUT.mp4", help="video file (.mp4, .mkv, .ts)")
    ap.add_argument("--train", type=int, default=2000, help="training images (dataset)")
    ap.add_argument("--val", type=int, default=300, help="validation images (dataset)")
    ap.add_argument("--imgsz", type=int, default=320, help="typical image long side (dataset)")
    ap.add_argument("--frames", type=int, default=250, help="frames (video)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--objects", type=int, default=6, help="objects in view at once (video)")
    ap.add_argument("--codec", default="h264", help="video codec (default h264)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--haze", type=float, default=0.0,
                    help="dataset: fraction of hazy images; video: haze thickness 0..1")
    ap.add_argument("--workers", type=int, default=1, help="processes writing the dataset")
    args = ap.parse_args(argv)
    try:
        if args.dataset is not None:
            yaml_path = write_yolo_dataset(args.dataset, args.train, args.val, args.imgsz, args.seed, args.haze,
                                           workers=args.workers)
            print(f"wrote {args.train} train + {args.val} val images; data config: {yaml_path}")
        else:
            out = write_video(args.video, args.seed, args.frames, args.width, args.height, args.fps,
                              args.objects, args.haze, args.codec)
            print(f"wrote {out} ({args.frames} frames) and ground truth "
                  f"{out.with_name(out.stem + '.gt.txt')}")
    except (ValueError, OSError) as e:
        print(f"vap data synth: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # PyAV raises its own errors (unknown codec, bad container)
        if type(e).__module__.startswith("av"):
            print(f"vap data synth: video error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
