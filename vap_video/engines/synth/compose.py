"""Backgrounds, lighting and compositing: sprites drawn far to near over a cluttered background,
with visibility measured from an id buffer."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vap_video.engines.synth.objects import GTObject
from vap_video.engines.synth.sprites import Sprite, rand_color, shade


def render_background(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A cluttered street-like background; returns (RGB uint8 image, horizon row)."""
    horizon = int(h * rng.uniform(0.15, 0.42))
    img = np.empty((h, w, 3), np.float32)
    sky0, sky1 = np.array(rand_color(rng), np.float32), np.array(rand_color(rng), np.float32)
    g0, g1 = np.array(rand_color(rng), np.float32) * 0.8, np.array(rand_color(rng), np.float32) * 0.8
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
        col = rand_color(rng)
        cv2.rectangle(img, (x, top), (x + bw, horizon + int(0.02 * h)), col, -1)
        if rng.random() < 0.7:
            wc = shade(rand_color(rng), rng.uniform(0.4, 1.0))
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
        cv2.rectangle(img, (0, y0), (w, y1), shade((grey, grey, grey), 1.0), -1)
        lane_y = (y0 + y1) // 2
        dash, gap = max(1, int(rng.uniform(15, 40) * unit)), max(1, int(rng.uniform(10, 30) * unit))
        lt = max(1, int(rng.uniform(2, 5) * unit))
        for xx in range(int(rng.uniform(-dash, 0)), w, dash + gap):
            cv2.rectangle(img, (xx, lane_y - lt), (xx + dash, lane_y + lt), (230, 230, 220), -1)
        cv2.line(img, (0, y0), (w, y0), (200, 200, 200), lt)
    # distractors: poles, boxes, rings, discs, lines (parts that look like parts of objects)
    for _ in range(int(rng.integers(8, 30))):
        kind = int(rng.integers(0, 5))
        col = rand_color(rng)
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


def lighting_lut(gain: float, gamma: float) -> np.ndarray:
    v = np.arange(256, dtype=np.float32) / 255.0
    return np.clip(255.0 * gain * np.power(v, gamma) + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# compositing


def composite(
    frame: np.ndarray,
    ids: np.ndarray,
    sprite: Sprite,
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
class Placed:
    """An object placed in a picture, for visibility accounting."""

    track_id: int
    class_id: int
    x0: int
    y0: int
    h: int
    w: int
    solid: np.ndarray  # bool mask of the unblurred sprite (alpha > 0.5)


def visible_ground_truth(placed: list[Placed], ids: np.ndarray, min_size: float = 2.0) -> list[GTObject]:
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
