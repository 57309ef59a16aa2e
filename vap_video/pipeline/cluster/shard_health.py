"""Is a shard's data path still moving? The stall watch behind `ShardWorker.check_health`.

Apart from the worker because it is a small clock of its own: it remembers when the frame
counters last moved (processed and decoded separately), so a hung engine or post stage (decoded
frames pile up, none is processed) can be told from cameras that are simply all down.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class StallWatch:
    """When the processed and decoded frame counters last changed (monotonic clock); thread-safe."""

    def __init__(self) -> None:
        now = time.monotonic()
        self._lock = threading.Lock()
        self._progress = (0.0, 0.0, now, now)  # processed, decoded, t_proc, t_dec

    def reset(self, processed: float, decoded: float) -> None:
        """Start counting from these values now (a new pipeline, or a reconfigure)."""
        now = time.monotonic()
        with self._lock:
            self._progress = (processed, decoded, now, now)

    def observe(self, processed: float, decoded: float) -> tuple[float, bool]:
        """Record the counters; (seconds since a frame was last processed, decoded more recently than that)."""
        with self._lock:
            now = time.monotonic()
            last_p, last_d, t_p, t_d = self._progress
            if processed != last_p:
                t_p = now
            if decoded != last_d:
                t_d = now
            self._progress = (processed, decoded, t_p, t_d)
            return now - t_p, t_d > t_p


def frame_counters(pipeline: Any) -> tuple[float, float]:
    """(frames processed, frames decoded) of a pipeline, summed over its streams."""
    m = pipeline.metrics
    return _total(m.frames_processed), _total(m.frames_decoded)


def _total(counter: Any) -> float:
    return sum(s.value for fam in counter.collect() for s in fam.samples if s.name.endswith("_total"))
