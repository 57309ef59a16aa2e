"""Training augmentation on uint8 RGB images with boxes: random affine, HSV jitter, haze, flips and the
4-image mosaic. Every draw comes from the caller's generator, so a sample is a pure function of
(seed, epoch, index).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from vap_video.engines.haze import add_haze
from vap_video.engines.letterbox import PAD_VALUE



@dataclass
class AugmentConfig:
    """Training augmentation. Defaults suit small detectors on small datasets (strong mosaic and
    scale jitter, mild rotation/shear: surveillance cameras are upright)."""

    mosaic: float = 1.0  # probability of a 4-image mosaic
    degrees: float = 0.0  # rotation +- degrees
    translate: float = 0.1  # +- fraction of the image size
    scale: tuple[float, float] = (0.5, 1.5)  # zoom range
    shear: float = 0.0  # +- degrees
    fliplr: float = 0.5
    hsv_h: float = 0.015  # hue shift, +- fraction of the hue circle
    hsv_s: float = 0.7  # saturation gain +- fraction
    hsv_v: float = 0.4  # value (brightness) gain +- fraction
    haze: float = 0.0  # probability of adding haze (vap_video.engines.haze)
    haze_transmission: tuple[float, float] = (0.35, 0.85)
    min_box_px: float = 2.0  # boxes narrower or lower than this after augmentation are dropped
    min_area_ratio: float = 0.1  # ...or keeping less than this fraction of their (scaled) area

    def __post_init__(self) -> None:
        for name in ("mosaic", "fliplr", "haze"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"AugmentConfig.{name} is a probability in 0..1, got {v}")
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"AugmentConfig.scale must be (lo, hi) with 0 < lo <= hi, got {self.scale}")


def _affine_matrix(rng: np.random.Generator, hyp: AugmentConfig, src_center: tuple[float, float],
                   out_size: int) -> np.ndarray:
    """2x3 matrix: move src_center to the origin, rotate+scale, shear, move to the output centre
    plus a random translation."""
    c = np.eye(3)
    c[0, 2], c[1, 2] = -src_center[0], -src_center[1]
    r = np.eye(3)
    a = rng.uniform(-hyp.degrees, hyp.degrees)
    s = rng.uniform(hyp.scale[0], hyp.scale[1])
    r[:2] = cv2.getRotationMatrix2D((0, 0), a, s)
    sh = np.eye(3)
    sh[0, 1] = math.tan(math.radians(rng.uniform(-hyp.shear, hyp.shear)))
    sh[1, 0] = math.tan(math.radians(rng.uniform(-hyp.shear, hyp.shear)))
    t = np.eye(3)
    t[0, 2] = out_size / 2 + rng.uniform(-hyp.translate, hyp.translate) * out_size
    t[1, 2] = out_size / 2 + rng.uniform(-hyp.translate, hyp.translate) * out_size
    return (t @ sh @ r @ c)[:2]


def _transform_boxes(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Map xyxy boxes through a 2x3 affine; the result is the axis-aligned hull of the 4 corners."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4)
    x1, y1, x2, y2 = boxes.T
    corners = np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1),
                        np.stack([x2, y2], 1), np.stack([x1, y2], 1)], 1)  # [n, 4, 2]
    pts = corners @ m[:, :2].T + m[:, 2]
    return np.concatenate([pts.min(1), pts.max(1)], 1)


def _filter_boxes(before: np.ndarray, after: np.ndarray, size: int, hyp: AugmentConfig,
                  area_gain: float) -> tuple[np.ndarray, np.ndarray]:
    """Clip to the image and keep boxes that are still real objects. Returns (clipped, keep mask)."""
    clipped = after.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, size)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, size)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area0 = (before[:, 2] - before[:, 0]) * (before[:, 3] - before[:, 1]) * area_gain
    keep = (w >= hyp.min_box_px) & (h >= hyp.min_box_px) & (w * h > hyp.min_area_ratio * area0 + 1e-9)
    keep &= np.maximum(w / np.maximum(h, 1e-9), h / np.maximum(w, 1e-9)) < 20
    return clipped, keep


def _hsv_jitter(img: np.ndarray, rng: np.random.Generator, hyp: AugmentConfig) -> np.ndarray:
    if hyp.hsv_h == 0 and hyp.hsv_s == 0 and hyp.hsv_v == 0:
        return img
    # hue is an angle: shift it (a gain would move reds and blues by different amounts);
    # saturation and value scale
    r = rng.uniform(-1, 1, 3)
    shift, gains = r[0] * hyp.hsv_h * 180.0, r * np.array([hyp.hsv_h, hyp.hsv_s, hyp.hsv_v]) + 1
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    x = np.arange(256, dtype=np.float32)
    lut_h = np.round(x + shift).astype(np.int32) % 180
    lut_h = np.where(x < 180, lut_h, x).astype(np.uint8)
    lut_s = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    h, s, v = cv2.split(hsv)
    hsv = cv2.merge((cv2.LUT(h, lut_h), cv2.LUT(s, lut_s), cv2.LUT(v, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def norm_to_xyxy(labels: np.ndarray, w: float, h: float, pad_x: float = 0, pad_y: float = 0) -> np.ndarray:
    cx, cy, bw, bh = labels[:, 1] * w, labels[:, 2] * h, labels[:, 3] * w, labels[:, 4] * h
    return np.stack([cx - bw / 2 + pad_x, cy - bh / 2 + pad_y, cx + bw / 2 + pad_x, cy + bh / 2 + pad_y], 1)


def mosaic4(i: int, size: int, count: int, image: Callable[[int], np.ndarray], labels: Callable[[int], np.ndarray],
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Sample i and three random others (of `count`) around a random centre on a 2S x 2S grey canvas.

    Returns the canvas, boxes [n, 5] cls x1 y1 x2 y2 on it (clipped to what was pasted) and the
    centre the affine step should move to the output's centre.
    """
    S = size
    canvas = np.full((2 * S, 2 * S, 3), PAD_VALUE, np.uint8)
    xc, yc = (int(rng.uniform(0.5 * S, 1.5 * S)) for _ in range(2))
    idx = [i] + [int(k) for k in rng.integers(0, count, size=3)]
    all_t = []
    for q, k in enumerate(idx):
        img = image(k)
        h, w = img.shape[:2]
        if q == 0:  # top-left: image's bottom-right corner at the centre
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b = w - (x2a - x1a), h - (y2a - y1a)
        elif q == 1:  # top-right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * S), yc
            x1b, y1b = 0, h - (y2a - y1a)
        elif q == 2:  # bottom-left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * S, yc + h)
            x1b, y1b = w - (x2a - x1a), 0
        else:  # bottom-right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * S), min(2 * S, yc + h)
            x1b, y1b = 0, 0
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y1b + (y2a - y1a), x1b:x1b + (x2a - x1a)]
        lab = labels(k)
        boxes = norm_to_xyxy(lab, w, h, x1a - x1b, y1a - y1b)
        # clip to the part of the image actually pasted
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(x1a, x2a)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(y1a, y2a)
        all_t.append(np.concatenate([lab[:, :1], boxes], 1))
    t = np.concatenate(all_t, 0).astype(np.float32) if all_t else np.zeros((0, 5), np.float32)
    return canvas, t, (float(S), float(S))


def augment_sample(img: np.ndarray, t: np.ndarray, center: tuple[float, float], size: int, hyp: AugmentConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random affine (boxes transformed and filtered), HSV jitter, haze and horizontal flip, in that
    order of draws from `rng`: an S x S uint8 image and its boxes [n, 5] cls x1 y1 x2 y2."""
    S = size
    m = _affine_matrix(rng, hyp, center, S)
    img = cv2.warpAffine(img, m, (S, S), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(PAD_VALUE,) * 3)
    if len(t):
        after = _transform_boxes(t[:, 1:5], m)
        area_gain = abs(float(np.linalg.det(m[:, :2])))
        clipped, keep = _filter_boxes(t[:, 1:5], after, S, hyp, area_gain)
        t = np.concatenate([t[keep, :1], clipped[keep]], 1)
    img = _hsv_jitter(img, rng, hyp)
    if hyp.haze > 0 and rng.random() < hyp.haze:
        img = add_haze(img, rng.uniform(*hyp.haze_transmission), rng.uniform(0.7, 1.0), True, rng)
    if rng.random() < hyp.fliplr:
        img = cv2.flip(img, 1)
        if len(t):
            x1 = S - t[:, 3]
            x2 = S - t[:, 1]
            t[:, 1], t[:, 3] = x1, x2
    return img, t.astype(np.float32)
