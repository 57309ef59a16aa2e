"""Checkpoints: what survives a crash (``last.pt``), loading them back, and the config of a resumed run.

A checkpoint holds model, EMA, optimiser, scaler, RNG states, the epoch just finished and the
*schedule* the run started with (``schedule``: its length in epochs). A resumed run takes its
schedule from there, so ``--epochs`` given on resume lengthens the run without re-entering the
learning-rate decay or the mosaic phase (see vap_video/engines/train_schedule.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vap_video.engines.train_config import ConfigFileError, TrainConfig, format_validation

__all__ = ["save_checkpoint", "load_checkpoint", "model_from_checkpoint", "resume_config", "RESUME_OVERRIDABLE"]


def save_checkpoint(path: Path, obj: dict) -> None:
    """Write under a temporary name and rename: a crash mid-write never leaves a truncated last.pt."""
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
    from vap_video.engines.detector import build_detector

    model = build_detector(dict(ck["model_cfg"]))
    model.load_state_dict(ck[which])
    return model


RESUME_OVERRIDABLE = ("device", "workers", "threads", "epochs", "log_every", "plots", "stop_after")

# Options whose default changed after checkpoints were written without them: a run saved before the
# option existed trained with the old behaviour, so it resumes with the old value, not the new default.
DEFAULTS_BEFORE_THE_OPTION = {"o2o_clip_apart": False, "o2o_clip_grad": None, "o2o_box_dense": False}


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
        return TrainConfig(**{**DEFAULTS_BEFORE_THE_OPTION, **ck["train_cfg"], **ov})
    except ValidationError as exc:
        raise ConfigFileError(format_validation(exc, str(rp))) from None
