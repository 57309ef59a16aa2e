"""From engine rows to per-frame detections: threshold, class filter, inverse letterbox. No NMS.

The engine already returns one box per object (NMS-free head), so this is a mask and an affine
map, vectorised over the whole batch.
"""

from __future__ import annotations

import numpy as np

from vap_video.pipeline.config import ConfigError
from vap_video.pipeline.frames import Detections
from vap_video.pipeline.preprocess import Letterbox, unletterbox


class Postprocessor:
    """Applies per-class score thresholds and a class filter, then maps boxes to source pixels."""

    def __init__(self, names: list[str], conf: float = 0.25, class_conf: dict[str, float] | None = None,
                 classes: list[str] | None = None) -> None:
        unknown = [c for c in list(class_conf or {}) + list(classes or []) if c not in names]
        if unknown:
            raise ConfigError(f"model.classes/model.class_conf name unknown classes {unknown}; "
                              f"the engine's classes are: {', '.join(names)}")
        thr = np.full(len(names), conf, dtype=np.float32)
        for name, value in (class_conf or {}).items():
            thr[names.index(name)] = value
        if classes is not None:
            keep = np.zeros(len(names), dtype=bool)
            keep[[names.index(c) for c in classes]] = True
            thr[~keep] = np.inf  # a filtered class never passes
        self.thresholds = thr
        self.names = names

    def __call__(self, out: np.ndarray, transforms: list[Letterbox]) -> list[Detections]:
        """`out` [B, K, 6] from the engine -> one Detections per frame."""
        cls = out[..., 5].astype(np.int64)
        valid = (cls >= 0) & (cls < len(self.names))
        cls_safe = np.where(valid, cls, 0)
        mask = valid & (out[..., 4] >= self.thresholds[cls_safe])
        result = []
        for i, lb in enumerate(transforms):
            rows = out[i][mask[i]]
            boxes = unletterbox(rows[:, :4], lb)
            # Boxes that collapse to nothing after clipping are padding artefacts, not objects.
            ok = (boxes[:, 2] - boxes[:, 0] > 0.5) & (boxes[:, 3] - boxes[:, 1] > 0.5)
            result.append(Detections(boxes[ok].astype(np.float32), rows[ok, 4].astype(np.float32),
                                     rows[ok, 5].astype(np.int32)))
        return result
