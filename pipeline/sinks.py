"""Event delivery: each sink runs on its own thread behind a bounded queue, with an optional disk spool.

A slow sink therefore never delays the data path or the other sinks. Network sinks (MQTT, Kafka,
webhook, Redis) are at least once: a batch the sink cannot deliver goes to the sink's disk spool
(`pipeline.spool`), and while the spool holds anything, new batches queue behind it there, so
replay keeps the original order; the spool is drained, oldest first, with exponential backoff
between failed attempts, and survives a restart of vap. Consumers deduplicate by event `id`.
Without a spool (JSONL's default) a failed write is retried in place and the bounded queue
applies backpressure: `publish` waits up to `block_s`, then counts a drop.

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
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag

from pipeline.config import ConfigError
from pipeline.metrics import Metrics
from pipeline.sink_base import EventFilter, PartialDelivery, Sink, SinkConfigBase
from pipeline.sink_kafka import KafkaSink, KafkaSinkConfig
from pipeline.sink_mqtt import MqttSink, MqttSinkConfig
from pipeline.sink_redis import RedisSink, RedisSinkConfig
from pipeline.sink_webhook import WebhookSink, WebhookSinkConfig
from pipeline.spool import Spool, SpoolConfig

log = logging.getLogger("vap.sinks")


class JsonlSinkConfig(SinkConfigBase):
    """Append events as JSON lines; rotate by size."""

    type: Literal["jsonl"] = Field("jsonl", description="Sink kind")
    path: Path = Field(Path("events/events.jsonl"), description="File to append to; rotated files sit next to it")
    rotate_mb: float = Field(100.0, gt=0, description="Rotate when the file passes this size")
    max_files: int | None = Field(None, ge=1, description="Delete the oldest rotated files beyond this count "
                                  "(None keeps all: vap never deletes events unless told to)")
    fsync: Literal["always", "interval", "never"] = Field(
        "interval", description="Power-loss safety: fsync every batch, every fsync_interval_s, or never")
    fsync_interval_s: float = Field(1.0, gt=0, description="With fsync=interval: most seconds of events at risk")
    spool: SpoolConfig = Field(default_factory=lambda: SpoolConfig(enabled=False),
                               description="Disk spool (off: the file is local, a failed write is retried in place)")


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
    """One sink's thread: takes event batches from a bounded queue, delivers them, spools what fails.

    With a spool (`sink.spool_config.enabled`): a failed batch is appended to the spool and so is
    every later batch until the spool is empty again, so events leave in the order they came. The
    head of the spool is retried with exponential backoff (`retry_s` doubling to `retry_max_s`).
    At close the runner keeps replaying until its deadline; what is left stays on disk for the next
    start. Without a spool a failed batch is retried in place every `retry_s`.
    """

    def __init__(self, sink: Sink, event_filter: EventFilter, metrics: Metrics, maxsize: int = 1024,
                 retry_s: float = 1.0, retry_max_s: float = 30.0, spool: Spool | None = None) -> None:
        self.sink = sink
        self.filter = event_filter
        self.metrics = metrics
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        sink.metrics = metrics
        cfg = getattr(sink, "spool_config", None)
        if spool is None and cfg is not None and cfg.enabled:
            spool = Spool(cfg.dir or Path("spool") / sink.name, int(cfg.max_mb * 1e6), cfg.policy,
                          int(cfg.segment_mb * 1e6), cfg.fsync)
        self.spool = spool
        self.replay_batch = cfg.replay_batch if cfg is not None else 500
        self._q: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._loop, name=f"sink-{sink.name}", daemon=True)
        self._stopping = threading.Event()
        self._update_spool_metrics()
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

    def _deliver(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write a batch; returns the events that were not delivered (a suffix of it; empty on success)."""
        try:
            self.sink.write(batch)
        except Exception as exc:  # a sink failure must never kill the thread
            remaining = exc.remaining if isinstance(exc, PartialDelivery) else batch
            done = len(batch) - len(remaining)
            if done:
                self.metrics.sink_events.labels(self.sink.name).inc(done)
            self.metrics.sink_errors.labels(self.sink.name).inc()
            self.metrics.sink_up.labels(self.sink.name).set(0)
            log.warning("sink %s: delivering %d events failed (%s)", self.sink.name, len(remaining), exc)
            return remaining
        self.metrics.sink_events.labels(self.sink.name).inc(len(batch))
        self.metrics.sink_up.labels(self.sink.name).set(1)
        return []

    def _loop(self) -> None:
        if self.spool is not None:
            try:
                self._loop_spooled(self.spool)
                return
            except OSError as exc:  # the spool's disk failed (full, removed, read-only)
                log.error("sink %s: spool %s failed (%s); %d spooled events stay on disk, delivering "
                          "without a spool from now on", self.sink.name, self.spool.dir, exc, len(self.spool))
                self.metrics.sink_errors.labels(self.sink.name).inc()
        self._loop_in_place()

    def _loop_in_place(self) -> None:
        while True:
            try:
                batch = self._q.get(timeout=0.2)
            except queue.Empty:
                if self._stopping.is_set():  # close() could not enqueue its sentinel in time
                    break
                continue
            if batch is None:
                break
            while batch:
                batch = self._deliver(batch)
                if batch and self._stopping.wait(self.retry_s):
                    log.error("sink %s: giving up on %d events at shutdown", self.sink.name, len(batch))
                    break

    def _to_spool(self, spool: Spool, batch: list[dict[str, Any]]) -> None:
        try:
            dropped = spool.append(batch)
        except OSError as exc:  # disk full or gone: these events are lost, and that must show
            dropped = len(batch)
            log.error("sink %s: could not spool %d events (%s); they are lost", self.sink.name, len(batch), exc)
        if dropped:
            self.metrics.spool_dropped.labels(self.sink.name).inc(dropped)

    def _loop_spooled(self, spool: Spool) -> None:
        closing = False
        backoff = self.retry_s
        next_try = 0.0
        while True:
            if self._stopping.is_set():
                break
            if not len(spool):
                if closing:
                    break
                try:
                    batch = self._q.get(timeout=0.2)
                except queue.Empty:
                    continue
                if batch is None:
                    closing = True
                    continue
                failed = self._deliver(batch)
                if failed:
                    self._to_spool(spool, failed)
                    next_try = time.monotonic() + backoff
                self._update_spool_metrics()
                continue
            # The spool holds events: everything new queues behind them, on disk.
            wait = max(0.0, next_try - time.monotonic())
            while True:
                try:
                    batch = self._q.get(timeout=min(wait, 0.2)) if wait > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if batch is None:
                    closing = True
                else:
                    self._to_spool(spool, batch)
                wait = max(0.0, next_try - time.monotonic())
            if time.monotonic() >= next_try:
                entries = spool.peek_each(self.replay_batch)
                failed = self._deliver([e for e, _ in entries]) if entries else []
                done = len(entries) - len(failed)
                if done:
                    spool.ack(entries[done - 1][1])
                if entries and not failed:
                    backoff = self.retry_s
                    next_try = 0.0
                else:
                    backoff = min(backoff * 2, self.retry_max_s)
                    next_try = time.monotonic() + backoff
            self._update_spool_metrics()
        # Deadline passed or closed: move anything still queued to disk so nothing accepted is lost.
        while True:
            try:
                batch = self._q.get_nowait()
            except queue.Empty:
                break
            if batch is not None:
                self._to_spool(spool, batch)
        self._update_spool_metrics()
        if len(spool):
            log.warning("sink %s: %d undelivered events stay in the spool %s for the next start",
                        self.sink.name, len(spool), spool.dir)

    def _update_spool_metrics(self) -> None:
        if self.spool is None:
            return
        name = self.sink.name
        self.metrics.spool_events.labels(name).set(len(self.spool))
        self.metrics.spool_bytes.labels(name).set(self.spool.size_bytes)
        self.metrics.spool_age.labels(name).set(self.spool.oldest_age())

    def close(self, timeout: float) -> bool:
        """Deliver what is queued (and spooled), then close the sink.

        False if the deadline passed with accepted events neither delivered nor in the spool.
        """
        deadline = time.monotonic() + timeout
        try:
            self._q.put(None, timeout=max(0.0, timeout))
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        done = not self._thread.is_alive()
        self._stopping.set()
        try:
            self.sink.close()  # also interrupts a sink waiting in its own retries
        except Exception as exc:
            log.error("sink %s close failed: %s", self.sink.name, exc)
        self._thread.join(0.5)
        if self.spool is not None and not self._thread.is_alive():
            self.spool.close()
            # Whatever was not delivered is on disk and replays at the next start: nothing is lost,
            # so a broker that is down at shutdown does not make the shutdown unclean.
            done = True
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


class _SinkType:
    """The `type` of a sink entry; entries without one are JSONL (the original, typeless form).

    A class rather than a function so its repr, which the generated config reference prints, is
    stable from run to run.
    """

    def __call__(self, value: Any) -> str | None:
        if isinstance(value, dict):
            return value.get("type", "jsonl")
        return getattr(value, "type", None)

    __name__ = "sink_type"

    def __repr__(self) -> str:
        return "type"


SinkConfig = Annotated[
    Union[Annotated[JsonlSinkConfig, Tag("jsonl")], Annotated[MqttSinkConfig, Tag("mqtt")],
          Annotated[KafkaSinkConfig, Tag("kafka")], Annotated[WebhookSinkConfig, Tag("webhook")],
          Annotated[RedisSinkConfig, Tag("redis")]],
    Discriminator(_SinkType(), custom_error_type="sink_type",
                  custom_error_message="unknown sink type; use one of jsonl, mqtt, kafka, webhook, redis"),
]
"""One entry of `sinks:`; `type` picks the kind (jsonl, mqtt, kafka, webhook, redis)."""

_SINKS: dict[type, type[Sink]] = {JsonlSinkConfig: JsonlSink, MqttSinkConfig: MqttSink, KafkaSinkConfig: KafkaSink,
                                  WebhookSinkConfig: WebhookSink, RedisSinkConfig: RedisSink}


def build_sink(cfg: SinkConfigBase) -> Sink:
    """Open the sink a config describes (client libraries are imported here, lazily)."""
    try:
        cls = _SINKS[type(cfg)]
    except KeyError:
        raise ValueError(f"unknown sink type {cfg!r}") from None
    sink = cls(cfg)  # type: ignore[call-arg]
    sink.spool_config = cfg.spool
    return sink


__all__ = ["EventBus", "EventFilter", "JsonlSink", "JsonlSinkConfig", "KafkaSinkConfig", "MqttSinkConfig",
           "RedisSinkConfig", "Sink", "SinkConfig", "SinkRunner", "SpoolConfig", "WebhookSinkConfig", "build_sink"]
