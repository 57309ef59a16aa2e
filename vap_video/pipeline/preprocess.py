"""Letterboxing frames into one engine batch, and mapping boxes back.

The engine contract wants RGB, 0..1, NCHW, letterboxed with pad 114. Each frame is written
straight into its slot of the batch array: the padding strips are filled, and the picture is
converted to float and to planar layout in the same NumPy pass that places it. A frame the decoder
already scaled to the letterbox size (`Frame.src_hw`, see `vap_video.pipeline.decode_plan`) is placed as it
is; any other frame is resized first (OpenCV, releases the GIL). Placement and scale always come
from the *source* size, by the one rule in `vap_video.engines.letterbox`, so boxes map back to source pixels
the same way for both. Rectangular inference: when the engine accepts dynamic H and W, the batch is
padded only to the smallest stride multiple that fits, not to a square. A uint8 batch (for a model
that normalises inside its graph, `export_model(..., uint8_input=True)`) skips the float step.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from vap_video.engines.letterbox import PAD_VALUE, Letterbox, batch_hw, interpolation, placement

__all__ = ["PAD_VALUE", "Letterbox", "plan_shape", "letterbox_into", "BatchPreprocessor", "unletterbox"]


def plan_shape(sizes: list[tuple[int, int]], max_hw: tuple[int, int], stride: int, rect: bool) -> tuple[int, int]:
    """Network input (H, W) for a batch of source sizes (the rule of `vap_video.engines.letterbox.batch_hw`)."""
    return batch_hw(sizes, max_hw, stride, rect)


def _fit(img: np.ndarray, src_h: int, src_w: int, h: int, w: int) -> tuple[np.ndarray, Letterbox]:
    """`img` (the source picture, or a copy the decoder already scaled) at its letterbox size in h x w."""
    nh, nw, lb = placement(src_h, src_w, h, w)
    ih, iw = img.shape[:2]
    if (ih, iw) != (nh, nw):
        img = cv2.resize(img, (nw, nh), interpolation=interpolation(min(nh / ih, nw / iw)))
    return img, lb


def letterbox_into(img: np.ndarray, canvas: np.ndarray) -> Letterbox:
    """Resize `img` (H x W x 3 uint8) to fit `canvas` (h x w x 3 uint8, pre-filled with 114), centred."""
    img, lb = _fit(img, img.shape[0], img.shape[1], canvas.shape[0], canvas.shape[1])
    px, py = int(lb.pad_x), int(lb.pad_y)
    canvas[py:py + img.shape[0], px:px + img.shape[1]] = img
    return lb


class BatchPreprocessor:
    """Turns a list of RGB frames into `float32 [B, 3, H, W]` (or uint8) plus their letterbox transforms."""

    def __init__(self, max_hw: tuple[int, int], stride: int = 32, rect: bool = False,
                 dtype: type = np.float32) -> None:
        self.max_hw = max_hw
        self.stride = stride
        self.rect = rect
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.uint8):
            raise ValueError(f"batch dtype must be float32 or uint8, not {self.dtype}")

    def __call__(self, images: list[np.ndarray],
                 src_hw: Sequence[tuple[int, int] | None] | None = None) -> tuple[np.ndarray, list[Letterbox]]:
        """`src_hw[i]`: the source size of `images[i]` when the decoder scaled it (None: its own size)."""
        sizes = [(s if s is not None else im.shape[:2]) for im, s in zip(images, src_hw or [None] * len(images))]
        h, w = plan_shape(sizes, self.max_hw, self.stride, self.rect)
        batch = np.empty((len(images), 3, h, w), dtype=self.dtype)
        scale = None if self.dtype == np.uint8 else np.float32(1 / 255)
        pad = PAD_VALUE if scale is None else np.float32(PAD_VALUE) * scale
        boxes = []
        for i, (im, (sh, sw)) in enumerate(zip(images, sizes)):
            img, lb = _fit(im, int(sh), int(sw), h, w)
            boxes.append(lb)
            nh, nw = img.shape[:2]
            px, py = int(lb.pad_x), int(lb.pad_y)
            out = batch[i]
            out[:, :py] = pad
            out[:, py + nh:] = pad
            out[:, py:py + nh, :px] = pad
            out[:, py:py + nh, px + nw:] = pad
            chw = img.transpose(2, 0, 1)
            if scale is None:
                out[:, py:py + nh, px:px + nw] = chw
            else:
                np.multiply(chw, scale, out=out[:, py:py + nh, px:px + nw])
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
