"""Event delivery: each sink runs on its own thread (`SinkRunner`), fed from its disk spool or a
bounded queue; `EventBus` fans every batch out to the runners.

Network sinks (MQTT, Kafka, webhook, Redis) have a spool (`vap_video.pipeline.sinks.spool`) by default and are at
least once: `publish` appends every accepted batch to each sink's spool (local disk, no waiting on
the network) and the sink's thread delivers from the head of its spool in order, acknowledging
what the broker confirmed. So a slow or dead sink never delays the data path or the other sinks,
and undelivered events stay on disk across a shutdown or crash of vap; they replay, oldest first,
with exponential backoff between failed attempts. Consumers deduplicate by event `id`. What can
still be lost is counted: a full spool (`vap_spool_dropped_total`, by its drop policy) or a spool
disk that fails (same counter). Without a spool (JSONL's default) a failed write is retried in
place and the bounded queue applies backpressure: `publish` waits up to `block_s`, then counts a
drop (`vap_sink_dropped_total`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.sinks.base import EventFilter, PartialDelivery, Sink
from vap_video.pipeline.sinks.spool import Spool

log = logging.getLogger("vap.sinks")


class SinkRunner:
    """One sink's thread: delivers event batches in order, from its disk spool or a bounded queue.

    With a spool (`sink.spool_config.enabled`) every accepted batch is appended to the spool first
    (`offer` only writes to local disk, ~150k events/s) and the sink thread delivers from its head:
    peek, write, ack. So a slow or dead sink never makes `publish` wait, the other sinks never wait
    for it, and at shutdown nothing accepted is lost: what was not delivered is already on disk and
    replays at the next start. A failed delivery is retried with exponential backoff (`retry_s`
    doubling to `retry_max_s`); a spool disk failure (full, read-only) is counted
    (`vap_spool_dropped_total`) and retried, it never stops the thread.

    Without a spool (JSONL's default: the file is local) batches go through a bounded queue and a
    failed batch is retried in place every `retry_s`; a full queue makes `offer` wait up to
    `block_s`, then the batch is dropped and counted (`vap_sink_dropped_total`).
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
        self._lock = threading.Lock()  # guards the spool: offer appends, the sink thread peeks and acks
        self._wake = threading.Event()  # new events in the spool, or close requested
        self._closing = threading.Event()  # deliver what is left, then end
        self._stopping = threading.Event()  # deadline passed: end now
        self._retry_now = threading.Event()  # the sink's link came back: cut the backoff short
        sink.on_link = self._on_link
        self._spool_closed = False
        name = sink.name
        # Every per-sink series exists from the start (at 0), so alerts on increase() see the first burst.
        for counter in (metrics.sink_events, metrics.sink_errors, metrics.sink_dropped, metrics.sink_dead_letter,
                        metrics.spool_dropped):
            counter.labels(name)
        metrics.sink_up.labels(name).set(1)
        if spool is not None and spool.dropped:  # what repairing the spool at open had to cut
            metrics.spool_dropped.labels(name).inc(spool.dropped)
            spool.dropped = 0
        self._update_spool_metrics()
        target = self._loop_spooled if spool is not None else self._loop_in_place
        self._thread = threading.Thread(target=target, name=f"sink-{name}", daemon=True)
        self._thread.start()

    def _on_link(self, up: bool) -> None:
        """The sink's connection came back (retry now) or went (the gauge says so at once)."""
        self.metrics.sink_up.labels(self.sink.name).set(1 if up else 0)
        if up:
            self._retry_now.set()
            self._wake.set()

    def _backoff_wait(self, seconds: float) -> bool:
        """Sleep out a retry backoff; True when the sink's link came back meanwhile (or we stop)."""
        if self._retry_now.wait(seconds):
            self._retry_now.clear()
            return True
        return self._stopping.is_set()

    def offer(self, events: list[dict[str, Any]], block_s: float) -> bool:
        """Accept events for this sink; False if they were lost (counted). Waits only without a spool."""
        wanted = [e for e in events if self.filter.accepts(e)]
        if not wanted:
            return True
        if self.spool is not None:
            return self._offer_spooled(self.spool, wanted)
        try:
            self._q.put(wanted, timeout=block_s)
            return True
        except queue.Full:
            self.metrics.sink_dropped.labels(self.sink.name).inc(len(wanted))
            log.error("sink %s is not keeping up: %d events dropped after waiting %.1fs",
                      self.sink.name, len(wanted), block_s)
            return False

    def _offer_spooled(self, spool: Spool, events: list[dict[str, Any]]) -> bool:
        with self._lock:
            if self._spool_closed:
                dropped = len(events)
                log.error("sink %s is closed: %d events not accepted", self.sink.name, dropped)
            else:
                try:
                    dropped = spool.append(events)
                except (OSError, TypeError, ValueError) as exc:  # disk full or gone, or not JSON:
                    # these events are lost, and that must show; the pipeline's thread goes on
                    dropped = len(events)
                    log.error("sink %s: could not spool %d events (%s); they are lost", self.sink.name,
                              len(events), exc)
            if dropped:
                self.metrics.spool_dropped.labels(self.sink.name).inc(dropped)
            self.metrics.spool_events.labels(self.sink.name).set(len(spool))
            self.metrics.spool_bytes.labels(self.sink.name).set(spool.size_bytes)
        self._wake.set()
        return dropped == 0

    def _deliver(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write a batch; returns the events that were not dealt with (a suffix of it; empty on success).

        Events the sink dead-lettered or dropped as rejected are dealt with (not retried) but are
        not counted as delivered.
        """
        self.sink.not_delivered = 0
        try:
            self.sink.write(batch)
        except Exception as exc:  # a sink failure must never kill the thread
            remaining = exc.remaining if isinstance(exc, PartialDelivery) else batch
            done = len(batch) - len(remaining) - getattr(self.sink, "not_delivered", 0)
            if done > 0:
                self.metrics.sink_events.labels(self.sink.name).inc(done)
            self.metrics.sink_errors.labels(self.sink.name).inc()
            self.metrics.sink_up.labels(self.sink.name).set(0)
            log.warning("sink %s: delivering %d events failed (%s)", self.sink.name, len(remaining), exc)
            return remaining
        done = len(batch) - getattr(self.sink, "not_delivered", 0)
        if done > 0:
            self.metrics.sink_events.labels(self.sink.name).inc(done)
        self.metrics.sink_up.labels(self.sink.name).set(1)
        return []

    def _loop_in_place(self) -> None:
        while True:
            try:
                batch = self._q.get(timeout=0.2)
            except queue.Empty:
                if self._stopping.is_set() or self._closing.is_set():
                    break
                continue
            if batch is None:
                break
            while batch:
                batch = self._deliver(batch)
                if batch and self._backoff_wait(self.retry_s) and self._stopping.is_set():
                    log.error("sink %s: giving up on %d events at shutdown", self.sink.name, len(batch))
                    break

    def _loop_spooled(self) -> None:
        spool = self.spool
        assert spool is not None    # this loop runs only for a sink with a spool (see __init__)
        backoff = self.retry_s
        while not self._stopping.is_set():
            try:
                self._wake.clear()
                with self._lock:
                    if self._spool_closed:
                        break
                    entries = spool.peek_each(self.replay_batch)
                if not entries:
                    self._update_spool_metrics()
                    if self._closing.is_set():
                        break
                    self._wake.wait(0.5)
                    continue
                self._retry_now.clear()  # only a comeback from now on cuts the next backoff short
                failed = self._deliver([e for e, _ in entries])
                done = len(entries) - len(failed)
                with self._lock:
                    if done and not self._spool_closed:
                        spool.ack(entries[done - 1][1])
                self._update_spool_metrics()
                if failed:
                    if self._backoff_wait(backoff):
                        backoff = self.retry_s
                    else:
                        backoff = min(backoff * 2, self.retry_max_s)
                else:
                    backoff = self.retry_s
            except Exception as exc:  # the spool's disk failed (read error, removed dir): retry, never die
                self.metrics.sink_errors.labels(self.sink.name).inc()
                log.error("sink %s: spool %s failed (%s); retrying in %.1fs", self.sink.name,
                          spool.dir, exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self.retry_max_s)

    def _update_spool_metrics(self) -> None:
        if self.spool is None:
            return
        name = self.sink.name
        with self._lock:
            if self._spool_closed:
                return
            self.metrics.spool_events.labels(name).set(len(self.spool))
            self.metrics.spool_bytes.labels(name).set(self.spool.size_bytes)
            self.metrics.spool_age.labels(name).set(self.spool.oldest_age())

    def request_close(self) -> None:
        """Start closing: deliver what is queued or spooled until `finish_close`'s deadline."""
        self._closing.set()
        self._wake.set()
        if self.spool is None:
            try:
                self._q.put_nowait(None)
            except queue.Full:
                pass  # the loop also ends on _closing once the queue is empty

    def join(self, deadline: float) -> None:
        """Wait (until the monotonic `deadline`) for the sink thread to finish delivering."""
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def finish_close(self) -> bool:
        """Stop the thread, close the sink (which interrupts a write in progress) and the spool.

        False if accepted events were neither delivered nor kept in the spool.
        """
        done = not self._thread.is_alive() and (self.spool is not None or self._q.empty())
        self._stopping.set()
        self._wake.set()
        self._retry_now.set()
        try:
            self.sink.close()  # also interrupts a sink waiting in its own retries or flush
        except Exception as exc:
            log.error("sink %s close failed: %s", self.sink.name, exc)
        self._thread.join(0.5)
        if self.spool is not None:
            self._update_spool_metrics()
            with self._lock:
                left = len(self.spool)
                self._spool_closed = True  # a write still returning late must not ack a closed spool
                self.spool.close()
            if left:
                log.warning("sink %s: %d undelivered events stay in the spool %s for the next start",
                            self.sink.name, left, self.spool.dir)
            # Every accepted event was spooled before delivery: what was not delivered is on disk
            # and replays at the next start, so a broker that is down at shutdown loses nothing.
            done = True
        return done

    def close(self, timeout: float) -> bool:
        """Deliver what is queued (and spooled) for up to `timeout` s, then close the sink."""
        deadline = time.monotonic() + timeout
        self.request_close()
        self.join(deadline)
        return self.finish_close()


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
        """Close every sink within `timeout` in total: all are told to finish first, then waited for
        together, so one slow sink does not eat the others' share of the deadline."""
        deadline = time.monotonic() + timeout
        for r in self.runners:
            r.request_close()
        for r in self.runners:
            r.join(deadline)
        results: list[bool] = [False] * len(self.runners)

        def finish(i: int, r: SinkRunner) -> None:
            results[i] = r.finish_close()

        closers = [threading.Thread(target=finish, args=(i, r), name=f"close-{r.sink.name}", daemon=True)
                   for i, r in enumerate(self.runners)]
        for t in closers:
            t.start()
        for t in closers:
            t.join(max(1.0, deadline - time.monotonic()) + 6.0)  # sink.close() has its own bounds
        return all(results)
