"""The backend interface every engine runs behind.

A backend owns a compiled model and turns a preprocessed batch into `[B, K, 6]` detections. It
hides fixed-batch graphs (it splits the batch) so the batcher can always hand it any batch size up
to the configured maximum.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from engines.contract import EngineInfo, ModelContractError


class Backend(ABC):
    """A loaded engine. `info` describes its contract; `infer` runs one batch."""

    info: EngineInfo
    name: str = "backend"

    @abstractmethod
    def _run(self, images: np.ndarray) -> np.ndarray:
        """Run a batch the graph accepts as is (size within `info.max_batch`)."""

    def infer(self, images: np.ndarray) -> np.ndarray:
        """`images` float32 [B, 3, H, W] -> float32 [B, K, 6]; splits batches a fixed graph can't take."""
        limit = self.info.max_batch
        if limit is None or images.shape[0] <= limit:
            if limit is not None and images.shape[0] < limit:
                pad = np.zeros((limit - images.shape[0], *images.shape[1:]), dtype=images.dtype)
                return self._run(np.concatenate([images, pad]))[: images.shape[0]]
            return self._run(images)
        parts = [self.infer(images[i:i + limit]) for i in range(0, images.shape[0], limit)]
        return np.concatenate(parts)

    def close(self) -> None:
        """Release the engine's resources."""


def load_backend(path: str | Path, kind: str = "auto", **options: Any) -> Backend:
    """Open a model file with the backend that runs it.

    `kind`: 'onnxruntime', 'tensorrt', 'torch', or 'auto' (by file suffix: .onnx -> ONNX Runtime).
    """
    path = Path(path)
    if not path.exists():
        raise ModelContractError(f"model file {path} does not exist; check model.path in the config "
                                 "(the demo model ships as engines/models/vap-synth-n.onnx)")
    if kind == "auto":
        kind = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt",
                ".pt": "torch"}.get(path.suffix.lower(), "")
        if not kind:
            raise ModelContractError(f"{path}: unknown model format {path.suffix!r}; use .onnx (ONNX Runtime), "
                                     ".engine (TensorRT) or .pt (torch)")
    if kind == "onnxruntime":
        from engines.backends.onnxruntime import OrtBackend
        return OrtBackend(path, **options)
    raise ModelContractError(f"backend {kind!r} is not available in this build; use 'onnxruntime'")
