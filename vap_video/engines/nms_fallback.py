"""NMS FALLBACK for legacy one-to-many models (YOLOv8 / YOLO11 style ONNX `[B, 4+nc, N]`).

vap's own detectors and YOLO26/YOLOv10 end-to-end exports need no NMS: their one-to-one head
already yields one box per object. Models users already have are often the older one-to-many kind,
whose raw output is every anchor's box (cx, cy, w, h in input pixels) and per-class scores (after
sigmoid), and which need non-maximum suppression. This module turns that output into the engine
contract `[B, K, 6]` so the rest of the pipeline does not care which kind it runs.

It is a fallback, not the fast path: a NumPy greedy NMS on the CPU (each step suppresses with one
vectorised IoU row), costing on the order of a millisecond per frame with a few hundred candidates
after the score filter. The runtime logs that a model runs through it.
"""

from __future__ import annotations

import numpy as np

from vap_video.engines.evaluate import batched_nms

MAX_CANDIDATES = 3000  # per image, after the score filter: bounds NMS time on noisy frames


def decode_one_to_many(raw: np.ndarray, conf: float = 0.001, iou: float = 0.7, max_det: int = 300) -> np.ndarray:
    """`[B, 4+nc, N]` raw head output -> `[B, max_det, 6]` rows x1, y1, x2, y2, score, class_id.

    Rows beyond an image's detections are zero (score 0), like an end-to-end engine's padding.
    Class-aware NMS: a person never suppresses an overlapping car.
    """
    raw = np.asarray(raw, np.float32)
    batch = raw.shape[0]
    out = np.zeros((batch, max_det, 6), np.float32)
    for b in range(batch):
        pred = raw[b]                        # [4+nc, N]
        cls_scores = pred[4:]                # [nc, N]
        cls = cls_scores.argmax(0)
        score = cls_scores[cls, np.arange(cls_scores.shape[1])]
        idx = np.flatnonzero(score > conf)
        if idx.size == 0:
            continue
        if idx.size > MAX_CANDIDATES:
            idx = idx[np.argpartition(-score[idx], MAX_CANDIDATES)[:MAX_CANDIDATES]]
        cx, cy, w, h = pred[0, idx], pred[1, idx], pred[2, idx], pred[3, idx]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        keep = batched_nms(boxes, score[idx], cls[idx], iou)[:max_det]
        n = keep.size
        out[b, :n, :4] = boxes[keep]
        out[b, :n, 4] = score[idx][keep]
        out[b, :n, 5] = cls[idx][keep]
    return out
