"""Training recipes: the validated ``TrainConfig``, YAML + command-line overrides, and the one error type.

Why pydantic with ``extra="forbid"``: a misspelt recipe key must stop the run with its name, not
silently train with a default for hours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["TrainConfig", "ConfigFileError", "parse_overrides", "load_config", "format_validation"]


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
    augment: dict[str, Any] | None = Field(None, description="AugmentConfig overrides for vap_video.engines.dataset")
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
    o2o_cls: float = Field(1.0, ge=0, description="extra gain on the one-to-one head's classification loss")
    o2o_topk: int = Field(7, ge=1, description="candidates per object of the one-to-one assigner before its top-1 "
                          "(with o2o_match own)")
    o2o_match: Literal["own", "o2m"] = Field("own", description="one-to-one positives: own = ranked by the one-to-one "
                                             "head's predictions; o2m = the one-to-many assigner's best anchor "
                                             "(consistent matching)")
    o2o_detach_epochs: int | None = Field(0, ge=0, description="one-to-one head on detached neck features: null = "
                                          "every epoch (before 2026-12-04); 0 = never (its loss also trains the "
                                          "trunk); N = the first N epochs only")
    o2o_clip_apart: bool = Field(True, description="clip the one-to-one head's gradient norm on its own (its "
                                 "gradient then no longer shrinks the trunk's step under clip_grad); false = one "
                                 "clip over all parameters, as before 2026-12")
    o2o_clip_grad: float | None = Field(40.0, gt=0, description="with o2o_clip_apart: the one-to-one head's own "
                                        "gradient-norm clip (null = clip_grad)")
    o2o_box_dense: bool = Field(True, description="train the one-to-one head's box terms on the one-to-many "
                                "assignment (top-10 per object); its classification stays one-to-one")
    o2o_cls_loss: Literal["bce", "vfl"] = Field("bce", description="the one-to-one head's classification loss: bce, "
                                                "or vfl (Varifocal: easy negatives down-weighted by alpha * p**2)")
    min_half_strides: float = Field(1.0, ge=0, description="assigners enlarge small boxes to at least this many "
                                    "strides per side when choosing candidates (0 = off)")
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



def format_validation(exc: ValidationError, source: str) -> str:
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
        raise ConfigFileError(format_validation(exc, src)) from None
