"""COCO-style detection metrics in NumPy (mAP50, mAP50-95, per-class AP, P/R at a threshold).

Why our own and not pycocotools at run time: training evaluates every epoch on arrays already in
memory, and pycocotools wants JSON-like dicts and prints to stdout. This module follows COCOeval's
bbox semantics exactly (checked against pycocotools in tests/test_evaluate_*.py):

- IoU thresholds 0.50:0.05:0.95; boxes are continuous coordinates (area = w * h, no +1);
- per image and class, detections sorted by score (stable) and cut to `max_dets` (COCO applies
  maxDets per image *and category*), then matched greedily: each detection takes the unmatched
  ground truth with the highest IoU >= threshold (ties go to the later ground truth, as in COCOeval);
- per class, detections of all images are ranked by score (stable, images in order), precision is
  made monotone and sampled at 101 recall points; classes without ground truth are left out of
  the mean; area range "all" (with ``area_ranges``, also COCO's small/medium/large: ground truth
  outside the range is ignored, a detection matched to it or unmatched and outside the range drops
  out of the ranking); no crowd boxes (YOLO labels have none).

Also :func:`nms` / :func:`batched_nms`, used ONLY to evaluate the one-to-many reference head. The
runtime is NMS-free and never calls them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["EvalResult", "evaluate_detections", "box_iou", "nms", "batched_nms", "IOU_THRESHOLDS", "AREA_RANGES"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
#: COCO's object size ranges (box area in source-image pixels), bounds inclusive as in COCOeval.
AREA_RANGES = {"small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, 1e10)}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of xyxy boxes (continuous coordinates, area = w * h)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass
class EvalResult:
    """Detection metrics over a set of images.

    map50 / map50_95: mean over classes that have ground truth. per_class_ap: AP50-95 per class
    name (NaN for classes without ground truth), per_class_ap50 likewise. precision / recall:
    micro-averaged at IoU 0.5 over detections with score >= conf (the operating point a deployment
    would use); per_class_precision / per_class_recall the same per class.
    """

    map50: float
    map50_95: float
    per_class_ap: dict[str, float]
    per_class_ap50: dict[str, float]
    precision: float
    recall: float
    conf: float
    per_class_precision: dict[str, float] = field(default_factory=dict)
    per_class_recall: dict[str, float] = field(default_factory=dict)
    n_images: int = 0
    n_gt: int = 0
    n_pred: int = 0
    gt_per_class: dict[str, int] = field(default_factory=dict)
    pred_per_class: dict[str, int] = field(default_factory=dict)
    area_ap: dict[str, float] = field(default_factory=dict)  # AP50-95 per COCO size range, when asked

    def table(self) -> str:
        """A fixed-width text table: one row per class, then 'all'."""
        head = f"{'class':<16}{'gt':>7}{'pred':>8}{'P@' + format(self.conf, '.2f'):>9}{'R':>8}{'AP50':>8}{'AP50-95':>9}"
        lines = [head, "-" * len(head)]

        def fmt(v: float) -> str:
            return "     -" if v != v else f"{v:6.3f}"

        for name in self.per_class_ap:
            lines.append(
                f"{name:<16}{self.gt_per_class.get(name, 0):>7}{self.pred_per_class.get(name, 0):>8}"
                f"{fmt(self.per_class_precision.get(name, float('nan'))):>9}"
                f"{fmt(self.per_class_recall.get(name, float('nan'))):>8}"
                f"{fmt(self.per_class_ap50[name]):>8}{fmt(self.per_class_ap[name]):>9}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'all':<16}{self.n_gt:>7}{self.n_pred:>8}{fmt(self.precision):>9}{fmt(self.recall):>8}"
            f"{fmt(self.map50):>8}{fmt(self.map50_95):>9}"
        )
        if self.area_ap:
            lines.append("AP50-95 by object size (COCO areas, source pixels): " + "  ".join(
                f"{k} {fmt(v).strip()}" for k, v in self.area_ap.items()))
        lines.append(f"{self.n_images} images")
        return "\n".join(lines)


def _match_image_class(
    boxes: np.ndarray, gt: np.ndarray, iou_thrs: np.ndarray, gt_ignore: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy COCO matching for one image and class. boxes: dets sorted by score.

    Returns (matched [T, D], matched_ignored [T, D]). As in COCOeval, a detection takes the best
    unmatched *counted* ground truth (ties go to the later one); only when none reaches the
    threshold may it take an ignored one (outside the area range), which removes it from the
    ranking instead of making it a false positive. Loops over detections once, all thresholds at a
    time; detections that overlap no ground truth by the lowest threshold are skipped.
    """
    t_n, d_n, g_n = len(iou_thrs), len(boxes), len(gt)
    matched = np.zeros((t_n, d_n), bool)
    on_ignored = np.zeros((t_n, d_n), bool)
    if d_n == 0 or g_n == 0:
        return matched, on_ignored
    ignore = np.zeros(g_n, bool) if gt_ignore is None else np.asarray(gt_ignore, bool)
    # counted ground truth first, ignored ones only as a fallback (masks of what each pass may not take)
    passes = [np.zeros((1, g_n), bool)] if not ignore.any() else [ignore[None, :], ~ignore[None, :]]
    ious = box_iou(boxes, gt)
    thr = np.minimum(iou_thrs, 1 - 1e-10)[:, None]
    taken = np.zeros((t_n, g_n), bool)
    rows = np.arange(t_n)
    for d in np.flatnonzero(ious.max(1) >= thr.min()):
        free = np.ones(t_n, bool)
        for barred in passes:
            cand = np.where(taken | barred, -1.0, ious[d][None, :])  # [T, G]
            # COCOeval keeps the last ground truth among equal best IoUs: argmax on the reversed row
            g = g_n - 1 - np.argmax(cand[:, ::-1], axis=1)
            ok = free & (cand[rows, g] >= thr[:, 0])
            taken[rows[ok], g[ok]] = True
            matched[ok, d] = True
            on_ignored[ok, d] = ignore[g[ok]]
            free &= ~ok
    return matched, on_ignored


def _average_precision(tp: np.ndarray, n_gt: int, fp: np.ndarray | None = None) -> float:
    """101-point interpolated AP from ranked true/false-positive flags (COCOeval.accumulate).

    `fp` defaults to ``~tp``; detections that are neither (matched to an ignored ground truth, or
    outside the area range) add to neither count, as in COCOeval.
    """
    if len(tp) == 0:
        return 0.0
    tps = np.cumsum(tp, dtype=np.float64)
    fps = np.cumsum(~tp if fp is None else fp, dtype=np.float64)
    rc = tps / n_gt
    pr = tps / (fps + tps + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]
    inds = np.searchsorted(rc, RECALL_POINTS, side="left")
    q = np.zeros(len(RECALL_POINTS))
    valid = inds < len(pr)
    q[valid] = pr[inds[valid]]
    return float(q.mean())


@dataclass
class _Group:
    """One image's detections (sorted by score, cut to max_dets) and ground truth of one class."""

    scores: np.ndarray
    boxes: np.ndarray
    gt: np.ndarray
    area_factor: float  # multiplies box areas into the area ranges' pixels (source image pixels)


def _areas(boxes: np.ndarray, factor: float) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * factor


def _class_ap(groups: list[_Group], area_rng: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """AP per IoU threshold [T] of one class (NaN without counted ground truth), and the
    all-range match flags at IoU 0.5 in score order of the groups (for P/R at a threshold)."""
    T = len(IOU_THRESHOLDS)
    scores, tps, fps, m50 = [], [], [], []
    n_gt = 0
    for g in groups:
        ignore = None
        if area_rng is not None:
            a = _areas(g.gt, g.area_factor)
            ignore = (a < area_rng[0]) | (a > area_rng[1])
            n_gt += int((~ignore).sum())
        else:
            n_gt += len(g.gt)
        if len(g.scores) == 0:
            continue
        m, on_ig = _match_image_class(g.boxes, g.gt, IOU_THRESHOLDS, ignore)
        ig = on_ig
        if area_rng is not None:
            a = _areas(g.boxes, g.area_factor)
            outside = (a < area_rng[0]) | (a > area_rng[1])
            ig = on_ig | (~m & outside[None, :])
        scores.append(g.scores)
        tps.append(m & ~ig)
        fps.append(~m & ~ig)
        m50.append(m[0])
    ap = np.full(T, np.nan)
    s = np.concatenate(scores) if scores else np.zeros(0)
    if n_gt:
        order = np.argsort(-s, kind="mergesort")
        tp = np.concatenate(tps, 1)[:, order] if tps else np.zeros((T, 0), bool)
        fp = np.concatenate(fps, 1)[:, order] if fps else np.zeros((T, 0), bool)
        ap = np.array([_average_precision(tp[t], n_gt, fp[t]) for t in range(T)])
    return ap, (np.concatenate(m50) if m50 else np.zeros(0, bool))


def _check_inputs(i: int, p: np.ndarray, g: np.ndarray, num_classes: int) -> None:
    for arr, what, col in ((p, "prediction", 5), (g, "ground truth", 0)):
        if len(arr) and not np.isfinite(arr).all():
            raise ValueError(f"image {i}: {what} has NaN or inf values")
        if len(arr) and ((arr[:, col] < 0).any() or (arr[:, col] >= num_classes).any()):
            raise ValueError(f"image {i}: {what} class id outside 0..{num_classes - 1}")


def _group(preds: list[np.ndarray], gts: list[np.ndarray], num_classes: int, max_dets: int,
           area_scale: Sequence[float] | None) -> list[list[_Group]]:
    """Per class, the (image, class) groups COCOeval matches: detections cut to max_dets per image *and* class."""
    groups: list[list[_Group]] = [[] for _ in range(num_classes)]
    for i, (p, g) in enumerate(zip(preds, gts)):
        p = np.asarray(p, np.float64).reshape(-1, 6)
        g = np.asarray(g, np.float64).reshape(-1, 5)
        _check_inputs(i, p, g, num_classes)
        factor = 1.0 if area_scale is None else float(area_scale[i])
        p_cls = p[:, 5].round().astype(np.int64)
        g_cls = g[:, 0].round().astype(np.int64)
        for c in np.union1d(p_cls, g_cls):
            pc = p[p_cls == c]
            pc = pc[np.argsort(-pc[:, 4], kind="mergesort")[:max_dets]]
            groups[c].append(_Group(pc[:, 4], pc[:, :4], g[g_cls == c, 1:5], factor))
    return groups


def _checked_names(preds: list[np.ndarray], gts: list[np.ndarray], num_classes: int, names: list[str] | None,
                   area_scale: Sequence[float] | None) -> list[str]:
    """The class names, after checking that the inputs pair up (ValueError naming the mismatch)."""
    if len(preds) != len(gts):
        raise ValueError(f"preds has {len(preds)} images but gts has {len(gts)}; they must pair up")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if area_scale is not None and len(area_scale) != len(preds):
        raise ValueError(f"area_scale has {len(area_scale)} values for {len(preds)} images")
    names = list(names) if names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} names for {num_classes} classes")
    return names


def _per_class(groups: list[list[_Group]], n_gt: np.ndarray, conf: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """AP per class and IoU threshold, precision and recall per class at `conf` (IoU 0.5), and the
    true positives and detections at `conf` over all classes."""
    num_classes = len(groups)
    ap = np.full((num_classes, len(IOU_THRESHOLDS)), np.nan)
    prec_c = np.full(num_classes, np.nan)
    rec_c = np.full(num_classes, np.nan)
    tp_total = det_total = 0
    for c in range(num_classes):
        ap[c], m50 = _class_ap(groups[c], None)
        s = np.concatenate([g.scores for g in groups[c]]) if groups[c] else np.zeros(0)
        above = s >= conf
        tp_c, det_c = int(m50[above].sum()), int(above.sum())
        tp_total += tp_c
        det_total += det_c
        if n_gt[c]:
            prec_c[c] = tp_c / det_c if det_c else 0.0
            rec_c[c] = tp_c / n_gt[c]
        elif det_c:
            prec_c[c] = 0.0
    return ap, prec_c, rec_c, tp_total, det_total


def evaluate_detections(
    preds: list[np.ndarray],
    gts: list[np.ndarray],
    num_classes: int,
    names: list[str] | None = None,
    conf: float = 0.25,
    max_dets: int = 100,
    area_ranges: bool = False,
    area_scale: Sequence[float] | None = None,
) -> EvalResult:
    """COCO bbox metrics for per-image predictions and ground truth.

    preds[i]: [n, 6] x1, y1, x2, y2, score, cls for image i (any order; class may be float).
    gts[i]:   [m, 5] cls, x1, y1, x2, y2 for image i (same pixel space as the predictions).
    area_ranges: also AP50-95 for COCO's small (< 32^2 px), medium and large (> 96^2 px) objects.
    area_scale[i]: multiplies image i's box areas into the pixels those ranges are defined in
    (1 / scale^2 for boxes in a letterboxed input scaled by `scale`, so objects are sized in the
    source image, as COCO does); default 1.
    """
    names = _checked_names(preds, gts, num_classes, names, area_scale)
    groups = _group(preds, gts, num_classes, max_dets, area_scale)
    n_gt = np.array([sum(len(g.gt) for g in groups[c]) for c in range(num_classes)], np.int64)
    n_pred = np.array([sum(len(g.scores) for g in groups[c]) for c in range(num_classes)], np.int64)
    ap, prec_c, rec_c, tp_conf_total, det_conf_total = _per_class(groups, n_gt, conf)
    has_gt = n_gt > 0
    area_ap: dict[str, float] = {}
    if area_ranges:
        for label, rng in AREA_RANGES.items():
            a = np.array([_class_ap(groups[c], rng)[0] for c in range(num_classes)])
            counted = ~np.isnan(a[:, 0])
            area_ap[label] = float(np.mean(a[counted])) if counted.any() else float("nan")
    total_gt = int(n_gt.sum())
    return EvalResult(
        map50=float(np.mean(ap[has_gt, 0])) if has_gt.any() else float("nan"),
        map50_95=float(np.mean(ap[has_gt])) if has_gt.any() else float("nan"),
        per_class_ap={names[c]: float(np.mean(ap[c])) for c in range(num_classes)},
        per_class_ap50={names[c]: float(ap[c, 0]) for c in range(num_classes)},
        precision=tp_conf_total / det_conf_total if det_conf_total else 0.0,
        recall=tp_conf_total / total_gt if total_gt else float("nan"),
        conf=float(conf),
        per_class_precision={names[c]: float(prec_c[c]) for c in range(num_classes)},
        per_class_recall={names[c]: float(rec_c[c]) for c in range(num_classes)},
        n_images=len(preds),
        n_gt=total_gt,
        n_pred=int(n_pred.sum()),
        gt_per_class={names[c]: int(n_gt[c]) for c in range(num_classes)},
        pred_per_class={names[c]: int(n_pred[c]) for c in range(num_classes)},
        area_ap=area_ap,
    )


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first.

    For evaluating the one-to-many reference head only (the shipped detector is NMS-free).
    Each step suppresses, in one vectorised IoU row, every remaining box overlapping the current
    best by more than `iou`.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    order = np.argsort(-scores, kind="mergesort")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        ov = box_iou(boxes[i:i + 1], boxes[rest])[0]
        order = rest[ov <= iou]
    return np.asarray(keep, np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other.

    Shifts each class's boxes by a class-dependent offset larger than any coordinate, so one
    plain :func:`nms` pass works per class at once.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    classes = np.asarray(classes).reshape(-1).astype(np.float64)
    offset = classes[:, None] * (np.abs(boxes).max() * 2 + 1)
    return nms(boxes + offset, scores, iou)
