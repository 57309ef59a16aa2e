"""Short fine-tunes of the shipped detector for the dehazing benchmark (issue 6), CPU only.

Why two runs: a haze-augmented fine-tune is only evidence for haze augmentation if a fine-tune of
the same length *without* it is the control (more epochs alone could raise hazy-set mAP). Both runs
start from the shipped checkpoint (``runs/train/synth/last.pt``, epoch 20 of its recipe; its
``best.pt`` is the same epoch and has the sha256 recorded in ``vap_video/engines/models/vap-synth-n.json``;
benchmarks/dehaze.md was measured from the previous shipped run, ``runs/train/synth-ext``),
keep its optimiser/EMA state and continue its cosine schedule stretched to 20 + EXTRA epochs, so
the learning rate is the small tail of the original schedule (about 1e-3 down to 5e-4).

The only difference between the runs is ``augment: {haze: P}`` (``vap_video.engines.dataset.AugmentConfig``,
already in the training code; off by default).

Usage (resumable: re-running continues each run from its own last.pt)::

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python benchmarks/dehaze_finetune.py [--extra 3] [--haze 0.5]

then export each run's last.pt with ``vap export`` (see benchmarks/dehaze.md).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

SHIPPED_RUN = Path("runs/train/synth")


def prepare(run: Path, extra: int, haze: float) -> Path:
    """Create ``run`` from the shipped checkpoint with the fine-tune config written into it."""
    import torch

    last = run / "last.pt"
    if last.exists():
        return last  # resume where it stopped
    run.mkdir(parents=True, exist_ok=True)
    ck = torch.load(SHIPPED_RUN / "last.pt", map_location="cpu", weights_only=False)
    cfg = dict(ck["train_cfg"])
    cfg["epochs"] = int(ck["epoch"]) + 1 + extra
    cfg["augment"] = {"haze": haze} if haze > 0 else None
    cfg["name"] = run.name
    cfg["project"] = str(run.parent)
    cfg["plots"] = False
    ck["train_cfg"] = cfg
    ck["schedule"] = {"epochs": cfg["epochs"]}  # stretch the schedule itself (a resume keeps a checkpoint's schedule)
    torch.save(ck, last)
    shutil.copy(SHIPPED_RUN / "args.yaml", run / "shipped-args.yaml")
    return last


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extra", type=int, default=3, help="epochs added to the shipped 20")
    ap.add_argument("--haze", type=float, default=0.5, help="haze augmentation probability of the haze run")
    ap.add_argument("--only", choices=("haze", "plain"), default=None)
    args = ap.parse_args()
    from vap_video.engines.train import resume_config, train

    if not (SHIPPED_RUN / "last.pt").exists():
        raise SystemExit(f"{SHIPPED_RUN}/last.pt not found: the shipped checkpoint is needed to fine-tune")
    runs = [("haze", args.haze), ("plain", 0.0)]
    for tag, p in runs:
        if args.only and tag != args.only:
            continue
        run = Path("runs/train") / f"dehaze-ft-{tag}"
        last = prepare(run, args.extra, p)
        cfg = resume_config(last, {"threads": 2, "workers": 1})
        print(f"== fine-tune {tag}: augment={cfg.augment} epochs={cfg.epochs}", flush=True)
        train(cfg, resume=run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
