"""Tracking accuracy of two MOTChallenge sequences: CLEAR MOT, identity (IDF1) and HOTA metrics.

Clean-room implementations from the papers:

* CLEAR MOT (Bernardin & Stiefelhagen, 2008), with the MOTChallenge devkit's matching (as in
  TrackEval): per frame one optimal matching at IoU >= threshold in which keeping the previous
  frame's pair outweighs any IoU difference; a match to another hypothesis than the object was
  last matched to (any number of frames before) is an identity switch.
  MOTA = 1 - (FN + FP + IDSW) / GT.
* Identity metrics (Ristani et al., ECCV 2016 workshops): one global one-to-one assignment of
  ground-truth trajectories to predicted trajectories that maximises the frames where the pair
  overlaps enough (IDTP); IDF1 = 2 IDTP / (GT + predictions).
* HOTA (Luiten et al., IJCV 2020): for each IoU threshold alpha in 0.05..0.95, a per-frame
  matching that prefers pairs which are well associated over the whole sequence, then
  DetA = TP / (TP + FN + FP), AssA = mean over TPs of the pair's association Jaccard, and
  HOTA = sqrt(DetA x AssA); reported values are averages over alpha.

Ground-truth rows with score 0 (MOT16+ "do not consider" flag) are dropped; distractor classes
are not treated specially (predictions on them count as false positives).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from vap_video.pipeline.geometry import iou_matrix
from vap_video.pipeline.tools.mot import MotSequence, read_mot

__all__ = ["HOTA_ALPHAS", "evaluate_mot", "evaluate_sequences", "format_metrics"]

HOTA_ALPHAS = np.arange(0.05, 0.96, 0.05)
_EPS = np.finfo(np.float64).eps


def _frames(gt: MotSequence, pr: MotSequence) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per frame (union of both files' frames): gt ids, pred ids, IoU matrix gt x pred."""
    gs, ps = gt.frame_slices(), pr.frame_slices()
    gt_xyxy, pr_xyxy = gt.boxes_xyxy, pr.boxes_xyxy
    out = []
    for f in sorted(set(gs) | set(ps)):
        g = gs.get(f, slice(0, 0))
        p = ps.get(f, slice(0, 0))
        iou = iou_matrix(gt_xyxy[g], pr_xyxy[p]).astype(np.float64)
        out.append((gt.ids[g], pr.ids[p], iou))
    return out


def _clear(frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]], thr: float) -> dict[str, float]:
    last: dict[int, int] = {}  # gt id -> hypothesis it was last matched to
    tp = fp = fn = idsw = 0
    iou_sum = 0.0
    per_gt_frames: dict[int, int] = {}
    per_gt_matched: dict[int, list[bool]] = {}
    prev_step: dict[int, int] = {}  # gt id -> hypothesis matched in the previous frame with any boxes
    for g_ids, p_ids, iou in frames:
        ng, npr = len(g_ids), len(p_ids)
        g_done = np.zeros(ng, bool)
        p_done = np.zeros(npr, bool)
        pairs: list[tuple[int, int]] = []
        if ng and npr:
            # one optimal matching in which continuing last frame's pair outweighs any IoU, so a
            # correspondence is kept while it still overlaps enough (the MOTChallenge devkit's rule)
            cont = np.array([[prev_step.get(g, None) == h for h in p_ids.tolist()] for g in g_ids.tolist()])
            score = np.where(iou >= thr - 1e-12, 1000.0 * cont + iou, 0.0)
            r, c = linear_sum_assignment(-score)
            ok = score[r, c] > 1e-12
            for i, j in zip(r[ok].tolist(), c[ok].tolist()):
                g, h = int(g_ids[i]), int(p_ids[j])
                if g in last and last[g] != h:  # a switch: not the hypothesis it was last matched to
                    idsw += 1
                g_done[i] = p_done[j] = True
                pairs.append((i, j))
            prev_step = {int(g_ids[i]): int(p_ids[j]) for i, j in pairs}
        for i, j in pairs:
            last[int(g_ids[i])] = int(p_ids[j])
            iou_sum += float(iou[i, j])
        tp += len(pairs)
        fn += int(ng - g_done.sum())
        fp += int(npr - p_done.sum())
        for i, g in enumerate(g_ids.tolist()):
            per_gt_frames[g] = per_gt_frames.get(g, 0) + 1
            per_gt_matched.setdefault(g, []).append(bool(g_done[i]))
    n_gt = tp + fn
    mt = pt = ml = frag = 0
    for flags in per_gt_matched.values():
        ratio = sum(flags) / len(flags)
        if ratio >= 0.8:
            mt += 1
        elif ratio < 0.2:
            ml += 1
        else:
            pt += 1
        if any(flags):  # fragmentations: tracked -> missed transitions inside the tracked span
            first = flags.index(True)
            lastk = len(flags) - 1 - flags[::-1].index(True)
            span = flags[first:lastk + 1]
            frag += sum(1 for a, b in zip(span, span[1:]) if a and not b)
    return {
        "mota": 1.0 - (fn + fp + idsw) / n_gt if n_gt else float("nan"),
        "motp_iou": iou_sum / tp if tp else float("nan"),
        "tp": tp, "fp": fp, "fn": fn, "id_switches": idsw, "fragmentations": frag,
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / n_gt if n_gt else float("nan"),
        "num_gt": n_gt, "num_gt_ids": len(per_gt_frames),
        "mostly_tracked": mt, "partially_tracked": pt, "mostly_lost": ml,
    }


def _dense_ids(ids: np.ndarray) -> tuple[np.ndarray, int]:
    uniq, inv = np.unique(ids, return_inverse=True)
    return inv.reshape(-1), len(uniq)


def _identity(gt: MotSequence, pr: MotSequence, frames: list, thr: float) -> dict[str, float]:
    g_all, ng = _dense_ids(gt.ids) if len(gt) else (np.zeros(0, np.int64), 0)
    p_all, npr = _dense_ids(pr.ids) if len(pr) else (np.zeros(0, np.int64), 0)
    g_map = {int(k): i for i, k in enumerate(np.unique(gt.ids))}
    p_map = {int(k): i for i, k in enumerate(np.unique(pr.ids))}
    overlap = np.zeros((ng, npr))
    for g_ids, p_ids, iou in frames:
        if len(g_ids) and len(p_ids):
            gi = np.array([g_map[int(v)] for v in g_ids])
            pi = np.array([p_map[int(v)] for v in p_ids])
            np.add.at(overlap, (gi[:, None], pi[None, :]), (iou >= thr - 1e-12).astype(np.float64))
    idtp = 0.0
    if ng and npr:
        r, c = linear_sum_assignment(-overlap)
        idtp = float(overlap[r, c].sum())
    n_gt, n_pr = len(g_all), len(p_all)
    return {
        "idf1": 2 * idtp / (n_gt + n_pr) if n_gt + n_pr else float("nan"),
        "idp": idtp / n_pr if n_pr else float("nan"),
        "idr": idtp / n_gt if n_gt else float("nan"),
        "idtp": idtp, "idfp": n_pr - idtp, "idfn": n_gt - idtp,
    }


def _hota(gt: MotSequence, pr: MotSequence, frames: list) -> dict[str, float]:
    g_map = {int(k): i for i, k in enumerate(np.unique(gt.ids))}
    p_map = {int(k): i for i, k in enumerate(np.unique(pr.ids))}
    ng, npr = len(g_map), len(p_map)
    dense = []
    # global alignment: soft co-occurrence of each (gt, pred) pair, normalised per frame so one
    # box shared by several candidates is not counted several times
    potential = np.zeros((ng, npr))
    g_count = np.zeros((ng, 1))
    p_count = np.zeros((1, npr))
    for g_ids, p_ids, iou in frames:
        gi = np.array([g_map[int(v)] for v in g_ids], np.int64)
        pi = np.array([p_map[int(v)] for v in p_ids], np.int64)
        dense.append((gi, pi, iou))
        if len(gi) and len(pi):
            denom = iou.sum(0)[None, :] + iou.sum(1)[:, None] - iou
            soft = np.where(denom > _EPS, iou / np.maximum(denom, _EPS), 0.0)
            potential[gi[:, None], pi[None, :]] += soft
        g_count[gi] += 1
        p_count[0, pi] += 1
    align = potential / np.maximum(g_count + p_count - potential, _EPS)

    na = len(HOTA_ALPHAS)
    tp = np.zeros(na)
    fn = np.zeros(na)
    fp = np.zeros(na)
    matches = np.zeros((na, ng, npr))
    for gi, pi, iou in dense:
        if len(gi) == 0 or len(pi) == 0:
            fn += len(gi)
            fp += len(pi)
            continue
        score = align[gi[:, None], pi[None, :]] * iou
        r, c = linear_sum_assignment(-score)
        sims = iou[r, c]
        for a, alpha in enumerate(HOTA_ALPHAS):
            ok = sims >= alpha - _EPS
            k = int(ok.sum())
            tp[a] += k
            fn[a] += len(gi) - k
            fp[a] += len(pi) - k
            matches[a, gi[r[ok]], pi[c[ok]]] += 1
    det_a = tp / np.maximum(tp + fn + fp, 1.0)
    ass_a = np.zeros(na)
    for a in range(na):
        m = matches[a]
        jac = m / np.maximum(g_count + p_count - m, 1.0)
        ass_a[a] = float((m * jac).sum() / max(tp[a], 1.0))
    hota = np.sqrt(det_a * ass_a)
    return {
        "hota": float(hota.mean()), "deta": float(det_a.mean()), "assa": float(ass_a.mean()),
        "hota_alpha50": float(hota[np.argmin(np.abs(HOTA_ALPHAS - 0.5))]),
    }


def evaluate_mot(gt_path: str | Path, pred_path: str | Path, iou: float = 0.5) -> dict:
    """Score predicted tracks against ground truth (both MOTChallenge files).

    Returns fractions in [0, 1] (MOTA can go below 0): mota, motp_iou, idf1, idp, idr, hota,
    deta, assa, precision, recall, and counts tp, fp, fn, id_switches, fragmentations, num_gt,
    num_gt_ids, mostly_tracked, partially_tracked, mostly_lost, idtp, idfp, idfn. `iou` is the
    match threshold of CLEAR and identity metrics (HOTA integrates over thresholds).
    """
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou threshold must be in (0, 1], got {iou}")
    return evaluate_sequences(read_mot(gt_path), read_mot(pred_path), iou)


def evaluate_sequences(gt: MotSequence, pr: MotSequence, iou: float = 0.5) -> dict:
    """`evaluate_mot` on sequences already in memory (same result keys)."""
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou threshold must be in (0, 1], got {iou}")
    gt = gt.select(gt.scores != 0)  # MOT16+ ground truth: 0 = ignore this box
    frames = _frames(gt, pr)
    out: dict = {}
    out.update(_clear(frames, iou))
    out.update(_identity(gt, pr, frames, iou))
    out.update(_hota(gt, pr, frames))
    out["iou_threshold"] = iou
    return out


_TABLE = [("MOTA", "mota", "%"), ("IDF1", "idf1", "%"), ("HOTA", "hota", "%"), ("DetA", "deta", "%"),
          ("AssA", "assa", "%"), ("MOTP", "motp_iou", "%"), ("Prec", "precision", "%"),
          ("Rcll", "recall", "%"), ("IDsw", "id_switches", "n"), ("FP", "fp", "n"), ("FN", "fn", "n"),
          ("Frag", "fragmentations", "n"), ("MT", "mostly_tracked", "n"), ("ML", "mostly_lost", "n")]


def format_metrics(name: str, m: dict) -> str:
    """One-row text table (header + values), percentages with one decimal."""
    head = f"{'':<16}" + "".join(f"{h:>8}" for h, _, _ in _TABLE)
    vals = "".join(f"{100 * m[k]:>7.1f}%" if kind == "%" else f"{int(m[k]):>8d}" for _, k, kind in _TABLE)
    return head + "\n" + f"{name[:16]:<16}" + vals
