"""The training loop: config -> data -> model -> optimiser/EMA -> epochs of (train, validate EMA,
checkpoint, report).

Everything that must survive a crash is in ``last.pt`` (model, EMA, optimiser, scaler, epoch, RNG
states, the schedule's length), so ``--resume RUN_DIR`` continues exactly: the learning rate,
mosaic and head weights are functions of the absolute epoch (vap_video/engines/train_schedule.py).
Multi-process training uses ``torchrun`` (DDP, gloo on CPU / nccl on CUDA); rank 0 validates,
reports and writes checkpoints.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import yaml

from vap_video.engines.train_checkpoint import load_checkpoint, save_checkpoint
from vap_video.engines.train_config import ConfigFileError, TrainConfig
from vap_video.engines.train_progress import LOSS_SUFFIXES, TrainProgress
from vap_video.engines.train_report import append_results, write_plots
from vap_video.engines.train_runtime import (dist_info, rng_state, seed_everything, select_device, set_rng_state,
                                             unique_dir)
from vap_video.engines.train_schedule import Schedule
from vap_video.engines.train_validate import collate_fn, validate

__all__ = ["train", "EpochCallback"]

EpochCallback = Callable[[int, dict[str, Any], Path], None]


@dataclass
class _State:
    """One process's training run: what the epochs read and update."""

    cfg: TrainConfig
    run: Path
    rank: int
    world: int
    device: Any
    names: list[str]
    train_ds: Any
    val_samples: list
    mcfg: Any
    model: Any
    net: Any
    opt: Any
    ema: Any
    scaler: Any
    crit: Any
    sampler: Any
    per_rank_batch: int
    schedule: Schedule
    use_amp: bool
    amp_dtype: Any
    start_epoch: int = 0
    best_fit: float = -math.inf  # fitness without validation is minus a loss: always < -1
    curves: dict[str, tuple] = field(default_factory=dict)

    @property
    def ddp(self) -> bool:
        return self.world > 1


def train(cfg: TrainConfig, resume: str | Path | None = None, on_epoch: EpochCallback | None = None,
          stretch_schedule: bool = False) -> Path:
    """Train per ``cfg``; returns the run directory (``last.pt``, ``best.pt``, ``results.csv``, plots).

    With ``resume`` (a run directory or its ``last.pt``) training continues from the saved epoch
    with the saved optimiser, EMA, scaler, RNG states and schedule; pass the run's own config (see
    :func:`vap_video.engines.train_checkpoint.resume_config`). ``stretch_schedule`` (resume only) instead
    stretches the schedule to ``cfg.epochs`` from the resumed epoch on (the learning rate jumps to
    that longer cosine's value and mosaic turns back on where it would be on): how the shipped
    model's 12 -> 20 epoch extension was trained. ``on_epoch(epoch, row, run)`` is called on rank 0
    after each epoch's checkpoint, results.csv row and plots are on disk.
    """
    import torch.distributed as dist

    ck = None
    if resume is not None:
        rp = Path(resume)
        ck = load_checkpoint(rp / "last.pt" if rp.is_dir() else rp)
    st = _setup(cfg, ck, Path(resume) if resume is not None else None, stretch_schedule)
    if st.start_epoch >= cfg.epochs:
        if st.rank == 0:
            print(f"{st.run} already finished {cfg.epochs} epochs; nothing to do (raise --epochs to train longer)")
        return st.run
    progress = TrainProgress(cfg.epochs, st.start_epoch, log_every=cfg.log_every, live=None if st.rank == 0 else False)
    try:
        for epoch in range(st.start_epoch, cfg.epochs):
            row = _train_epoch(st, epoch, progress)
            _end_epoch(st, epoch, row, progress, on_epoch)
            if cfg.stop_after is not None and epoch + 1 - st.start_epoch >= cfg.stop_after and epoch + 1 < cfg.epochs:
                if st.rank == 0:
                    print(f"stopping after {cfg.stop_after} epoch(s) as asked; continue with "
                          f"`vap train --resume {st.run}`")
                break
    finally:
        progress.close()
    if st.ddp:
        dist.barrier()
        dist.destroy_process_group()
    return st.run


# ------------------------------------------------------------------------------------------ setup


def _setup(cfg: TrainConfig, ck: dict | None, resume: Path | None, stretch: bool = False) -> _State:
    """Process group, seeds, run folder, data, model, optimiser, EMA, loss and schedule (restored on resume)."""
    import torch

    from vap_video.engines.detector import count_params
    from vap_video.engines.loss import DetectionLoss

    rank, world, device = _init_process(cfg)
    run = _run_dir(cfg, resume, rank, world)
    spec, train_ds, val_samples = _build_data(cfg, rank)
    names = list(spec.names)
    mcfg, model, opt, ema = _build_model(cfg, names, device, world)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if (use_amp and torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    per_rank_batch = max(1, cfg.batch // world)
    sampler: Any = None
    if world > 1:
        from torch.utils.data import DistributedSampler
        sampler = DistributedSampler(train_ds, world, rank, shuffle=True, seed=cfg.seed)
    nb = math.ceil((len(sampler) if sampler is not None else len(train_ds)) / per_rank_batch)  # iters/epoch
    # a resume keeps the schedule it started (checkpoints before 2026-12: its recipe's)
    length = cfg.epochs if ck is None or stretch else int((ck.get("schedule") or {}).get(
        "epochs", ck["train_cfg"]["epochs"]))
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    st = _State(cfg=cfg, run=run, rank=rank, world=world, device=device, names=names, train_ds=train_ds,
                val_samples=val_samples, mcfg=mcfg, model=model, net=net, opt=opt, ema=ema, scaler=scaler,
                crit=DetectionLoss.from_config(model, cfg),
                sampler=sampler, per_rank_batch=per_rank_batch, schedule=Schedule.of(cfg, length, nb),
                use_amp=use_amp, amp_dtype=amp_dtype)
    if ck is not None:
        _restore(st, ck)
    if rank == 0:
        print(f"model {cfg.model}: {count_params(model) / 1e6:.2f} M params, nc={len(names)}, imgsz {cfg.imgsz}; "
              f"{len(train_ds)} train / {len(val_samples)} val images; device {device}, world {world}; run {run}")
    return st


def _init_process(cfg: TrainConfig) -> tuple[int, int, Any]:
    """(rank, world size, device); joins torchrun's process group and seeds this process."""
    import torch
    import torch.distributed as dist

    rank, local_rank, world = dist_info()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
    seed_everything(cfg.seed + rank, cfg.deterministic)
    return rank, world, device


def _run_dir(cfg: TrainConfig, resume: Path | None, rank: int, world: int) -> Path:
    """The resumed run's folder, or a new one every rank agrees on; rank 0 writes args.yaml."""
    import torch.distributed as dist

    if resume is not None:
        run = resume if resume.is_dir() else resume.parent
    else:
        run = unique_dir(cfg.project, cfg.name, cfg.exist_ok)
        if world > 1:  # every rank must agree on the directory
            obj = [str(run)]
            dist.broadcast_object_list(obj, src=0)
            run = Path(obj[0])
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        (run / "args.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return run


def _build_data(cfg: TrainConfig, rank: int = 0) -> tuple[Any, Any, list]:
    """Load + validate the dataset (reports printed), build train and val datasets."""
    from vap_video.engines import dataset as ds

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
    return spec, train_ds, list(val_rep.usable) if val_rep else []


def _build_model(cfg: TrainConfig, names: list[str], device: Any, world: int) -> tuple[Any, Any, Any, Any]:
    """(model config, model on `device`, optimiser, EMA)."""
    from vap_video.engines.detector import DetectorConfig, build_detector
    from vap_video.engines.optim import ModelEMA, build_optimizer

    mcfg = DetectorConfig(scale=cfg.model, nc=len(names), reg_max=cfg.reg_max, imgsz=cfg.imgsz,
                          max_det=cfg.max_det, attention=cfg.attention, depth=cfg.depth, width=cfg.width,
                          names=names)
    model = build_detector(mcfg).to(device)
    opt = build_optimizer(model, cfg.optimizer, cfg.lr0, cfg.momentum, cfg.weight_decay * cfg.batch / 64)
    return mcfg, model, opt, ModelEMA(model, cfg.ema_decay, cfg.ema_tau)


def _restore(st: _State, ck: dict) -> None:
    """Weights, optimiser, EMA, scaler, epoch, best fitness and RNG states of a checkpoint."""
    st.model.load_state_dict(ck["model"])
    st.opt.load_state_dict(ck["optimizer"])
    st.ema.ema.load_state_dict(ck["ema"])
    st.ema.updates = ck["ema_updates"]
    if ck.get("scaler"):
        st.scaler.load_state_dict(ck["scaler"])
    st.start_epoch, st.best_fit = ck["epoch"] + 1, ck["best_fitness"]
    set_rng_state(ck["rng"])
    if st.rank == 0:
        extra = (f"; past its {st.schedule.epochs}-epoch schedule the lr stays at lr0 * lrf and mosaic off"
                 if st.cfg.epochs > st.schedule.epochs else "")
        print(f"resuming {st.run} from epoch {st.start_epoch + 1}/{st.cfg.epochs}{extra}")


# ------------------------------------------------------------------------------------------ epochs


def _loader(st: _State, epoch: int) -> Any:
    """This epoch's DataLoader (recreated per epoch, so workers see set_epoch and close_mosaic)."""
    import torch
    from torch.utils.data import DataLoader

    cfg = st.cfg
    if st.sampler is not None:
        st.sampler.set_epoch(epoch)
        return DataLoader(st.train_ds, st.per_rank_batch, sampler=st.sampler, num_workers=cfg.workers,
                          collate_fn=collate_fn(), drop_last=False, persistent_workers=False)
    g = torch.Generator()
    g.manual_seed(cfg.seed + epoch)
    return DataLoader(st.train_ds, st.per_rank_batch, shuffle=True, generator=g, num_workers=cfg.workers,
                      collate_fn=collate_fn(), drop_last=False)


def _train_epoch(st: _State, epoch: int, progress: TrainProgress) -> dict[str, Any]:
    """One pass over the training data; returns the epoch's results row (mean losses, lr, speed)."""
    st.train_ds.set_epoch(epoch)
    mosaic = st.schedule.mosaic(epoch)
    if not mosaic:
        st.train_ds.close_mosaic()
    loader = _loader(st, epoch)
    st.net.train()
    sums: dict[str, float] = {}
    n_img, n_it, t_wait, lr = 0, 0, 0.0, 0.0
    progress.start_epoch(epoch, st.schedule.iters_per_epoch)
    t_epoch = t_last = time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        t_wait += time.perf_counter() - t_last
        lr = st.schedule.apply(st.opt, epoch, i)
        parts = _step(st, images, targets, epoch, i)
        n_img += images.shape[0]
        n_it = i + 1
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        if st.rank == 0:
            progress.update(i, {k: v / n_it for k, v in sums.items()}, n_img * st.world)
        t_last = time.perf_counter()
    progress.stop_training_part()
    t_total = time.perf_counter() - t_epoch
    row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "mosaic": int(mosaic)}
    row.update({k: v / max(n_it, 1) for k, v in sums.items()})
    row["img_per_s"] = n_img * st.world / t_total
    row["data_wait_frac"] = t_wait / t_total
    row["epoch_s"] = t_total
    return row


def _step(st: _State, images: Any, targets: Any, epoch: int, i: int) -> dict[str, float]:
    """Forward, loss, backward, clipped optimiser step and EMA update for one batch; the loss parts."""
    import torch

    images = images.to(st.device, non_blocking=True).float()
    targets = targets.to(st.device)
    st.model.detach_o2o = st.crit.o2o_detached(epoch)
    with torch.autocast(st.device.type, dtype=st.amp_dtype, enabled=st.use_amp):
        out = st.net(images)
    loss, parts = st.crit(out, targets, epoch, st.schedule.epochs)
    if st.world > 1:  # DDP averages gradients over ranks: undo it, so the step equals one process's
        loss = loss * st.world
    if not math.isfinite(float(loss.detach())):
        raise RuntimeError(f"loss is {float(loss)} at epoch {epoch + 1} iter {i}: lower --lr0 or check labels")
    st.opt.zero_grad(set_to_none=True)
    st.scaler.scale(loss).backward()
    st.scaler.unscale_(st.opt)
    clip_gradients(st.model, st.cfg.clip_grad, st.cfg.o2o_clip_apart, st.cfg.o2o_clip_grad)
    st.scaler.step(st.opt)
    st.scaler.update()
    st.ema.update(st.model)
    return parts


def clip_gradients(model: Any, max_norm: float, o2o_apart: bool, o2o_max_norm: float | None = None) -> None:
    """Clip the gradient norm to ``max_norm``: over all parameters, or (``o2o_apart``) the one-to-one
    head on its own, to ``o2o_max_norm`` (default ``max_norm``). Why apart: that head's gradient is
    most of the global norm (38 of 39 at the end of a short synthetic run), so a shared clip shrinks
    the trunk's step by ~4x, and any change that enlarges the head's loss slows the trunk further,
    although the head reads detached features. Why its own limit: mid-run its norm is ~23, so a clip
    of 10 still shrinks the head's own step ~2.3x."""
    import torch

    if not o2o_apart:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return
    head = list(model.o2o.parameters())
    ids = {id(p) for p in head}
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if id(p) not in ids], max_norm)
    torch.nn.utils.clip_grad_norm_(head, max_norm if o2o_max_norm is None else o2o_max_norm)


def _end_epoch(st: _State, epoch: int, row: dict[str, Any], progress: TrainProgress,
               on_epoch: EpochCallback | None) -> None:
    """Rank 0: validate the EMA, write last.pt (and best.pt), the results row and plots, print the summary."""
    import torch.distributed as dist

    if st.ddp:
        dist.barrier()
    if st.rank == 0:
        cfg = st.cfg
        fit = -sum(v for k, v in row.items() if k.startswith("o2o_"))
        if cfg.val and st.val_samples:
            res = validate(st.ema.ema, st.val_samples, cfg.imgsz, max(st.per_rank_batch, 8), st.names, cfg.conf,
                           device=st.device)
            ev = res["o2o"]["eval"]
            row.update({"map50": ev.map50, "map50_95": ev.map50_95, "precision": res["o2o"]["precision"],
                        "recall": res["o2o"]["recall"], "val_ms_per_img": res["ms_per_image"]})
            st.curves = {"o2o": res["o2o"]["curve"]}
            fit = ev.map50_95
        is_best = fit > st.best_fit
        st.best_fit = max(st.best_fit, fit)
        state = _checkpoint(st, epoch, fit)
        save_checkpoint(st.run / "last.pt", state)
        if is_best:
            save_checkpoint(st.run / "best.pt", state)
        append_results(st.run / "results.csv", row)
        if cfg.plots:
            write_plots(st.run, st.curves)
        progress.end_epoch(_summary(row, cfg.epochs, is_best))
        if on_epoch is not None:
            on_epoch(epoch, row, st.run)
    if st.ddp:
        dist.barrier()


def _checkpoint(st: _State, epoch: int, fit: float) -> dict[str, Any]:
    return {"epoch": epoch, "model_cfg": st.mcfg.to_dict(), "train_cfg": st.cfg.model_dump(),
            "model": st.model.state_dict(), "ema": st.ema.ema.state_dict(), "ema_updates": st.ema.updates,
            "optimizer": st.opt.state_dict(), "scaler": st.scaler.state_dict(), "best_fitness": st.best_fit,
            "fitness": fit, "rng": rng_state(), "names": st.names, "schedule": st.schedule.to_dict(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _summary(row: dict[str, Any], epochs: int, is_best: bool) -> str:
    """The epoch's one line (what a log shows): lr, mean losses, speed, validation mAP."""
    msg = (f"epoch {row['epoch']}/{epochs} lr {row['lr']:.4g} "
           + " ".join(f"{k} {row[k]:.3f}" for k in row if k.endswith(LOSS_SUFFIXES))
           + f" | {row['img_per_s']:.1f} img/s, data wait {100 * row['data_wait_frac']:.0f}%, {row['epoch_s']:.1f} s")
    if "map50" in row:
        msg += f" | o2o mAP50 {row['map50']:.3f} mAP50-95 {row['map50_95']:.3f}"
    return msg + (" *best*" if is_best else "")
