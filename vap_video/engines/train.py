"""``vap train`` (and ``vap val`` for compatibility): the command line of the training package.

The pieces live in modules named by concern; this module keeps the public names importable from
here, where the CLI, tests and benchmarks import them:

- vap_video/engines/train_config.py: ``TrainConfig``, recipe YAML + ``--key value`` overrides;
- vap_video/engines/train_loop.py: ``train()``, the epochs (train, validate EMA, checkpoint, report);
- vap_video/engines/train_schedule.py: lr / warmup / mosaic / head weights per absolute epoch;
- vap_video/engines/train_checkpoint.py: ``last.pt`` / ``best.pt``, ``resume_config``;
- vap_video/engines/train_validate.py: ``validate()`` on both heads, the PR curve;
- vap_video/engines/train_progress.py: the live bar on a terminal, one line per epoch in logs;
- vap_video/engines/train_report.py: ``results.csv`` and the plots, refreshed every epoch;
- vap_video/engines/val_cli.py: ``vap val`` for checkpoints and deployed engines.

Usage::

    vap train configs/train-n.yaml --epochs 5 --device cpu
    vap train --resume runs/train/exp                 # continues the same schedule
    vap train --resume runs/train/exp --epochs 30     # trains on past it at the final lr, mosaic off
    vap train --resume runs/train/exp --epochs 30 --stretch_schedule   # or stretch the cosine to 30
    vap val runs/train/exp/best.pt --data data.yaml
    python -m vap_video.engines.train ...          # same as `vap train ...`
    python -m vap_video.engines.train val ...      # same as `vap val ...`
"""

from __future__ import annotations

import sys
from pathlib import Path

from vap_video.engines.train_checkpoint import (RESUME_OVERRIDABLE, load_checkpoint, model_from_checkpoint,  # noqa: F401
                                      resume_config, save_checkpoint)
from vap_video.engines.train_config import ConfigFileError, TrainConfig, load_config, parse_overrides
from vap_video.engines.train_loop import train
from vap_video.engines.train_runtime import rng_state, seed_everything, select_device, set_rng_state  # noqa: F401
from vap_video.engines.train_validate import pr_curve, validate  # noqa: F401


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
        stretch = bool(ov.pop("stretch_schedule", False))
        if stretch and resume is None:
            raise ConfigFileError("--stretch_schedule only applies with --resume RUN --epochs N")
        if resume is not None:
            if not Path(str(resume)).exists():
                raise ConfigFileError(f"--resume {resume}: no such run directory or checkpoint")
            rp = Path(str(resume))
            run = train(resume_config(rp, ov), resume=rp, stretch_schedule=stretch)
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
    """``vap val MODEL ...`` (checkpoints and engines): see vap_video.engines.val_cli."""
    from vap_video.engines.val_cli import cli as _val

    return _val(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "val":
        return val_cli(argv[1:])
    return cli(argv)


if __name__ == "__main__":
    raise SystemExit(main())
