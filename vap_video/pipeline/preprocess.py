"""Letterboxing frames into one engine batch, and mapping boxes back.

The engine contract wants RGB, 0..1, NCHW, letterboxed with pad 114. Per frame we only resize
(OpenCV, releases the GIL) and copy into a uint8 canvas; the float conversion and layout change
happen once for the whole batch in NumPy. Rectangular inference: when the engine accepts dynamic
H and W, the batch is padded only to the smallest stride multiple that fits, not to a square.
"""

from __future__ import annotations

import cv2
import numpy as np

from vap_video.engines.letterbox import PAD_VALUE, Letterbox, batch_hw, interpolation, placement

__all__ = ["PAD_VALUE", "Letterbox", "plan_shape", "letterbox_into", "BatchPreprocessor", "unletterbox"]


def plan_shape(sizes: list[tuple[int, int]], max_hw: tuple[int, int], stride: int, rect: bool) -> tuple[int, int]:
    """Network input (H, W) for a batch of source sizes (the rule of `vap_video.engines.letterbox.batch_hw`)."""
    return batch_hw(sizes, max_hw, stride, rect)


def letterbox_into(img: np.ndarray, canvas: np.ndarray) -> Letterbox:
    """Resize `img` (H x W x 3 uint8) to fit `canvas` (h x w x 3 uint8, pre-filled with 114), centred."""
    src_h, src_w = img.shape[:2]
    nh, nw, lb = placement(src_h, src_w, canvas.shape[0], canvas.shape[1])
    if (nw, nh) != (src_w, src_h):
        img = cv2.resize(img, (nw, nh), interpolation=interpolation(lb.scale))
    px, py = int(lb.pad_x), int(lb.pad_y)
    canvas[py:py + nh, px:px + nw] = img
    return lb


class BatchPreprocessor:
    """Turns a list of RGB frames into `float32 [B, 3, H, W]` plus their letterbox transforms.

    Buffers are reused between batches of the same shape, so steady state allocates nothing
    beyond the output array handed to the engine.
    """

    def __init__(self, max_hw: tuple[int, int], stride: int = 32, rect: bool = False) -> None:
        self.max_hw = max_hw
        self.stride = stride
        self.rect = rect
        self._canvas: np.ndarray | None = None

    def __call__(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[Letterbox]]:
        h, w = plan_shape([im.shape[:2] for im in images], self.max_hw, self.stride, self.rect)
        n = len(images)
        if self._canvas is None or self._canvas.shape[0] < n or self._canvas.shape[1:3] != (h, w):
            self._canvas = np.empty((max(n, 1), h, w, 3), dtype=np.uint8)
        canvas = self._canvas[:n]
        canvas.fill(PAD_VALUE)
        boxes = [letterbox_into(im, canvas[i]) for i, im in enumerate(images)]
        batch = np.empty((n, 3, h, w), dtype=np.float32)
        np.multiply(canvas.transpose(0, 3, 1, 2), np.float32(1 / 255), out=batch)
        return batch, boxes


def unletterbox(boxes: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Boxes (N, 4) in network pixels -> source-frame pixels, clipped to the frame."""
    out = np.empty_like(boxes)
    xs, ys = out[:, 0::2], out[:, 1::2]  # views (x1, x2) and (y1, y2): clip writes through them
    np.subtract(boxes[:, 0::2], lb.pad_x, out=xs)
    np.subtract(boxes[:, 1::2], lb.pad_y, out=ys)
    out /= lb.scale
    np.clip(xs, 0, lb.src_w, out=xs)
    np.clip(ys, 0, lb.src_h, out=ys)
    return out
