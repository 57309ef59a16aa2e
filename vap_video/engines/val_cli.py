"""``vap val MODEL --data data.yaml``: COCO mAP of a training checkpoint or of a deployed engine.

Why one command for both: the number that matters is the mAP of the file that is deployed. A
``.pt`` checkpoint is scored in PyTorch with both of its heads (one-to-one NMS-free, the deployed
behaviour, and one-to-many + NMS, the reference). Any other model file (vap's ``.onnx``, its INT8
``.int8.onnx``, an Ultralytics export in any of the layouts the runtime accepts, a TensorRT
``.engine``/``.plan``) is opened by the same ``load_backend`` the pipeline uses and scored through
``vap_video.engines.evaluate_engine`` (same letterbox rule, same legacy NMS fallback), so a precision or
export problem shows as a lower mAP here, not in production.

Exit codes as ``vap`` documents them: 0 done, 2 bad usage or data, 3 the model cannot be used.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_USAGE, EXIT_MODEL = 0, 2, 3
COMMON = {"data", "batch", "conf", "json", "coco", "iou", "threads", "limit"}
CHECKPOINT_ONLY = {"imgsz", "device", "weights"}
USAGE = """vap val MODEL [--data data.yaml] [--batch N] [--conf 0.25] [--coco] [--json OUT] [--limit N]

MODEL: a .pt checkpoint (both heads, in PyTorch; --imgsz, --device cpu|cuda, --weights ema|model),
or an engine the pipeline runs: .onnx (vap's, INT8, or an Ultralytics export: end-to-end,
one-to-many with the NMS fallback, or nms=True), .engine/.plan (TensorRT).
--data is required for engines (a checkpoint remembers its training data).
--coco also prints AP50-95 for COCO's small / medium / large objects (areas in source pixels).
--iou: IoU of the NMS for the one-to-many head / legacy exports (default 0.7). --limit N: first N images.
--threads N: CPU threads (torch for a checkpoint, ONNX Runtime for an .onnx).
"""


class ValError(Exception):
    """A usage or data problem; the message says what to do."""


def cli(argv: list[str]) -> int:
    """Entry point of ``vap val``; every user error is one line on stderr and a non-zero exit."""
    from vap_video.engines.contract import ModelContractError
    from vap_video.engines.train_config import ConfigFileError

    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0].lower().endswith(".pt"):
        import torch  # noqa: F401  (a checkpoint needs torch: missing, `vap` names the extra first)
    try:
        model, opts = _parse(argv)
        if model.suffix.lower() == ".pt":
            return _val_checkpoint(model, opts)
        return _val_engine(model, opts)
    except (ValError, ConfigFileError) as exc:
        print(f"vap val: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModelContractError as exc:
        print(f"vap val: {exc}", file=sys.stderr)
        return EXIT_MODEL


def _parse(argv: list[str]) -> tuple[Path, dict[str, Any]]:
    from vap_video.engines.train_config import parse_overrides

    model = Path(argv[0])
    if argv[0].startswith("--"):
        raise ValError(f"the first argument must be the model file, got {argv[0]!r} (vap val MODEL --data data.yaml)")
    opts = parse_overrides(argv[1:])
    is_ckpt = model.suffix.lower() == ".pt"
    allowed = COMMON | (CHECKPOINT_ONLY if is_ckpt else set())
    bad = set(opts) - allowed
    if bad & CHECKPOINT_ONLY:
        raise ValError(f"{', '.join('--' + b for b in sorted(bad & CHECKPOINT_ONLY))} only apply to .pt checkpoints; "
                       f"an engine's input size and device are fixed by the file")
    if bad:
        raise ValError(f"unknown option(s) {', '.join('--' + b for b in sorted(bad))}; "
                       f"valid: {', '.join('--' + a for a in sorted(allowed))}")
    for key in ("batch", "limit", "threads"):
        value = opts.get(key)
        if key in opts and (isinstance(value, bool) or not isinstance(value, int) or value < (key != "limit")):
            raise ValError(f"--{key} must be a positive integer, got {opts[key]!r}")
    if "weights" in opts and opts["weights"] not in ("ema", "model"):
        raise ValError(f"--weights must be ema or model, got {opts['weights']!r}")
    if "imgsz" in opts and (not isinstance(opts["imgsz"], int) or opts["imgsz"] < 32 or opts["imgsz"] % 32):
        raise ValError(f"--imgsz must be a positive multiple of 32, got {opts['imgsz']!r}")
    for key in ("conf", "iou"):
        if key in opts and not (isinstance(opts[key], (int, float)) and 0 <= opts[key] <= 1):
            raise ValError(f"--{key} must be a number in 0..1, got {opts[key]!r}")
    if "data" in opts and not Path(str(opts["data"])).is_file():
        raise ValError(f"data: {opts['data']} not found (pass --data path/to/data.yaml)")
    if not model.exists():
        from vap_video.engines.contract import ModelContractError
        raise ModelContractError(f"model file {model} does not exist")
    return model, opts


def _samples(data: str, limit: int) -> tuple[list, list[str]]:
    """The val split's usable samples and class names; a dataset problem is a usage error (exit 2)."""
    from vap_video.engines.contract import ModelContractError
    from vap_video.engines.evaluate_engine import val_samples

    try:
        return val_samples(data, limit=limit)
    except ModelContractError as exc:  # YAML parser messages span lines: keep the error on one
        raise ValError(" ".join(str(exc).split())) from None


def _set_threads(opts: dict[str, Any]) -> None:
    """--threads for a checkpoint: torch's CPU threads (an engine gets them as a backend option)."""
    if opts.get("threads"):
        import torch
        torch.set_num_threads(int(opts["threads"]))


def _val_checkpoint(path: Path, opts: dict[str, Any]) -> int:
    """Both heads of a checkpoint, in PyTorch (the training-time evaluation)."""
    from vap_video.engines.contract import ModelContractError
    from vap_video.engines.train_checkpoint import load_checkpoint, model_from_checkpoint
    from vap_video.engines.train_config import ConfigFileError
    from vap_video.engines.train_runtime import select_device
    from vap_video.engines.train_validate import validate

    _set_threads(opts)
    try:
        ck = load_checkpoint(path)
    except ConfigFileError as exc:  # a .pt that is not a vap checkpoint: a model problem (exit 3)
        raise ModelContractError(str(exc)) from None
    data = str(opts.get("data", ck["train_cfg"]["data"]))
    if not Path(data).is_file():
        raise ValError(f"data: {data} (from the checkpoint) not found; pass --data data.yaml")
    samples, names = _samples(data, int(opts.get("limit", 0)))
    nc = int(ck["model_cfg"].get("nc", len(names)))
    if nc != len(names):
        raise ValError(f"{data} has {len(names)} classes but {path} was trained for {nc}; "
                       f"evaluate on the dataset the model was trained for")
    imgsz = int(opts.get("imgsz", ck["train_cfg"]["imgsz"]))
    device = select_device(str(opts.get("device", "auto")))
    model = model_from_checkpoint(ck, str(opts.get("weights", "ema"))).to(device)
    conf = float(opts.get("conf", 0.25))
    res = validate(model, samples, imgsz, int(opts.get("batch", 16)), names, conf, heads=("o2o", "o2m"),
                   nms_iou=float(opts.get("iou", 0.7)), device=device, area_ranges=bool(opts.get("coco")))
    summary: dict[str, Any] = {"model": str(path), "kind": "checkpoint", "images": res["images"],
                               "ms_per_image": res["ms_per_image"], "heads": {}}
    for head, title in (("o2o", "one-to-one head (NMS-free, top-K)"),
                        ("o2m", "one-to-many head + class-aware NMS (reference)")):
        ev = res[head]["eval"]
        print(f"\n== {title} ==")
        _print_result(ev, conf)
        summary["heads"][head] = _result_json(ev)
    print(f"\ninference: {res['ms_per_image']:.2f} ms/image (both heads decoded, device {device}, imgsz {imgsz})")
    _write_json(opts, summary)
    return EXIT_OK


def val_engine(path: str | Path, data: str | Path, batch: int = 8, conf: float = 0.25, coco: bool = False,
               limit: int = 0, iou: float = 0.7, **backend_options: Any) -> tuple[Any, Any, str]:
    """Score a model file on `data`'s val split: (EngineEval, its EngineInfo, the backend's name).

    `backend_options` go to ``load_backend`` as a deployment's ``model.*`` options would (e.g. a
    TensorRT ``contexts``); `iou` is the NMS IoU of legacy one-to-many exports.
    """
    from vap_video.engines.backends import load_backend
    from vap_video.engines.evaluate_engine import evaluate_backend

    samples, names = _samples(str(data), limit)
    backend = load_backend(Path(path), nms_iou=iou, **backend_options)
    try:
        result = evaluate_backend(backend, samples, names, batch=batch, conf=conf, area_ranges=coco)
    finally:
        backend.close()
    return result, backend.info, backend.name


def _val_engine(path: Path, opts: dict[str, Any]) -> int:
    """A deployed model file through the pipeline's backend."""
    if "data" not in opts:
        raise ValError(f"--data is required for {path.suffix or 'engine'} models (vap val {path} --data data.yaml)")
    from vap_video.engines.backends import backend_kind

    backend_options: dict[str, Any] = {}
    if opts.get("threads") and backend_kind(path) == "onnxruntime":  # no torch needed for an ONNX model
        backend_options["intra_op_threads"] = int(opts["threads"])
    conf, batch = float(opts.get("conf", 0.25)), int(opts.get("batch", 8))
    result, info, backend = val_engine(path, str(opts["data"]), batch=batch, conf=conf, coco=bool(opts.get("coco")),
                                       limit=int(opts.get("limit", 0)), iou=float(opts.get("iou", 0.7)),
                                       **backend_options)
    h, w = info.input_hw
    print(f"== {path} ({backend}, {info.layout}, {info.precision}, input {h}x{w}) ==")
    _print_result(result.result, conf)
    print(f"\ninference: {result.ms_per_image:.2f} ms/image (batch {batch}, {backend})")
    _write_json(opts, {"model": str(path), "kind": "engine", "backend": backend, "layout": info.layout,
                       "precision": info.precision, "images": result.images, "ms_per_image": result.ms_per_image,
                       **_result_json(result.result)})
    return EXIT_OK


def _print_result(ev: Any, conf: float) -> None:
    print(ev.table())
    print(f"mAP50 {ev.map50:.4f}  mAP50-95 {ev.map50_95:.4f}  P {ev.precision:.3f} R {ev.recall:.3f} "
          f"at score >= {conf:g}")


def _result_json(ev: Any) -> dict[str, Any]:
    out = {"map50": ev.map50, "map50_95": ev.map50_95, "precision": ev.precision, "recall": ev.recall,
           "per_class_ap": {n: float(a) for n, a in ev.per_class_ap.items()}}
    if ev.area_ap:
        out["area_ap"] = dict(ev.area_ap)
    return out


def _write_json(opts: dict[str, Any], summary: dict[str, Any]) -> None:
    if opts.get("json"):
        Path(str(opts["json"])).write_text(json.dumps(summary, indent=2))
