"""Association helpers of `vap_video.pipeline.tracking`: the assignment solver and the box tests it relies on.

Kept apart from the tracker's state handling so each rule can be read (and tested) on its own:

* `assign`: optimal matching in which a pair is made only if it is worth more than leaving both
  sides unmatched (the cost limit of the Jonker-Volgenant solver that ByteTrack uses), not the
  largest number of pairs;
* `buffered_iou`: IoU of boxes enlarged by a per-track margin (C-BIoU, Yang et al., WACV 2023),
  for re-finding a lost track whose prediction has drifted off the object;
* `covered_by`: how much of each detection some track box covers, the test for "coming out from
  behind a tracked object" that decides how confident a new track's first box must be;
* `dedup_detections`: one box per object when an NMS-free head reports it under two classes.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from vap_video.pipeline.frames import Detections
from vap_video.pipeline.geometry import iou_matrix

__all__ = ["assign", "buffered_iou", "covered_by", "dedup_detections"]

_EMPTY = np.zeros((0,), np.intp)
_TIE = 1e-9  # a pair exactly at the gate still counts as worth making


def assign(cost: np.ndarray, valid: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the optimal matching on `cost` among the `valid` pairs.

    A pair is worth `limit - cost` (`limit` = the cost at the gate, 1 - gate similarity) and the
    solver maximises the total worth. Why not simply the cheapest complete assignment: that one
    makes as many pairs as it can, so when a lost track barely overlaps a person's box and that
    person's own track has a second, poorer candidate (clutter beside them), it gives the person's
    box to the lost track and the clutter to the person's track, two bad pairs instead of one
    good one. With worths, leaving the lost track unmatched wins, as it does in ByteTrack's
    solver (`lapjv` with `cost_limit`).
    """
    if cost.size == 0:
        return _EMPTY, _EMPTY
    rows_ok = np.flatnonzero(valid.any(axis=1))
    cols_ok = np.flatnonzero(valid.any(axis=0))
    if len(rows_ok) == 0:
        return _EMPTY, _EMPTY
    if len(rows_ok) == cost.shape[0] and len(cols_ok) == cost.shape[1]:
        ok, cst = valid, cost  # nothing to leave out: skip the fancy indexing
    else:
        block = (rows_ok[:, None], cols_ok[None, :])
        ok, cst = valid[block], cost[block]
    # minimise -(worth); invalid pairs are worth nothing, so the solver gains nothing by using them
    sub = np.where(ok, np.minimum(cst - limit - _TIE, 0.0), 0.0)
    r, c = linear_sum_assignment(sub)
    keep = ok[r, c] & (sub[r, c] < 0.0)  # a valid pair pushed past the limit (a bonus < 0) is worth nothing
    return rows_ok[r[keep]], cols_ok[c[keep]]


def buffered_iou(track_boxes: np.ndarray, det_boxes: np.ndarray, buffer: np.ndarray) -> np.ndarray:
    """(tracks x dets) IoU after enlarging both boxes of each pair by the track's `buffer`
    (a fraction of each box's own width and height on every side).

    Why: a lost track's prediction drifts from where the object really is (it turned, slowed, or
    its velocity was estimated from a few jittered boxes), and after half a second of coasting the
    plain IoU with the object's reappearing box is often near zero. Enlarging both boxes in
    proportion to the time lost keeps the test scale-invariant and still prefers the nearest box.
    """
    t = np.asarray(track_boxes, np.float64)[:, None, :]
    d = np.asarray(det_boxes, np.float64)[None, :, :]
    b = np.asarray(buffer, np.float64)[:, None]
    tw, th = t[..., 2] - t[..., 0], t[..., 3] - t[..., 1]
    dw, dh = d[..., 2] - d[..., 0], d[..., 3] - d[..., 1]
    tx1, ty1, tx2, ty2 = t[..., 0] - b * tw, t[..., 1] - b * th, t[..., 2] + b * tw, t[..., 3] + b * th
    dx1, dy1, dx2, dy2 = d[..., 0] - b * dw, d[..., 1] - b * dh, d[..., 2] + b * dw, d[..., 3] + b * dh
    iw = np.clip(np.minimum(tx2, dx2) - np.maximum(tx1, dx1), 0.0, None)
    ih = np.clip(np.minimum(ty2, dy2) - np.maximum(ty1, dy1), 0.0, None)
    inter = iw * ih
    union = (tx2 - tx1) * (ty2 - ty1) + (dx2 - dx1) * (dy2 - dy1) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def covered_by(det_boxes: np.ndarray, track_boxes: np.ndarray) -> np.ndarray:
    """(dets,) the largest fraction of each detection's area that one of `track_boxes` covers."""
    if len(det_boxes) == 0 or len(track_boxes) == 0:
        return np.zeros((len(det_boxes),))
    d = np.asarray(det_boxes, np.float64)[:, None, :]
    t = np.asarray(track_boxes, np.float64)[None, :, :]
    iw = np.clip(np.minimum(d[..., 2], t[..., 2]) - np.maximum(d[..., 0], t[..., 0]), 0.0, None)
    ih = np.clip(np.minimum(d[..., 3], t[..., 3]) - np.maximum(d[..., 1], t[..., 1]), 0.0, None)
    area = np.maximum((d[..., 2] - d[..., 0]) * (d[..., 3] - d[..., 1]), 1e-12)
    return (iw * ih / area).max(axis=1)


def dedup_detections(dets: Detections, iou_thresh: float) -> Detections:
    """Drop the lower-scoring of two different-class detections that overlap above `iou_thresh`.

    Greedy from the highest score, so a suppressed row cannot suppress another. Same-class overlaps
    are left alone: the detector is NMS-free by design and two same-class boxes are two objects.
    """
    n = len(dets)
    if n < 2:
        return dets
    if np.all(dets.class_ids == dets.class_ids[0]):
        return dets  # one class only: nothing to deduplicate (the common case, and cheap to test)
    order = np.argsort(-dets.scores, kind="stable")
    boxes = dets.boxes[order]
    cls = dets.class_ids[order]
    iou = iou_matrix(boxes, boxes)
    conflict = (iou > iou_thresh) & (cls[:, None] != cls[None, :])
    conflict = np.triu(conflict, k=1)  # i < j: i has the higher (or equal) score
    if not conflict.any():
        return dets
    keep = np.ones(n, dtype=bool)
    for i in np.flatnonzero(conflict.any(axis=1)):
        if keep[i]:
            keep[conflict[i]] = False
    return dets.select(np.sort(order[keep]))
