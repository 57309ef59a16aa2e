"""The one letterbox rule: how a frame is scaled and placed in the network input.

Training data, CPU and GPU preprocessing, export parity checks and the dehaze stage must agree
to the pixel, or a model trained on one placement is evaluated on another. So the constants and
the arithmetic live here once and every caller takes them from here:

* scale r = min(H / h, W / w); new size round(w r) x round(h r), at least 1 pixel, at most the
  canvas; the frame is centred, the odd pixel of padding going right/bottom; pad value 114;
* area averaging when shrinking, bilinear when enlarging;
* with `rect`, a batch's canvas is the smallest stride multiple that holds every frame.

Pure arithmetic plus OpenCV's interpolation constants: no torch, no pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["PAD_VALUE", "Letterbox", "placement", "interpolation", "batch_hw"]

#: Grey of the padding (the Ultralytics/YOLO convention, part of the engine contract).
PAD_VALUE = 114


@dataclass(slots=True)
class Letterbox:
    """How one source frame was placed in the network input: x_net = x_src * scale + pad_x."""

    scale: float
    pad_x: float
    pad_y: float
    src_h: int
    src_w: int


def placement(src_h: int, src_w: int, h: int, w: int) -> tuple[int, int, Letterbox]:
    """(new_h, new_w, transform) of a src_h x src_w frame letterboxed into an h x w canvas."""
    r = min(h / src_h, w / src_w)
    nw = min(w, max(1, int(round(src_w * r))))
    nh = min(h, max(1, int(round(src_h * r))))
    return nh, nw, Letterbox(scale=r, pad_x=float((w - nw) // 2), pad_y=float((h - nh) // 2),
                             src_h=int(src_h), src_w=int(src_w))


def interpolation(scale: float) -> int:
    """Area averaging when shrinking (no aliasing), bilinear when enlarging."""
    return cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR


def batch_hw(sizes: Sequence[tuple[int, int]], max_hw: tuple[int, int], stride: int, rect: bool) -> tuple[int, int]:
    """Network input (H, W) for a batch of source sizes: `max_hw`, or with `rect` the smallest
    stride multiple that holds every frame scaled to fit `max_hw` (a 16:9 stream at 640 needs
    384x640, 40% fewer pixels than 640x640)."""
    if not rect:
        return max_hw
    mh, mw = max_hw
    h_need = w_need = 0
    for h, w in sizes:
        nh, nw, _ = placement(h, w, mh, mw)  # at least one pixel, as the letterbox resizes:
        h_need, w_need = max(h_need, nh), max(w_need, nw)  # a 2x3000 strip must not get a zero-height canvas
    return (min(mh, max(stride, int(np.ceil(h_need / stride) * stride))),
            min(mw, max(stride, int(np.ceil(w_need / stride) * stride))))
