"""TensorRT 10's INT8 entropy calibrator, fed letterboxed batches through the project's CUDA helpers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vap_video.engines.tensorrt.plan_file import atomic_write


Shape4 = tuple[int, int, int, int]


def fit_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """A calibration batch of exactly `size` rows (TensorRT's calibrator has a fixed batch size):
    a short last batch repeats its own images rather than adding blank ones."""
    if len(batch) == size:
        return batch
    if len(batch) > size:
        return batch[:size]
    return np.concatenate([batch, batch[np.arange(size - len(batch)) % len(batch)]])


def int8_calibrator(trt: Any, ops: Any, batches: Any, batch_shape: Shape4, cache_file: Path,
                    log: Callable[[str], None] = print) -> Any:
    """A `trt.IInt8EntropyCalibrator2` (TensorRT 10) fed from `batches` ([B, 3, H, W] float32)."""
    size = batch_shape[0]

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.iterator = iter(batches)
            with ops.activate():  # pycuda allocates (pinned memory too) in the current context
                self.stream = ops.new_stream()
                self.device = ops.malloc(int(np.prod(batch_shape)) * 4)
                self.host = ops.pinned(batch_shape, np.float32)
            self.seen = 0

        def get_batch_size(self) -> int:
            return size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.iterator, None)
            if batch is None:
                log(f"calibration: {self.seen} images")
                return None
            np.copyto(self.host, fit_batch(np.asarray(batch, dtype=np.float32), size))
            with ops.activate():
                ops.htod_async(self.device, self.host, self.stream)
                ops.synchronize(self.stream)
            self.seen += min(len(batch), size)
            if self.seen % (size * 8) < size:
                log(f"calibration: {self.seen} images")
            return [self.device]

        def read_calibration_cache(self) -> bytes | None:
            if cache_file.is_file():
                log(f"calibration: reusing {cache_file}")
                return cache_file.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write(cache_file, bytes(memoryview(cache)))

        def close(self) -> None:
            """Free the device buffer, pinned batch and stream (after the build; idempotent)."""
            if self.device is None:
                return
            with ops.activate():
                ops.synchronize(self.stream)
                ops.free(self.device)
                ops.free_pinned(self.host)
                ops.destroy_stream(self.stream)
            self.device = self.host = self.stream = None

    return _Calibrator()
