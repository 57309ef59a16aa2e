"""Validation during and after training: both heads of a detector on letterboxed images.

``o2o`` is the NMS-free top-K path that is exported and deployed; ``o2m`` the one-to-many head
with class-aware NMS, the reference the NMS-free head should approach. Deployed engines are scored
by vap_video/engines/evaluate_engine.py instead, against the same ground truth placement.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

__all__ = ["validate", "pr_curve", "collate_fn", "val_batches"]


def collate_fn():
    """The data engineer's collate (``YoloDataset.collate`` if present, else ``dataset.collate``)."""
    from vap_video.engines import dataset as ds

    return getattr(ds.YoloDataset, "collate", None) or ds.collate


def val_batches(samples: list, imgsz: int, batch: int):
    """Yield (images, targets) for validation (letterboxed, no augmentation)."""
    from vap_video.engines.dataset import YoloDataset

    vds = YoloDataset(samples, imgsz, augment=False)
    collate = collate_fn()
    for i in range(0, len(vds), batch):
        yield collate([vds[j] for j in range(i, min(i + batch, len(vds)))])


def _o2m_nms_preds(boxes, scores, conf: float, iou: float, max_det: int, pre_nms: int = 1000) -> np.ndarray:
    """One-to-many head decoded the classic way: score filter, class-aware NMS (reference only)."""
    from vap_video.engines.evaluate import batched_nms

    s = scores.numpy()
    b = boxes.numpy()
    a_idx, c_idx = np.nonzero(s > conf)
    sc = s[a_idx, c_idx]
    if len(sc) > pre_nms:
        top = np.argpartition(-sc, pre_nms)[:pre_nms]
        a_idx, c_idx, sc = a_idx[top], c_idx[top], sc[top]
    if len(sc) == 0:
        return np.zeros((0, 6), np.float32)
    bx = b[a_idx]
    keep = np.asarray(batched_nms(bx, sc, c_idx, iou), dtype=np.int64)[:max_det]
    return np.concatenate([bx[keep], sc[keep, None], c_idx[keep, None].astype(np.float32)], 1).astype(np.float32)


def pr_curve(preds: list[np.ndarray], gts: list[np.ndarray], iou_thr: float = 0.5) -> tuple[np.ndarray, ...]:
    """Class-pooled precision/recall over score thresholds at IoU 0.5 (greedy, highest score first).

    Used for the PR plot only; mAP and P/R at the operating threshold come from vap_video.engines.evaluate.
    """
    from vap_video.engines.assign import box_iou_pairwise
    import torch

    scores, tps = [], []
    n_gt = 0
    for p, g in zip(preds, gts):
        n_gt += len(g)
        if len(p) == 0:
            continue
        order = np.argsort(-p[:, 4])
        p = p[order]
        tp = np.zeros(len(p), bool)
        if len(g):
            iou = box_iou_pairwise(torch.from_numpy(p[:, None, :4]).float(),
                                   torch.from_numpy(g[None, :, 1:5]).float()).numpy()
            same = p[:, 5:6].astype(int) == g[None, :, 0].astype(int)
            iou = np.where(same, iou, 0.0)
            used = np.zeros(len(g), bool)
            for i in range(len(p)):
                cand = np.where(~used, iou[i], 0.0)
                j = int(cand.argmax())
                if cand[j] >= iou_thr:
                    used[j] = True
                    tp[i] = True
        scores.append(p[:, 4])
        tps.append(tp)
    if not scores:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    s = np.concatenate(scores)
    t = np.concatenate(tps)
    order = np.argsort(-s)
    s, t = s[order], t[order]
    ctp = np.cumsum(t)
    precision = ctp / np.arange(1, len(t) + 1)
    recall = ctp / max(n_gt, 1)
    return s, precision, recall


def _area_scales(samples: list, imgsz: int) -> list[float]:
    """Per image, the factor from letterboxed to source-pixel areas (1 / scale^2), for COCO's size ranges."""
    from vap_video.engines.dataset import load_image

    out = []
    for path, _ in samples:
        h, w = load_image(path).shape[:2]
        out.append(1.0 / min(imgsz / h, imgsz / w) ** 2)
    return out


def validate(model, samples: list, imgsz: int, batch: int, names: list[str], conf: float = 0.25,
             heads: tuple[str, ...] = ("o2o",), nms_iou: float = 0.7, device=None,
             area_ranges: bool = False, keep_preds: bool = False) -> dict[str, Any]:
    """Evaluate a detector on letterboxed validation images.

    ``o2o``: the NMS-free inference path (top-K, the deployed behaviour). ``o2m``: the
    one-to-many head with class-aware NMS, as the reference the NMS-free head should approach.
    Returns per head: EvalResult, P/R at ``conf``, the PR curve; plus ms per image. With
    ``area_ranges`` also COCO's small/medium/large APs (objects sized in source pixels). With
    ``keep_preds`` also the rows themselves (``result[head]["preds"]``, ``result["gts"]``, letterboxed
    pixels) and ``result["area_scale"]``, for error analyses (benchmarks/head_gap.py).
    """
    import torch
    from vap_video.engines.detector import topk_end2end
    from vap_video.engines.evaluate import evaluate_detections

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds: dict[str, list[np.ndarray]] = {h: [] for h in heads}
    gts: list[np.ndarray] = []
    t_inf, n_img = 0.0, 0
    with torch.no_grad():
        for images, targets in val_batches(samples, imgsz, batch):
            images = images.to(device).float()
            t0 = time.perf_counter()
            if heads == ("o2o",):
                out = {"o2o": model(images)}
            else:
                raw = model.forward_raw(images)
                out = {}
                for h in heads:
                    boxes, scores = model.decode(raw[h], raw["anchors"], raw["strides"])
                    out[h] = (boxes.float().cpu(), scores.float().cpu()) if h == "o2m" else \
                        topk_end2end(boxes, scores, model.max_det)
            t_inf += time.perf_counter() - t0
            n_img += images.shape[0]
            t = targets.cpu().numpy()
            for i in range(images.shape[0]):
                gts.append(t[t[:, 0] == i][:, 1:6].astype(np.float32))
                for h in heads:
                    if h == "o2m":
                        preds[h].append(_o2m_nms_preds(out[h][0][i], out[h][1][i], 0.001, nms_iou, model.max_det))
                    else:
                        p = out[h][i].float().cpu().numpy()
                        preds[h].append(p[p[:, 4] > 0.001])
    model.train(was_training)
    result: dict[str, Any] = {"ms_per_image": 1000 * t_inf / max(n_img, 1), "images": n_img}
    scales = _area_scales(samples, imgsz) if area_ranges else None
    for h in heads:
        ev = evaluate_detections(preds[h], gts, len(names), names, conf=conf, area_ranges=area_ranges,
                                 area_scale=scales)
        result[h] = {"eval": ev, "precision": ev.precision, "recall": ev.recall, "curve": pr_curve(preds[h], gts)}
        if keep_preds:
            result[h]["preds"] = preds[h]
    if keep_preds:
        result["gts"], result["area_scale"] = gts, scales
    return result
