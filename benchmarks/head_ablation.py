"""Head-gap ablation: train each loss/assignment variant with the same reduced recipe, score both heads.

Every variant trains from scratch with the same seed, synthetic dataset, epochs, image size and
batch (configs/train-synth.yaml with a shorter schedule and per-epoch validation off, so the budget
goes to training), then the final EMA weights are scored on the same validation images, as
benchmarks/head_gap.py does: the one-to-one head by the deployed top-K (no NMS), the one-to-many
head with class-aware NMS at IoU 0.7, and, as a diagnostic of duplicates, the one-to-one head with
that NMS added. Each variant writes ``OUT/VARIANT/result.json`` and prints its markdown table row.

Resumable: a variant whose result.json exists is skipped (its row is reprinted); one whose run has a
``last.pt`` short of the schedule is resumed from it, so a killed run continues where it stopped.

    PYTHONPATH=. nice -n 19 python benchmarks/head_ablation.py [--variants baseline,consistent] \\
        [--epochs 8] [--train 1000] [--val 300] [--out runs/head_ablation]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any


# Every variant starts from the recipe as it was when the tables in benchmarks/model.md were measured:
# one gradient-norm clip over all parameters, the one-to-one head on detached features with its box terms
# one-to-one and no clip of its own (o2o_clip_apart, then no_detach + dense box + o2o_clip_grad 40 became
# the defaults after these runs).
ABLATION_BASE: dict[str, Any] = {"o2o_clip_apart": False, "o2o_detach_epochs": None, "o2o_box_dense": False,
                                 "o2o_clip_grad": None}

# Each variant changes recipe keys of vap_video/engines/train_config.py and nothing else.
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "consistent": {"o2o_match": "o2m"},
    "o2o_cls2": {"o2o_cls": 2.0},
    "no_detach": {"o2o_detach_epochs": 0},
    "detach_early": {"o2o_detach_epochs": 3},
    "o2o_topk1": {"o2o_topk": 1},
    "consistent_cls2": {"o2o_match": "o2m", "o2o_cls": 2.0},
    "stal2": {"min_half_strides": 2.0},
    "clip_apart": {"o2o_clip_apart": True},
    "clip_apart_cls2": {"o2o_clip_apart": True, "o2o_cls": 2.0},
    # the one-to-one head's gradient norm is ~23 mid-run, so clip_grad 10 shrinks its step ~2.3x
    "clip_apart_o2o40": {"o2o_clip_apart": True, "o2o_clip_grad": 40.0},
    "clip_apart_consistent": {"o2o_clip_apart": True, "o2o_match": "o2m"},
    "clip_apart_o2o40_dense_box": {"o2o_clip_apart": True, "o2o_clip_grad": 40.0, "o2o_box_dense": True},
    "clip_apart_o2o40_dense_box_cls2": {"o2o_clip_apart": True, "o2o_clip_grad": 40.0, "o2o_box_dense": True,
                                        "o2o_cls": 2.0},
    # stop-gradient placement revisited without the clip coupling: the one-to-one loss also trains the trunk
    "clip_apart_o2o40_dense_box_no_detach": {"o2o_clip_apart": True, "o2o_clip_grad": 40.0, "o2o_box_dense": True,
                                             "o2o_detach_epochs": 0},
    # Varifocal classification for the one-to-one head (its easy negatives down-weighted)
    "clip_apart_o2o40_dense_box_vfl": {"o2o_clip_apart": True, "o2o_clip_grad": 40.0, "o2o_box_dense": True,
                                       "o2o_cls_loss": "vfl"},
    # which part of the winning row carries the gain: no detach alone, and without the head's own clip limit
    "clip_apart_no_detach": {"o2o_clip_apart": True, "o2o_detach_epochs": 0},
    "clip_apart_dense_box_no_detach": {"o2o_clip_apart": True, "o2o_box_dense": True, "o2o_detach_epochs": 0},
    # the same rows at seed 1 (a paired replication: the one-to-many head is shared within a seed)
    "clip_apart_o2o40_dense_box_seed1": {"o2o_clip_apart": True, "o2o_clip_grad": 40.0, "o2o_box_dense": True,
                                         "seed": 1},
    "clip_apart_o2o40_dense_box_vfl_seed1": {"o2o_clip_apart": True, "o2o_clip_grad": 40.0, "o2o_box_dense": True,
                                             "o2o_cls_loss": "vfl", "seed": 1},
    "clip_apart_o2o40_dense_box_no_detach_seed1": {"o2o_clip_apart": True, "o2o_clip_grad": 40.0,
                                                   "o2o_box_dense": True, "o2o_detach_epochs": 0, "seed": 1},
    "clip_apart_1thread_seed1": {"o2o_clip_apart": True, "threads": 1, "seed": 1},
    # clip_apart again with the 1-thread training the rows above ran with (threads change the numerics)
    "clip_apart_1thread": {"o2o_clip_apart": True, "threads": 1},
    # not a change: today's defaults with another training seed, to show the run-to-run spread
    "baseline_seed1": {"seed": 1},
    "clip_apart_seed1": {"o2o_clip_apart": True, "seed": 1},
}

ROW_HEAD = ("| variant | changes | o2o mAP50 | o2o mAP50-95 | o2m+NMS mAP50 | o2m+NMS mAP50-95 | gap mAP50-95 (points) "
            "| o2o+NMS 0.7 mAP50-95 | o2o AP small/medium/large | train s |\n|---|---|---|---|---|---|---|---|---|---|")


def recipe(data: Path, out: Path, name: str, epochs: int, seed: int, changes: dict[str, Any]) -> dict[str, Any]:
    """configs/train-synth.yaml, shortened, on ABLATION_BASE: the same for every variant except ``changes``."""
    import yaml

    base = yaml.safe_load(Path("configs/train-synth.yaml").read_text())
    base.update({"data": str(data), "epochs": epochs, "seed": seed, "val": False, "plots": False, "log_every": 0,
                 "project": str(out), "name": name, "exist_ok": True, "close_mosaic": min(2, epochs - 1)})
    base.update(ABLATION_BASE)
    base.update(changes)
    return base


def train_variant(cfg_dict: dict[str, Any]) -> tuple[Path, float]:
    """Train (or resume) one variant; returns its run folder and the summed epoch times from results.csv
    (so epochs trained before a kill and resume are counted once each)."""
    import csv

    from vap_video.engines.train import TrainConfig, resume_config, train

    run = Path(cfg_dict["project"]) / cfg_dict["name"]
    if (run / "last.pt").is_file():
        train(resume_config(run, {}), resume=run)
    else:
        train(TrainConfig(**cfg_dict))
    with open(run / "results.csv", newline="") as f:
        epoch_s = {int(r["epoch"]): float(r["epoch_s"]) for r in csv.DictReader(f)}
    return run, sum(epoch_s.values())


def score(run: Path, threads: int) -> dict[str, Any]:
    """Both heads of the run's final EMA on its validation set (see the module docstring)."""
    import torch

    from vap_video.engines.evaluate import batched_nms, evaluate_detections
    from vap_video.engines.evaluate_engine import val_samples
    from vap_video.engines.train import load_checkpoint, model_from_checkpoint, validate

    torch.set_num_threads(threads)
    ck = load_checkpoint(run / "last.pt")
    samples, names = val_samples(Path(ck["train_cfg"]["data"]))
    res = validate(model_from_checkpoint(ck).eval(), samples, int(ck["train_cfg"]["imgsz"]), 16, names,
                   heads=("o2o", "o2m"), area_ranges=True, keep_preds=True)
    o2o_nms = [p[batched_nms(p[:, :4], p[:, 4], p[:, 5], 0.7)] for p in res["o2o"]["preds"]]
    ev_nms = evaluate_detections(o2o_nms, res["gts"], len(names), names)
    out: dict[str, Any] = {"epochs_trained": int(ck["epoch"]) + 1, "val_images": len(samples)}
    for h in ("o2o", "o2m"):
        ev = res[h]["eval"]
        out[h] = {"map50": ev.map50, "map50_95": ev.map50_95, "area_ap": dict(ev.area_ap),
                  "per_class_ap": dict(ev.per_class_ap)}
    out["o2o_nms07"] = {"map50": ev_nms.map50, "map50_95": ev_nms.map50_95}
    out["gap_map50_95"] = out["o2m"]["map50_95"] - out["o2o"]["map50_95"]
    out["gap_map50"] = out["o2m"]["map50"] - out["o2o"]["map50"]
    return out


def grad_norms(run: Path, threads: int) -> None:
    """Why the detached head still steers the trunk: gradient norms of one validation batch (16 images)
    at the run's final training weights, one-to-one head against everything else, per loss variant."""
    import torch

    from vap_video.engines.evaluate_engine import val_samples
    from vap_video.engines.loss import DetectionLoss
    from vap_video.engines.train import TrainConfig, load_checkpoint, model_from_checkpoint
    from vap_video.engines.train_validate import val_batches

    torch.set_num_threads(threads)
    ck = load_checkpoint(run / "last.pt")
    samples, _ = val_samples(Path(ck["train_cfg"]["data"]))
    images, targets = next(val_batches(samples[:16], int(ck["train_cfg"]["imgsz"]), 16))
    m = model_from_checkpoint(ck, "model").train()
    clip = float(ck["train_cfg"]["clip_grad"])
    for name in ("baseline", "consistent", "o2o_cls2"):
        crit = DetectionLoss.from_config(m, TrainConfig(**{**ck["train_cfg"], **VARIANTS[name]}))
        m.zero_grad(set_to_none=True)
        loss, _ = crit(m(images.float()), targets, int(ck["epoch"]), int(ck["train_cfg"]["epochs"]))
        loss.backward()
        norm = lambda ps: float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in ps if p.grad is not None)))
        head = norm(m.o2o.parameters())
        rest = norm([p for n, p in m.named_parameters() if not n.startswith("o2o.")])
        total = (head ** 2 + rest ** 2) ** 0.5
        print(f"{name}: gradient norm one-to-one head {head:.1f}, rest {rest:.1f}; a shared clip at {clip:g} "
              f"scales the trunk's step by {min(1.0, clip / total):.3f}")


def row(name: str, r: dict[str, Any]) -> str:
    ch = ", ".join(f"{k}={v}" for k, v in r["changes"].items()) or "(the ablation base)"
    a = r["o2o"]["area_ap"]
    return (f"| {name} | {ch} | {r['o2o']['map50']:.3f} | {r['o2o']['map50_95']:.3f} | {r['o2m']['map50']:.3f} | "
            f"{r['o2m']['map50_95']:.3f} | {100 * r['gap_map50_95']:.1f} | {r['o2o_nms07']['map50_95']:.3f} | "
            f"{a['small']:.3f} / {a['medium']:.3f} / {a['large']:.3f} | {r['train_s']:.0f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--train", type=int, default=1000, help="synthetic training images")
    ap.add_argument("--val", type=int, default=300, help="synthetic validation images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/head_ablation"))
    ap.add_argument("--threads", type=int, default=2, help="torch threads for scoring")
    ap.add_argument("--train-threads", type=int, default=None,
                    help="torch threads for training (default: the recipe's), e.g. 1 to run two variants side by side")
    ap.add_argument("--grad-norms", type=Path, default=None, metavar="RUN",
                    help="only print the gradient-norm split at RUN's last.pt (no training)")
    args = ap.parse_args()
    if args.grad_norms is not None:
        grad_norms(args.grad_norms, args.threads)
        return 0
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        print(f"head_ablation: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        return 2
    if args.epochs < 2:
        print("head_ablation: --epochs must be at least 2 (the last epochs train without mosaic)")
        return 2
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from vap_video.engines.synth import write_yolo_dataset

    data_dir = Path("runs/data") / f"ablation-{args.train}-{args.val}-s{args.seed}"
    data = data_dir / "data.yaml"
    if not data.is_file():  # deterministic: every image is a function of (seed, split, index)
        data = write_yolo_dataset(data_dir, args.train, args.val, imgsz=320, seed=args.seed, haze_fraction=0.25)
    print(ROW_HEAD)
    for name in names:
        result_path = args.out / name / "result.json"
        if result_path.is_file():
            print(row(name, json.loads(result_path.read_text())), flush=True)
            continue
        cfg = recipe(data, args.out, name, args.epochs, args.seed, VARIANTS[name])
        if args.train_threads is not None:
            cfg["threads"] = args.train_threads
        run, spent = train_variant(cfg)
        r = score(run, args.threads)
        r.update({"variant": name, "changes": VARIANTS[name], "train_s": spent, "recipe": cfg,
                  "load_avg": os.getloadavg(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        result_path.write_text(json.dumps(r, indent=1))
        print(row(name, r), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
