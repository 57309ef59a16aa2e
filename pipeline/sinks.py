"""Event delivery: each sink runs on its own thread behind a bounded queue.

A slow sink therefore never delays the data path or the other sinks until its queue is full; then
`publish` waits (backpressure, bounded by `block_s`) rather than silently losing accepted events,
and only after that wait counts a drop. JSONL is the embedded default sink.

JSONL durability: every batch of events is written and flushed to the OS before the next batch
(a crash of vap loses nothing already written). `fsync` decides power-loss safety: `always`
(fsync per batch), `interval` (at most `fsync_interval_s` of events at risk; default) or `never`.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pipeline.config import ConfigError, Strict
from pipeline.metrics import Metrics

log = logging.getLogger("vap.sinks")


class EventFilter(Strict):
    """Which events a sink receives; an empty list means all."""

    types: list[str] = Field(default_factory=list, description="Event types, e.g. ['track.start', 'line.cross']")
    streams: list[str] = Field(default_factory=list)
    classes: list[str] = Field(default_factory=list, description="Only track events of these classes")

    def accepts(self, event: dict[str, Any]) -> bool:
        if self.types and event["type"] not in self.types:
            return False
        if self.streams and event["stream"] not in self.streams:
            return False
        if self.classes and "class" in event and event["class"] not in self.classes:
            return False
        return True


class JsonlSinkConfig(Strict):
    """Append events as JSON lines; rotate by size."""

    type: Literal["jsonl"] = "jsonl"
    name: str = Field("jsonl", description="Sink name (metric label); unique")
    path: Path = Field(Path("events/events.jsonl"), description="File to append to; rotated files sit next to it")
    rotate_mb: float = Field(100.0, gt=0, description="Rotate when the file passes this size")
    max_files: int | None = Field(None, ge=1, description="Delete the oldest rotated files beyond this count "
                                  "(None keeps all: vap never deletes events unless told to)")
    fsync: Literal["always", "interval", "never"] = Field(
        "interval", description="Power-loss safety: fsync every batch, every fsync_interval_s, or never")
    fsync_interval_s: float = Field(1.0, gt=0, description="With fsync=interval: most seconds of events at risk")
    filter: EventFilter = Field(default_factory=EventFilter, description="Which events this sink receives")


class Sink(ABC):
    """Writes batches of events somewhere. Called from the sink's own thread only."""

    name: str

    @abstractmethod
    def write(self, events: list[dict[str, Any]]) -> None:
        """Deliver events in order; raise to signal failure (the runner counts and retries)."""

    def close(self) -> None:
        """Flush and release resources."""


class JsonlSink(Sink):
    def __init__(self, cfg: JsonlSinkConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.path = Path(cfg.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"sinks: {cfg.name} cannot write {self.path} ({exc.strerror}); "
                              "choose a writable path") from None
        self._last_sync = time.monotonic()

    def write(self, events: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(e, separators=(",", ":"), ensure_ascii=False) + "\n" for e in events)
        self._fh.write(data)
        self._fh.flush()
        now = time.monotonic()
        if self.cfg.fsync == "always" or (
                self.cfg.fsync == "interval" and now - self._last_sync >= self.cfg.fsync_interval_s):
            os.fsync(self._fh.fileno())
            self._last_sync = now
        if self._fh.tell() >= self.cfg.rotate_mb * 1e6:
            self._rotate()

    def _rotate(self) -> None:
        """Move the full file aside. A failure (disk full, permissions) is logged and writing goes on
        in the current file: rotation is housekeeping, losing events over it is not acceptable."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        try:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            self.path.rename(self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}"))
            if self.cfg.max_files is not None:
                rotated = sorted(self.path.parent.glob(f"{self.path.stem}-*{self.path.suffix}"))
                for old in rotated[: max(0, len(rotated) - self.cfg.max_files)]:
                    old.unlink()
        except OSError as exc:
            log.error("sink %s: rotating %s failed (%s); still appending to it", self.name, self.path, exc)
        finally:
            self._fh = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            if self.cfg.fsync != "never":
                os.fsync(self._fh.fileno())
            self._fh.close()


class SinkRunner:
    """One sink's thread: takes event batches from a bounded queue, retries failed writes."""

    def __init__(self, sink: Sink, event_filter: EventFilter, metrics: Metrics, maxsize: int = 1024,
                 retry_s: float = 1.0) -> None:
        self.sink = sink
        self.filter = event_filter
        self.metrics = metrics
        self.retry_s = retry_s
        self._q: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._loop, name=f"sink-{sink.name}", daemon=True)
        self._stopping = threading.Event()
        self._thread.start()

    def offer(self, events: list[dict[str, Any]], block_s: float) -> bool:
        wanted = [e for e in events if self.filter.accepts(e)]
        if not wanted:
            return True
        try:
            self._q.put(wanted, timeout=block_s)
            return True
        except queue.Full:
            self.metrics.sink_dropped.labels(self.sink.name).inc(len(wanted))
            log.error("sink %s is not keeping up: %d events dropped after waiting %.1fs",
                      self.sink.name, len(wanted), block_s)
            return False

    def _loop(self) -> None:
        while True:
            try:
                batch = self._q.get(timeout=0.2)
            except queue.Empty:
                if self._stopping.is_set():  # close() could not enqueue its sentinel in time
                    break
                continue
            if batch is None:
                break
            while True:
                try:
                    self.sink.write(batch)
                    self.metrics.sink_events.labels(self.sink.name).inc(len(batch))
                    break
                except Exception as exc:  # a sink failure must never kill the thread
                    self.metrics.sink_errors.labels(self.sink.name).inc()
                    log.warning("sink %s write failed (%s); retrying in %.1fs", self.sink.name, exc, self.retry_s)
                    if self._stopping.wait(self.retry_s):
                        log.error("sink %s: giving up on %d events at shutdown", self.sink.name, len(batch))
                        break

    def close(self, timeout: float) -> bool:
        """Deliver what is queued, then close the sink. False if the deadline passed first."""
        deadline = time.monotonic() + timeout
        try:
            self._q.put(None, timeout=max(0.0, timeout))
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        done = not self._thread.is_alive()
        self._stopping.set()
        self._thread.join(0.5)
        try:
            self.sink.close()
        except Exception as exc:
            log.error("sink %s close failed: %s", self.sink.name, exc)
        return done


class EventBus:
    """Fans events out to every sink runner."""

    def __init__(self, runners: list[SinkRunner], block_s: float = 5.0) -> None:
        self.runners = runners
        self.block_s = block_s

    def publish(self, events: list[dict[str, Any]]) -> None:
        if events:
            for r in self.runners:
                r.offer(events, self.block_s)

    def close(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all([r.close(max(0.1, deadline - time.monotonic())) for r in self.runners])


SinkConfig = JsonlSinkConfig


def build_sink(cfg: SinkConfig) -> Sink:
    if isinstance(cfg, JsonlSinkConfig):
        return JsonlSink(cfg)
    raise ValueError(f"unknown sink type {cfg!r}")
