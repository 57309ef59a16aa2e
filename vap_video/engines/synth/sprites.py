"""Object sprites: the four class shape families with random colours, textures and poses, scaled and
motion-blurred per appearance."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np



def rand_color(rng: np.random.Generator) -> tuple[int, int, int]:
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


def shade(color: tuple[int, int, int], f: float) -> tuple[int, int, int]:
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
    shirt, pants = rand_color(rng), rand_color(rng)
    skin = rand_color(rng) if rng.random() < 0.3 else shade((205, 160, 125), rng.uniform(0.45, 1.15))
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
                    _dark_color(rng) if rng.random() < 0.7 else rand_color(rng), -1, cv2.LINE_AA)
    return pen


def _draw_car(L: int, rng: np.random.Generator) -> _Pen:
    w = L
    h = max(6, int(round(L * rng.uniform(0.42, 0.62))))
    pen = _Pen(h, w)
    p = pen.p
    body = rand_color(rng)
    cab = shade(body, rng.uniform(0.75, 1.0))
    glass = shade(rand_color(rng), 0.35)
    top = rng.uniform(0.02, 0.12)
    fl, fr = rng.uniform(0.12, 0.28), rng.uniform(0.72, 0.88)
    pen.poly([p(fl, 0.42), p(fl + 0.1, top), p(fr - 0.12, top), p(fr, 0.42)], cab)
    pen.poly([p(fl + 0.05, 0.40), p(fl + 0.12, top + 0.07), p(0.49, top + 0.07), p(0.49, 0.40)], glass)
    pen.poly([p(0.52, 0.40), p(0.52, top + 0.07), p(fr - 0.14, top + 0.07), p(fr - 0.04, 0.40)], glass)
    pen.rect(p(0.0, 0.40), p(1.0, 0.80), body)
    pen.line(p(0.03, 0.6), p(0.97, 0.6), shade(body, 0.6), max(1, 0.02 * h))
    pen.rect(p(0.0, 0.45), p(0.05, 0.56), (235, 225, 150))
    pen.rect(p(0.95, 0.45), p(1.0, 0.56), (200, 40, 30))
    r = 0.19 * h
    tyre, hub = _dark_color(rng), shade((170, 170, 170), rng.uniform(0.6, 1.2))
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
    frame_c, tyre = rand_color(rng), _dark_color(rng)
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
    pen.circle(pc, max(1.0, 0.07 * h), shade(frame_c, 0.7))
    if rng.random() < 0.5:
        pen.img[:], pen.mask[:] = pen.img[:, ::-1].copy(), pen.mask[:, ::-1].copy()
    return pen


def _draw_dog(L: int, rng: np.random.Generator) -> _Pen:
    w = L
    h = max(6, int(round(L * rng.uniform(0.5, 0.72))))
    pen = _Pen(h, w)
    p = pen.p
    fur = rand_color(rng)
    dark = shade(fur, rng.uniform(0.5, 0.8))
    leg_t = 0.07 * w
    for u0, du in ((0.2, -0.04), (0.3, 0.03), (0.58, -0.03), (0.67, 0.04)):
        pen.line(p(u0, 0.5), p(u0 + du * rng.uniform(0.5, 2), 0.97), dark if u0 in (0.3, 0.67) else fur, leg_t)
    pen.ellipse(p(0.44, 0.45), (0.3 * w, 0.19 * h), rng.uniform(-6, 6), fur)
    pen.line(p(0.15, 0.38), p(rng.uniform(0.0, 0.06), rng.uniform(0.05, 0.3)), fur, 0.045 * w)
    pen.line(p(0.66, 0.42), p(0.8, 0.3), fur, 0.12 * w)
    hr = 0.16 * h
    hc = p(0.82, 0.28)
    pen.circle(hc, hr, fur)
    pen.ellipse(p(0.93, 0.34), (0.065 * w, 0.07 * h), 0, shade(fur, 0.9))
    pen.poly([p(0.74, 0.2), p(0.8, 0.0), p(0.84, 0.18)], dark)
    if rng.random() < 0.5:
        pen.img[:], pen.mask[:] = pen.img[:, ::-1].copy(), pen.mask[:, ::-1].copy()
    return pen


_DRAWERS = (_draw_person, _draw_car, _draw_bicycle, _draw_dog)


@dataclass
class Sprite:
    """An object's picture: premultiplied colour (float32 0..255) and alpha (float32 0..1), tight box."""

    rgb: np.ndarray
    alpha: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        return self.alpha.shape[0], self.alpha.shape[1]


def render_sprite(class_id: int, long_side: float, rng: np.random.Generator) -> Sprite:
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
    return scale_sprite(Sprite(img * alpha[:, :, None], alpha), target / max(img.shape[:2]))


def scale_sprite(s: Sprite, f: float) -> Sprite:
    if abs(f - 1.0) < 1e-3:
        return s
    h, w = s.size
    nh, nw = max(1, int(round(h * f))), max(1, int(round(w * f)))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    return Sprite(cv2.resize(s.rgb, (nw, nh), interpolation=interp),
                   cv2.resize(s.alpha, (nw, nh), interpolation=interp))


def motion_blur(s: Sprite, dx: float, dy: float) -> tuple[Sprite, int]:
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
    return Sprite(rgb, alpha), pad
