"""``vap train`` and ``vap val``: train the dual-head detector and evaluate both of its heads.

One file holds the loop (the DETR "engine" idea): config -> data -> model -> optimiser/EMA ->
epochs of (train, validate EMA, checkpoint) -> plots. Everything that must survive a crash is
in ``last.pt`` (model, EMA, optimiser, scaler, epoch, RNG states), so ``--resume RUN_DIR``
continues exactly; the learning-rate schedule is a pure function of the global iteration.

Multi-process training uses ``torchrun`` (DDP, gloo on CPU / nccl on CUDA); rank 0 validates,
logs and writes checkpoints.

Usage::

    vap train configs/train-n.yaml --epochs 5 --device cpu
    vap train --resume runs/train/exp
    vap val runs/train/exp/best.pt --data data.yaml
    python -m engines.train ...          # same as `vap train ...`
    python -m engines.train val ...      # same as `vap val ...`
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class TrainConfig(BaseModel):
    """A training recipe. Unknown keys are an error (a typo must not silently do nothing)."""

    model_config = ConfigDict(extra="forbid")

    # model
    model: Literal["n", "s", "m", "l", "x"] = Field("n", description="model scale")
    width: float | None = Field(None, gt=0, description="override the scale's width multiple")
    depth: float | None = Field(None, gt=0, description="override the scale's depth multiple")
    reg_max: int = Field(1, ge=1, description="1 = direct l,t,r,b regression (no DFL); >1 = DFL bins")
    attention: bool = Field(True, description="attention block (PSA) in the neck")
    max_det: int = Field(300, ge=1, description="rows K of the exported [B, K, 6] output (objects per image)")
    # data
    data: str = Field(..., description="path to a YOLO data.yaml")
    imgsz: int = Field(640, ge=32, description="training and validation image size (pixels, square letterbox)")
    batch: int = Field(16, ge=1, description="total batch size over all processes")
    workers: int = Field(2, ge=0, description="data-loading worker processes (0 = in the training process)")
    fraction: float = Field(1.0, gt=0, le=1, description="use this fraction of the training images")
    augment: dict[str, Any] | None = Field(None, description="AugmentConfig overrides for engines.dataset")
    close_mosaic: int = Field(10, ge=0, description="turn mosaic off for the last N epochs")
    # schedule
    epochs: int = Field(100, ge=1, description="epochs of the whole schedule")
    optimizer: Literal["sgd", "adamw", "musgd"] = Field("sgd", description="sgd, adamw or musgd")
    lr0: float = Field(0.01, gt=0, description="initial learning rate")
    lrf: float = Field(0.01, gt=0, le=1, description="final lr = lr0 * lrf")
    schedule: Literal["cosine", "linear"] = Field("cosine", description="learning-rate decay from lr0 to "
                                                  "lr0 * lrf: cosine or linear")
    momentum: float = Field(0.937, ge=0, lt=1, description="SGD momentum (AdamW beta1)")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay (not on biases and norms)")
    warmup_epochs: float = Field(3.0, ge=0, description="epochs of linear learning-rate and momentum warmup")
    warmup_momentum: float = Field(0.8, ge=0, lt=1, description="momentum at the start of the warmup")
    warmup_bias_lr: float = Field(0.1, ge=0, description="learning rate of the biases at the start of the warmup")
    clip_grad: float = Field(10.0, gt=0, description="clip the gradient norm to this")
    ema_decay: float = Field(0.9999, gt=0, lt=1, description="decay of the weights' exponential moving average "
                             "(the EMA is what is validated and exported)")
    ema_tau: float = Field(2000.0, gt=0, description="iterations over which the EMA decay ramps up to ema_decay")
    # loss
    box: float = Field(7.5, description="weight of the box (IoU) loss")
    cls: float = Field(0.5, description="weight of the classification loss")
    dfl: float = Field(1.5, description="weight of the distribution focal loss (with reg_max > 1)")
    o2m_start: float = Field(0.8, description="weight of the one-to-many head's loss at the first epoch (falls "
                             "linearly to o2m_end)")
    o2m_end: float = Field(0.1, description="weight of the one-to-many head's loss at the last epoch")
    # runtime
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    amp: bool = Field(True, description="mixed precision on CUDA (bf16 if supported, else fp16)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads")
    seed: int = Field(0, description="random seed (each process adds its rank)")
    deterministic: bool = Field(True, description="deterministic kernels (reproducible, somewhat slower)")
    conf: float = Field(0.25, gt=0, lt=1, description="operating score threshold for P/R")
    val: bool = Field(True, description="validate the EMA after every epoch")
    project: str = Field("runs/train", description="folder of the runs")
    name: str = Field("exp", description="run name inside project (a number is appended when it exists, unless "
                      "exist_ok)")
    exist_ok: bool = Field(False, description="reuse project/name if it exists instead of making a new run folder")
    plots: bool = Field(True, description="write loss and metric plots to the run folder")
    log_every: int = Field(0, ge=0, description="print a progress line every N iterations (0 = per epoch)")
    stop_after: int | None = Field(None, ge=1, description="end this invocation after N epochs (schedule still "
                                   "spans `epochs`; continue with --resume)")


class ConfigFileError(Exception):
    """A recipe or command-line problem the user can fix; the message says how."""


# ----------------------------------------------------------------------------------------------
# config loading


def _format_validation(exc: ValidationError, source: str) -> str:
    lines = [f"invalid training config ({source}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{loc}': remove it or check the spelling "
                         f"(valid keys: {', '.join(TrainConfig.model_fields)})")
        else:
            lines.append(f"  - {loc}: {err['msg']}")
    return "\n".join(lines)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` / ``--flag`` / ``--no-flag`` -> dict (values YAML-typed)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--"):
            raise ConfigFileError(f"unexpected argument {tok!r}: options look like --epochs 5")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            val = args[i + 1]
            i += 2
        else:
            val = "false" if key.startswith("no-") else "true"
            key = key[3:] if key.startswith("no-") else key
            i += 1
        key = key.replace("-", "_")
        out[key] = yaml.safe_load(val) if val != "" else ""
    return out


def load_config(recipe: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Recipe YAML merged with command-line overrides, validated."""
    data: dict[str, Any] = {}
    src = "command line"
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigFileError(f"training recipe not found: {path} (pass a YAML file such as configs/train-n.yaml)")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigFileError(f"{path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigFileError(f"{path} must be a mapping of training options, got {type(loaded).__name__}")
        data.update(loaded)
        src = str(path)
    data.update(overrides)
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        raise ConfigFileError(_format_validation(exc, src)) from None


# ----------------------------------------------------------------------------------------------
# helpers


def select_device(spec: str):
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigFileError(f"--device {spec} asked for CUDA but no CUDA device is available; use --device cpu")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise ConfigFileError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from None


def seed_everything(seed: int, deterministic: bool) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    import torch

    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    import torch

    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _unique_dir(project: str, name: str, exist_ok: bool) -> Path:
    base = Path(project) / name
    if exist_ok or not base.exists():
        return base
    n = 2
    while (Path(project) / f"{name}{n}").exists():
        n += 1
    return Path(project) / f"{name}{n}"


def _dist_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment (1 process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


# ----------------------------------------------------------------------------------------------
# data


def _build_data(cfg: TrainConfig, rank: int = 0):
    """Load + validate the dataset (reports printed), build train and val datasets."""
    from engines import dataset as ds

    try:
        spec = ds.load_data_yaml(Path(cfg.data))
        train_rep = ds.validate_dataset(spec, "train")
        val_rep = ds.validate_dataset(spec, "val") if spec.val else None
    except (FileNotFoundError, ValueError) as exc:  # DatasetError is a ValueError
        raise ConfigFileError(f"dataset {cfg.data}: {exc}") from None
    if rank == 0:
        print(f"train data: {train_rep.summary()}")
        print(f"val data:   {val_rep.summary() if val_rep else 'none (no val split: best.pt by train loss)'}")
    train_samples = list(train_rep.usable)
    if not train_samples:
        raise ConfigFileError(f"no usable training images in {cfg.data}: see the report above")
    if cfg.fraction < 1.0:
        rs = random.Random(cfg.seed)
        train_samples = rs.sample(train_samples, max(1, int(len(train_samples) * cfg.fraction)))
    hyp = ds.AugmentConfig(**cfg.augment) if cfg.augment else None
    train_ds = ds.YoloDataset(train_samples, cfg.imgsz, augment=True, hyp=hyp, seed=cfg.seed)
    val_samples = list(val_rep.usable) if val_rep else []
    return spec, train_ds, val_samples


def _collate_fn():
    """The data engineer's collate (``YoloDataset.collate`` if present, else ``dataset.collate``)."""
    from engines import dataset as ds

    return getattr(ds.YoloDataset, "collate", None) or ds.collate


def _batches(samples: list, imgsz: int, batch: int):
    """Yield (images, targets) for validation (letterboxed, no augmentation)."""
    from engines.dataset import YoloDataset

    vds = YoloDataset(samples, imgsz, augment=False)
    collate = _collate_fn()
    for i in range(0, len(vds), batch):
        yield collate([vds[j] for j in range(i, min(i + batch, len(vds)))])


# ----------------------------------------------------------------------------------------------
# validation (both heads)


def _o2m_nms_preds(boxes, scores, conf: float, iou: float, max_det: int, pre_nms: int = 1000) -> np.ndarray:
    """One-to-many head decoded the classic way: score filter, class-aware NMS (reference only)."""
    from engines.evaluate import batched_nms

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

    Used for the PR plot only; mAP and P/R at the operating threshold come from engines.evaluate.
    """
    from engines.assign import box_iou_pairwise
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
    from engines.dataset import load_image

    out = []
    for path, _ in samples:
        h, w = load_image(path).shape[:2]
        out.append(1.0 / min(imgsz / h, imgsz / w) ** 2)
    return out


def validate(model, samples: list, imgsz: int, batch: int, names: list[str], conf: float = 0.25,
             heads: tuple[str, ...] = ("o2o",), nms_iou: float = 0.7, device=None,
             area_ranges: bool = False) -> dict[str, Any]:
    """Evaluate a detector on letterboxed validation images.

    ``o2o``: the NMS-free inference path (top-K, the deployed behaviour). ``o2m``: the
    one-to-many head with class-aware NMS, as the reference the NMS-free head should approach.
    Returns per head: EvalResult, P/R at ``conf``, the PR curve; plus ms per image. With
    ``area_ranges`` also COCO's small/medium/large APs (objects sized in source pixels).
    """
    import torch
    from engines.detector import topk_end2end
    from engines.evaluate import evaluate_detections

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds: dict[str, list[np.ndarray]] = {h: [] for h in heads}
    gts: list[np.ndarray] = []
    t_inf, n_img = 0.0, 0
    with torch.no_grad():
        for images, targets in _batches(samples, imgsz, batch):
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
    return result


# ----------------------------------------------------------------------------------------------
# checkpoints


def _save(path: Path, obj: dict) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict (weights + configs, no pickled classes beyond plain containers)."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise ConfigFileError(f"checkpoint not found: {p}")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # corrupt / not a torch file
        raise ConfigFileError(f"{p} is not a readable vap checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ck, dict) or "model_cfg" not in ck or "ema" not in ck:
        raise ConfigFileError(f"{p} is not a vap checkpoint (missing model_cfg/ema); train one with `vap train`")
    return ck


def model_from_checkpoint(ck: dict, which: str = "ema"):
    """Rebuild the detector from a checkpoint dict with the ``ema`` (default) or ``model`` weights."""
    from engines.detector import build_detector

    model = build_detector(dict(ck["model_cfg"]))
    model.load_state_dict(ck[which])
    return model


# ----------------------------------------------------------------------------------------------
# plots


def _plots(run: Path, curves: dict[str, tuple]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: skipping plots (pip install matplotlib)")
        return
    rows = list(csv.DictReader(open(run / "results.csv")))
    if rows:
        ep = [int(r["epoch"]) for r in rows]
        keys = [k for k in rows[0] if k.endswith(("_box", "_cls", "_reg")) or k.startswith("map")]
        fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3), squeeze=False)
        for ax, k in zip(axes[0], keys):
            ax.plot(ep, [float(r[k]) for r in rows], marker=".")
            ax.set_title(k)
            ax.set_xlabel("epoch")
        fig.tight_layout()
        fig.savefig(run / "results.png", dpi=100)
        plt.close(fig)
    if curves:
        fig, ax = plt.subplots(figsize=(5, 4))
        for h, (s, p, r) in curves.items():
            if len(s):
                ax.plot(r, p, label=h)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("PR curve (IoU 0.5, all classes)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend()
        fig.tight_layout()
        fig.savefig(run / "pr_curve.png", dpi=100)
        plt.close(fig)


# ----------------------------------------------------------------------------------------------
# training


def train(cfg: TrainConfig, resume: str | Path | None = None) -> Path:
    """Train per ``cfg``; returns the run directory (``last.pt``, ``best.pt``, ``results.csv``, plots).

    With ``resume`` (a run directory or its ``last.pt``) training continues from the saved epoch
    with the saved optimiser, EMA, scaler and RNG states; pass the run's own config (see
    :func:`resume_config`) so the schedule is the same.
    """
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler

    from engines.detector import DetectorConfig, build_detector, count_params
    from engines.loss import DetectionLoss, LossWeights
    from engines.optim import ModelEMA, apply_schedule, build_optimizer

    rank, local_rank, world = _dist_info()
    ddp = world > 1
    ck = None
    if resume is not None:
        rp = Path(resume)
        rp = rp / "last.pt" if rp.is_dir() else rp
        ck = load_checkpoint(rp)
        run = rp.parent
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    if ddp:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
    seed_everything(cfg.seed + rank, cfg.deterministic)
    if ck is None:
        run = _unique_dir(cfg.project, cfg.name, cfg.exist_ok)
        if ddp:  # every rank must agree on the directory
            obj = [str(run)]
            dist.broadcast_object_list(obj, src=0)
            run = Path(obj[0])
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        (run / "args.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))

    spec, train_ds, val_samples = _build_data(cfg, rank)
    names = list(spec.names)
    mcfg = DetectorConfig(scale=cfg.model, nc=len(names), reg_max=cfg.reg_max, imgsz=cfg.imgsz,
                          max_det=cfg.max_det, attention=cfg.attention, depth=cfg.depth, width=cfg.width,
                          names=names)
    model = build_detector(mcfg).to(device)
    if ck is not None:
        model.load_state_dict(ck["model"])
    per_rank_batch = max(1, cfg.batch // world)
    opt = build_optimizer(model, cfg.optimizer, cfg.lr0, cfg.momentum, cfg.weight_decay * cfg.batch / 64)
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if (use_amp and torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    start_epoch, best_fit = 0, -math.inf  # fitness without validation is minus a loss: always < -1
    if ck is not None:
        opt.load_state_dict(ck["optimizer"])
        ema.ema.load_state_dict(ck["ema"])
        ema.updates = ck["ema_updates"]
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start_epoch, best_fit = ck["epoch"] + 1, ck["best_fitness"]
        set_rng_state(ck["rng"])
        if rank == 0:
            print(f"resuming {run} from epoch {start_epoch + 1}/{cfg.epochs}")
    if start_epoch >= cfg.epochs:
        if rank == 0:
            print(f"{run} already finished {cfg.epochs} epochs; nothing to do (raise --epochs to train longer)")
        return run
    net = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[local_rank] if device.type == "cuda" else None) if ddp else model
    crit = DetectionLoss(model, LossWeights(cfg.box, cfg.cls, cfg.dfl, cfg.o2m_start, cfg.o2m_end))
    sampler = DistributedSampler(train_ds, world, rank, shuffle=True, seed=cfg.seed) if ddp else None
    nb = math.ceil((len(sampler) if sampler is not None else len(train_ds)) / per_rank_batch)  # iters/epoch
    warmup_iters = max(round(cfg.warmup_epochs * nb), 100) if cfg.warmup_epochs > 0 else 0
    if rank == 0:
        print(f"model {cfg.model}: {count_params(model) / 1e6:.2f} M params, nc={len(names)}, imgsz {cfg.imgsz}; "
              f"{len(train_ds)} train / {len(val_samples)} val images; device {device}, world {world}; run {run}")
    csv_path = run / "results.csv"
    curves: dict[str, tuple] = {}

    for epoch in range(start_epoch, cfg.epochs):
        train_ds.set_epoch(epoch)
        if cfg.close_mosaic and epoch >= cfg.epochs - cfg.close_mosaic:
            train_ds.close_mosaic()
        if sampler is not None:
            sampler.set_epoch(epoch)
            loader = DataLoader(train_ds, per_rank_batch, sampler=sampler, num_workers=cfg.workers,
                                collate_fn=_collate_fn(), drop_last=False,
                                persistent_workers=False)
        else:
            g = torch.Generator()
            g.manual_seed(cfg.seed + epoch)
            loader = DataLoader(train_ds, per_rank_batch, shuffle=True, generator=g, num_workers=cfg.workers,
                                collate_fn=_collate_fn(), drop_last=False)
        net.train()
        sums: dict[str, float] = {}
        t_epoch = time.perf_counter()
        t_wait = 0.0
        n_img = 0
        t_last = time.perf_counter()
        for i, (images, targets) in enumerate(loader):
            t_wait += time.perf_counter() - t_last
            it = epoch * nb + i
            lr = apply_schedule(opt, it, nb, cfg.epochs, cfg.lr0, cfg.lrf, cfg.schedule, cfg.momentum,
                                warmup_iters, cfg.warmup_momentum, cfg.warmup_bias_lr)
            images = images.to(device, non_blocking=True).float()
            targets = targets.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                out = net(images)
            loss, parts = crit(out, targets, epoch, cfg.epochs)
            if world > 1:  # DDP averages gradients over ranks: undo it, so the step equals one process's
                loss = loss * world
            if not math.isfinite(float(loss.detach())):
                raise RuntimeError(f"loss is {float(loss)} at epoch {epoch + 1} iter {i}: lower --lr0 or check labels")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(opt)
            scaler.update()
            ema.update(model)
            n_img += images.shape[0]
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if rank == 0 and cfg.log_every and (i + 1) % cfg.log_every == 0:
                el = time.perf_counter() - t_epoch
                print(f"  epoch {epoch + 1} iter {i + 1}/{nb} loss {float(loss.detach()) / images.shape[0]:.3f} "
                      f"{n_img / el:.1f} img/s", flush=True)
            t_last = time.perf_counter()
        t_total = time.perf_counter() - t_epoch
        n_it = max(i + 1, 1)
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
        row.update({k: v / n_it for k, v in sums.items()})
        row["img_per_s"] = n_img * world / t_total
        row["data_wait_frac"] = t_wait / t_total
        row["epoch_s"] = t_total
        if ddp:
            dist.barrier()
        if rank == 0:
            fit = -sum(v for k, v in row.items() if k.startswith("o2o_"))
            if cfg.val and val_samples:
                res = validate(ema.ema, val_samples, cfg.imgsz, max(per_rank_batch, 8), names, cfg.conf, device=device)
                ev = res["o2o"]["eval"]
                row.update({"map50": ev.map50, "map50_95": ev.map50_95, "precision": res["o2o"]["precision"],
                            "recall": res["o2o"]["recall"], "val_ms_per_img": res["ms_per_image"]})
                curves = {"o2o": res["o2o"]["curve"]}
                fit = ev.map50_95
            is_best = fit > best_fit
            best_fit = max(best_fit, fit)
            state = {"epoch": epoch, "model_cfg": mcfg.to_dict(), "train_cfg": cfg.model_dump(),
                     "model": model.state_dict(), "ema": ema.ema.state_dict(), "ema_updates": ema.updates,
                     "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "best_fitness": best_fit,
                     "fitness": fit, "rng": rng_state(), "names": names, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            _save(run / "last.pt", state)
            if is_best:
                _save(run / "best.pt", state)
            new = not csv_path.exists()
            with open(csv_path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow({k: (f"{v:.5g}" if isinstance(v, float) else v) for k, v in row.items()})
            msg = (f"epoch {epoch + 1}/{cfg.epochs} lr {lr:.4g} "
                   + " ".join(f"{k} {row[k]:.3f}" for k in row if k.endswith(("_box", "_cls", "_reg")))
                   + f" | {row['img_per_s']:.1f} img/s, data wait {100 * row['data_wait_frac']:.0f}%")
            if "map50" in row:
                msg += f" | o2o mAP50 {row['map50']:.3f} mAP50-95 {row['map50_95']:.3f}"
            print(msg + (" *best*" if is_best else ""), flush=True)
        if ddp:
            dist.barrier()
        if cfg.stop_after is not None and epoch + 1 - start_epoch >= cfg.stop_after and epoch + 1 < cfg.epochs:
            if rank == 0:
                print(f"stopping after {cfg.stop_after} epoch(s) as asked; continue with "
                      f"`vap train --resume {run}`")
            break
    if rank == 0 and cfg.plots:
        _plots(run, curves)
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    return run


# ----------------------------------------------------------------------------------------------
# CLIs

RESUME_OVERRIDABLE = ("device", "workers", "threads", "epochs", "log_every", "plots", "stop_after")


def resume_config(run_or_ckpt: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The saved config of a run, with only runtime options overridable (anything else would make
    the resumed run differ from an uninterrupted one)."""
    rp = Path(run_or_ckpt)
    ck = load_checkpoint(rp / "last.pt" if rp.is_dir() else rp)
    ov = dict(overrides or {})
    bad = set(ov) - set(RESUME_OVERRIDABLE)
    if bad:
        raise ConfigFileError(f"cannot change {', '.join(sorted(bad))} when resuming; "
                              f"only {', '.join(RESUME_OVERRIDABLE)} may be overridden")
    try:
        return TrainConfig(**{**ck["train_cfg"], **ov})
    except ValidationError as exc:
        raise ConfigFileError(_format_validation(exc, str(rp))) from None


def cli(argv: list[str]) -> int:
    """``vap train RECIPE.yaml [--key value ...]`` or ``vap train --resume RUN_DIR``."""
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(__doc__)
            print("options (recipe keys, each also a --flag):")
            for k, f in TrainConfig.model_fields.items():
                default = "required" if f.is_required() else f"default {f.default!r}"
                print(f"  --{k:<16} {f.description} ({default})")
            return 0 if argv else 2
        recipe = None if argv[0].startswith("--") else argv[0]
        rest = argv[1:] if recipe else argv
        ov = parse_overrides(rest)
        resume = ov.pop("resume", None)
        if resume is not None:
            if not Path(str(resume)).exists():
                raise ConfigFileError(f"--resume {resume}: no such run directory or checkpoint")
            rp = Path(str(resume))
            run = train(resume_config(rp, ov), resume=rp)
            print(f"done: {run}")
            return 0
        cfg = load_config(recipe, ov)
        if not Path(cfg.data).is_file():
            raise ConfigFileError(f"data: {cfg.data} not found (point --data at a YOLO data.yaml)")
        run = train(cfg)
        print(f"done: {run}")
        return 0
    except ConfigFileError as exc:
        print(f"vap train: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vap train: interrupted; resume with `vap train --resume RUN_DIR`", file=sys.stderr)
        return 130


def val_cli(argv: list[str]) -> int:
    """``vap val MODEL ...`` (checkpoints and engines): see engines.val_cli."""
    from engines.val_cli import cli as _val

    return _val(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "val":
        return val_cli(argv[1:])
    return cli(argv)


if __name__ == "__main__":
    raise SystemExit(main())
