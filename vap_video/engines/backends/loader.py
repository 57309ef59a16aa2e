"""Opening a model file with the backend that runs it (the factory beside the `Backend` ABC).

Separate from `base` so the ABC module imports no backend: the backends import `base`, and only
this module imports them (lazily, so torch and TensorRT stay optional).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vap_video.engines.backends.base import Backend
from vap_video.engines.contract import LEGACY, ModelContractError

__all__ = ["load_backend", "backend_kind", "SUFFIXES"]


def load_backend(path: str | Path, kind: str = "auto", *, announce: bool = True, **options: Any) -> Backend:
    """Open a model file with the backend that runs it.

    `kind`: 'onnxruntime', 'tensorrt', 'torch', or 'auto' (by file suffix: .onnx -> ONNX Runtime,
    .engine/.plan -> TensorRT, .pt -> torch). `nms_conf` / `nms_iou` apply to legacy one-to-many
    models only; every other option goes to the backend's constructor. `announce=False` skips the
    NMS-fallback warning, for a second session of a model already announced (the thread tuner's
    trial), so a log says it once per model, not once per session.
    """
    nms = {k: options.pop(k) for k in ("nms_conf", "nms_iou") if k in options}
    path = Path(path)
    kind = backend_kind(path, kind)
    cls = _backend_class(kind)
    try:
        inspect.signature(cls).bind(path, **options)
    except TypeError as exc:    # an option this backend does not take: say which, not a traceback
        raise ModelContractError(f"the {kind} backend does not take these options ({exc}); "
                                 f"it takes: {', '.join(_option_names(cls))}") from None
    backend = cls(path, **options)
    for key, value in nms.items():
        setattr(backend, key, float(value))
    if announce and backend.info.layout == LEGACY:
        logging.getLogger("vap.engine").warning(
            "%s has a one-to-many head (%s output): running it through the NumPy NMS FALLBACK (IoU %.2f) on the "
            "CPU; an end-to-end export (YOLO26/YOLOv10, vap export) needs no NMS", path,
            "[B, 4+classes, N]", backend.nms_iou)
    return backend


def _option_names(cls: Callable[..., Backend]) -> list[str]:
    params = list(inspect.signature(cls).parameters.values())[1:]
    return [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def _backend_class(kind: str) -> Callable[..., Backend]:
    """The backend's class, as the constructor it is here: (path, **options) -> Backend (the ABC
    itself prescribes no constructor)."""
    if kind == "onnxruntime":
        from vap_video.engines.backends.onnxruntime import OrtBackend
        return OrtBackend
    if kind == "torch":
        from vap_video.engines.backends.torch_backend import TorchBackend
        return TorchBackend
    if kind == "tensorrt":
        from vap_video.engines.tensorrt.runtime import TrtBackend
        return TrtBackend
    raise ModelContractError(f"unknown backend {kind!r}; use onnxruntime, tensorrt or torch")


def backend_kind(path: str | Path, kind: str = "auto") -> str:
    """The backend that runs `path`: `kind` itself, or for 'auto' the one its suffix names."""
    path = Path(path)
    if not path.exists():
        raise ModelContractError(f"model file {path} does not exist; check model.path in the config "
                                 "(the demo model ships as vap_video/engines/models/vap-synth-n.onnx)")
    if path.is_dir():
        raise ModelContractError(f"model path {path} is a directory, not a model file; point model.path (or "
                                 "--model) at an .onnx, .engine/.plan or .pt file")
    if path.stat().st_size == 0:
        raise ModelContractError(f"model file {path} is empty (0 bytes); export or copy it again")
    if kind != "auto":
        return kind
    found = SUFFIXES.get(path.suffix.lower())
    if not found:
        raise ModelContractError(f"{path}: unknown model format {path.suffix!r}; use .onnx (ONNX Runtime), "
                                 ".engine (TensorRT) or .pt (torch)")
    return found


SUFFIXES = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".pt": "torch"}
