"""Small hand-made detection scenes for the tracker's behaviour tests."""

from __future__ import annotations

import numpy as np

from vap_video.pipeline.frames import Detections


def dets(rows: list[tuple[list[float], float]]) -> Detections:
    """One frame's detections from (box, score) rows, all class 0."""
    if not rows:
        return Detections()
    return Detections(np.array([r[0] for r in rows], np.float32), np.array([r[1] for r in rows], np.float32),
                      np.zeros(len(rows), np.int32))


def box(cx: float, cy: float, w: float = 40.0, h: float = 80.0) -> list[float]:
    """An xyxy box around a centre (a standing person's proportions by default)."""
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
