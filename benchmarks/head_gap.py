"""Where the one-to-one (NMS-free) head loses against the one-to-many head + NMS, on one checkpoint.

No training: both heads of the same weights are decoded on the same validation images (the
deployed top-K for one-to-one, class-aware NMS at IoU 0.7 for one-to-many), and each head's
detections are sorted into error types in the manner of TIDE (Bolya et al., ECCV 2020; our own
code, from the paper's definitions), at IoU t_f = 0.5 (foreground) and t_b = 0.1 (background),
highest score first, per image:

- TP: same class, IoU >= t_f with a ground truth box no higher-scoring detection took;
- duplicate: same class, IoU >= t_f, but that box was already taken (what NMS would remove);
- classification: IoU >= t_f with a box of another class;
- localisation: same class, t_b <= IoU < t_f;
- both: another class and t_b <= IoU < t_f;
- background: IoU < t_b with every box;
- missed: a ground-truth box that no TP and no localisation/classification error points at.

Each type's cost is the mAP gained by an oracle that fixes only that type (duplicates and background
removed; a classification/localisation error relabelled/snapped onto its box when that box is still
free, else removed), scored by vap's COCO evaluator. Box tightness is the mean IoU of the TPs.

    PYTHONPATH=. nice python benchmarks/head_gap.py [--data data.yaml] [--ckpt vap_video/engines/models/vap-synth-n.pt]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vap_video.engines.evaluate import AREA_RANGES, batched_nms, box_iou, evaluate_detections

T_F, T_B = 0.5, 0.1
TYPES = ("tp", "duplicate", "classification", "localisation", "both", "background")


def classify(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Error type per detection (index into TYPES), its target ground truth (-1 for background),
    and per ground truth whether a TP took it. `p` [n, 6] any order; `g` [m, 5]."""
    order = np.argsort(-p[:, 4], kind="mergesort")
    kind = np.zeros(len(p), np.int64)
    target = np.full(len(p), -1, np.int64)
    taken = np.zeros(len(g), bool)
    iou = box_iou(p[:, :4], g[:, 1:5]) if len(g) else np.zeros((len(p), 0))
    same = p[:, 5:6].round() == g[None, :, 0].round() if len(g) else np.zeros((len(p), 0), bool)
    for d in order:
        if not len(g):
            kind[d] = TYPES.index("background")
            continue
        free_same = np.where(same[d] & ~taken, iou[d], -1.0)
        j = int(np.argmax(free_same))
        if free_same[j] >= T_F:
            kind[d], target[d], taken[j] = 0, j, True
            continue
        s_iou = np.where(same[d], iou[d], -1.0)
        o_iou = np.where(~same[d], iou[d], -1.0)
        if s_iou.max() >= T_F:
            kind[d], target[d] = TYPES.index("duplicate"), int(np.argmax(s_iou))
        elif o_iou.max() >= T_F:
            kind[d], target[d] = TYPES.index("classification"), int(np.argmax(o_iou))
        elif s_iou.max() >= T_B:
            kind[d], target[d] = TYPES.index("localisation"), int(np.argmax(s_iou))
        elif o_iou.max() >= T_B:
            kind[d], target[d] = TYPES.index("both"), int(np.argmax(o_iou))
        else:
            kind[d] = TYPES.index("background")
    return kind, target, taken


def fix(preds: list[np.ndarray], gts: list[np.ndarray], what: str) -> list[np.ndarray]:
    """The predictions with one error type fixed by an oracle (see the module docstring)."""
    out = []
    for p, g in zip(preds, gts):
        kind, target, taken = classify(p, g)
        keep = np.ones(len(p), bool)
        q = p.copy()
        if what in ("duplicate", "background", "both"):
            keep &= kind != TYPES.index(what)
        elif what in ("classification", "localisation"):
            for d in np.argsort(-p[:, 4], kind="mergesort"):
                if kind[d] != TYPES.index(what):
                    continue
                j = target[d]
                if taken[j]:
                    keep[d] = False
                    continue
                taken[j] = True
                if what == "classification":
                    q[d, 5] = g[j, 0]
                else:
                    q[d, :4] = g[j, 1:5]
        out.append(q[keep])
    return out


def with_nms(preds: list[np.ndarray], iou: float) -> list[np.ndarray]:
    """Class-aware NMS over a head's rows: what removing its duplicates at every IoU threshold is worth."""
    return [p[batched_nms(p[:, :4], p[:, 4], p[:, 5], iou)] for p in preds]


def duplicate_scores(preds: list[np.ndarray], gts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Score of each duplicate, and its ratio to the score of the TP that took the box first."""
    scores, ratios = [], []
    for p, g in zip(preds, gts):
        kind, target, _ = classify(p, g)
        tp_score = {int(target[d]): p[d, 4] for d in np.flatnonzero(kind == 0)}
        for d in np.flatnonzero(kind == TYPES.index("duplicate")):
            scores.append(p[d, 4])
            ratios.append(p[d, 4] / tp_score.get(int(target[d]), np.nan))
    return np.asarray(scores), np.asarray(ratios)


def size_of(area: float) -> str:
    for name, (lo, hi) in AREA_RANGES.items():
        if lo <= area <= hi:
            return name
    return "large"


def counts_by_size(preds: list[np.ndarray], gts: list[np.ndarray], scales: list[float], conf: float) -> dict:
    """Error counts among detections scoring >= conf, by the COCO size of their target box
    (background: of the detection itself); missed boxes by their own size."""
    table = {s: {**dict.fromkeys((*TYPES, "missed"), 0), "tp_iou": []} for s in AREA_RANGES}
    for p, g, k in zip(preds, gts, scales):
        kind, target, taken = classify(p, g)
        for d in np.flatnonzero((kind == 0) & (p[:, 4] >= conf)):
            b = g[target[d], 1:5]
            table[size_of(float((b[2] - b[0]) * (b[3] - b[1]) * k))]["tp_iou"].append(
                float(box_iou(p[d:d + 1, :4], b[None])[0, 0]))
        pointed = set(target[(kind != TYPES.index("background")) & (target >= 0)].tolist())
        area = lambda b, k=k: float((b[2] - b[0]) * (b[3] - b[1]) * k)
        for d in np.flatnonzero(p[:, 4] >= conf):
            box = g[target[d], 1:5] if target[d] >= 0 else p[d, :4]
            table[size_of(area(box))][TYPES[kind[d]]] += 1
        for j in range(len(g)):
            if not taken[j] and j not in pointed:
                table[size_of(area(g[j, 1:5]))]["missed"] += 1
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, default=Path("vap_video/engines/models/vap-synth-n.pt"))
    ap.add_argument("--data", type=Path, default=None, help="default: the synthetic val set (seed 0, 300 images)")
    ap.add_argument("--conf", type=float, default=0.25, help="operating threshold for the error counts")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from vap_video.engines.evaluate_engine import val_samples
    from vap_video.engines.train import load_checkpoint, model_from_checkpoint, validate

    torch.set_num_threads(args.threads)
    data = args.data
    if data is None:
        from vap_video.engines.synth import write_yolo_dataset
        data = write_yolo_dataset(Path("runs/data/headgap"), 1, 300, imgsz=320, seed=0, haze_fraction=0.25)
    ck = load_checkpoint(args.ckpt)
    samples, names = val_samples(data)
    res = validate(model_from_checkpoint(ck).eval(), samples, int(ck["train_cfg"]["imgsz"]), 16, names,
                   heads=("o2o", "o2m"), area_ranges=True, keep_preds=True)
    gts, scales = res["gts"], res["area_scale"]
    print(f"{args.ckpt} on {data}: {len(gts)} images, {sum(len(g) for g in gts)} boxes\n")
    print("| head | mAP50 | mAP50-95 | AP small | AP medium | AP large |\n|---|---|---|---|---|---|")
    for h in ("o2o", "o2m"):
        ev = res[h]["eval"]
        print(f"| {h} | {ev.map50:.3f} | {ev.map50_95:.3f} | " + " | ".join(f"{ev.area_ap[s]:.3f}" for s in AREA_RANGES)
              + " |")
    print("\n| decoding | mAP50 | mAP50-95 | " + " | ".join(f"AP {n}" for n in names) + " |\n|---|---|---|"
          + "---|" * len(names))
    rows = [("o2o top-K (deployed)", res["o2o"]["preds"]), ("o2m + NMS 0.7 (reference)", res["o2m"]["preds"])]
    rows += [(f"o2o top-K + NMS {t}", with_nms(res["o2o"]["preds"], t)) for t in (0.7, 0.6)]
    for label, preds in rows:
        ev = evaluate_detections(preds, gts, len(names), names)
        print(f"| {label} | {ev.map50:.3f} | {ev.map50_95:.3f} | "
              + " | ".join(f"{ev.per_class_ap[n]:.3f}" for n in names) + " |")
    for h in ("o2o", "o2m"):
        sc, ratio = duplicate_scores(res[h]["preds"], gts)
        print(f"\n{h}: {len(sc)} duplicates at IoU >= {T_F}, {int((sc >= 0.25).sum())} scoring >= 0.25; median score "
              f"{np.median(sc):.3f}, median ratio to the box's TP {np.nanmedian(ratio):.2f}")
    print("\nmAP gained by fixing one error type (mAP50 / mAP50-95):\n")
    print("| error type | o2o | o2m |\n|---|---|---|")
    for what in ("duplicate", "classification", "localisation", "both", "background"):
        cells = []
        for h in ("o2o", "o2m"):
            base = res[h]["eval"]
            ev = evaluate_detections(fix(res[h]["preds"], gts, what), gts, len(names), names)
            cells.append(f"{ev.map50 - base.map50:+.3f} / {ev.map50_95 - base.map50_95:+.3f}")
        print(f"| {what} | {' | '.join(cells)} |")
    print(f"\nDetections scoring >= {args.conf} by type and object size (missed: boxes found by nothing):\n")
    print("| head | size | " + " | ".join((*TYPES, "missed")) + " | mean IoU of the TPs |\n|---|---|"
          + "---|" * (len(TYPES) + 2))
    for h in ("o2o", "o2m"):
        for size, row in counts_by_size(res[h]["preds"], gts, scales, args.conf).items():
            print(f"| {h} | {size} | " + " | ".join(str(row[t]) for t in (*TYPES, "missed"))
                  + f" | {np.mean(row['tp_iou']):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
