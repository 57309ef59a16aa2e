"""Per-stream bounded queues and the deadline batcher that drains them into engine batches.

One lock and one condition variable cover every stream queue, so the batcher sleeps until either
a batch can be filled or the oldest waiting frame reaches its deadline — no polling. Live queues
drop their oldest frame when full (counted as `stale`), keeping latency bounded; file queues make
the decoder wait (backpressure), so a file run sees every frame and is deterministic.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from pydantic import Field

from vap_video.pipeline.config import Strict
from vap_video.pipeline.frames import Frame
from vap_video.pipeline.metrics import Metrics


# A batch that waits longer than this for company is no longer "batching": live frames go stale
# (dropped) and /healthz says ok while nothing is processed.
MAX_BATCH_DELAY_MS = 10_000.0


class BatchConfig(Strict):
    """The `batch:` section: how frames of all streams are grouped into engine calls."""

    max_batch: int = Field(8, ge=1, le=256, description="Frames per engine call")
    max_delay_ms: float = Field(10.0, ge=0, le=MAX_BATCH_DELAY_MS,
                                description="A batch closes when its oldest frame has waited this long (at most 10000)")
    per_stream_cap: int | None = Field(None, ge=1, description="At most this many frames of one stream per batch "
                                       "(default: max_batch)")

    @property
    def stream_cap(self) -> int:
        """Frames of one stream a batch may hold: `per_stream_cap`, else the whole batch."""
        return self.per_stream_cap or self.max_batch


@dataclass
class _StreamQueue:
    name: str
    live: bool
    maxsize: int
    items: deque[tuple[float, Frame]] = field(default_factory=deque)  # (arrival time, frame)
    closed: bool = False


class DeadlineBatcher:
    """Collects frames from every stream into batches of at most `max_batch`.

    A batch closes when it is full, or when its oldest frame has waited `max_delay_s`. At most
    `per_stream_cap` frames of one stream go into one batch (fairness across cameras); streams
    whose frames are oldest go first.
    """

    def __init__(self, max_batch: int, max_delay_s: float, per_stream_cap: int, metrics: Metrics) -> None:
        if max_batch < 1 or per_stream_cap < 1:
            raise ValueError("max_batch and per_stream_cap must be >= 1")
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.per_stream_cap = per_stream_cap
        self.metrics = metrics
        self._cond = threading.Condition()
        self._queues: dict[str, _StreamQueue] = {}
        self._closed = False

    # ---- producer side (decoder threads) ----
    def add_stream(self, name: str, live: bool, maxsize: int) -> None:
        with self._cond:
            if name in self._queues:
                raise ValueError(f"stream {name!r} already has a queue")
            self._queues[name] = _StreamQueue(name, live, max(1, maxsize))

    def remove_stream(self, name: str) -> int:
        """Forget a stream; frames still queued are dropped (counted as `removed`). Returns that count."""
        with self._cond:
            q = self._queues.pop(name, None)
            if q is None:
                return 0
            q.closed = True
            n = len(q.items)
            q.items.clear()
            self._cond.notify_all()
        if n:
            self.metrics.frames_dropped.labels(name, "removed").inc(n)
        return n

    def put(self, frame: Frame) -> bool:
        """Enqueue one frame. Live: never blocks. File: waits for room. False once closed."""
        with self._cond:
            q = self._queues.get(frame.stream)
            if q is None or q.closed or self._closed:
                return False
            if q.live:
                if len(q.items) >= q.maxsize:
                    q.items.popleft()
                    self.metrics.frames_dropped.labels(q.name, "stale").inc()
            else:
                while len(q.items) >= q.maxsize and not (q.closed or self._closed):
                    self._cond.wait()
                if q.closed or self._closed:
                    return False
            q.items.append((time.monotonic(), frame))
            self._cond.notify_all()
            return True

    def depth(self) -> int:
        with self._cond:
            return sum(len(q.items) for q in self._queues.values())

    # ---- consumer side (the inference loop) ----
    def next_batch(self, timeout: float | None = None) -> list[Frame] | None:
        """Block until a batch closes; [] when `timeout` passed with nothing queued, None once closed and empty."""
        give_up = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                ready = sum(min(len(q.items), self.per_stream_cap) for q in self._queues.values())
                if ready >= self.max_batch:
                    break
                now = time.monotonic()
                wait: float | None
                if ready:
                    oldest = min(q.items[0][0] for q in self._queues.values() if q.items)
                    wait = oldest + self.max_delay_s - now
                    if wait <= 0 or self._closed:
                        break
                else:
                    if self._closed:
                        return None
                    if give_up is not None and now >= give_up:
                        return []
                    wait = None if give_up is None else give_up - now
                self._cond.wait(wait)
            batch = self._take()
            self._cond.notify_all()  # room for file producers
        return batch

    def _take(self) -> list[Frame]:
        order = sorted((q for q in self._queues.values() if q.items), key=lambda q: q.items[0][0])
        batch: list[Frame] = []
        for q in order:
            take = min(len(q.items), self.per_stream_cap, self.max_batch - len(batch))
            batch.extend(q.items.popleft()[1] for _ in range(take))
            if len(batch) >= self.max_batch:
                break
        return batch

    def close(self) -> None:
        """Stop accepting frames; `next_batch` drains what is queued, then returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
