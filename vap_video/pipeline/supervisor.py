"""Stream supervision: one worker thread per stream, one watchdog thread for all of them.

The failure modes operators hit most (one dead camera blocking all, a dropped camera that never
comes back, a hung read that freezes a stream forever) are handled here, so the rest of the
runtime only ever sees a flow of frames and state changes:

- Each stream opens and reads in its own daemon thread; a stream that cannot be opened sits in
  `backoff` and retries forever (exponential backoff with full jitter, capped, reset after a
  stable period of streaming) without delaying any other stream.
- State machine per stream: starting -> streaming <-> stalled; any error -> backoff -> starting;
  stalled -> streaming only after `stall_recover_s` of frames without a stall-sized gap, so a
  stream that trickles or catches up under load does not flap between the two;
  `finished` at the end of a non-looping file; `stopped` after stop().
- A network camera in backoff is probed every `probe_interval_s` with a bare TCP connect (no
  RTSP session, no decoder): full opens stay spaced by the backoff, but a camera whose port
  answers again after being down is opened at once, so recovery after a long outage takes
  seconds instead of up to `backoff_max_s`.
- Files have batch semantics: a file that cannot be opened or decoded goes to `failed` at once
  (retrying cannot repair it, and a run of files must end), and one that ends before its declared
  length finishes with the reason "truncated: ...". Both are counted in
  `vap_inputs_incomplete_total`. A file configured `live: true` (a stand-in camera) and every
  camera keep the reconnect loop. A synthetic scene with parameters no scene can have fails too.
- One watchdog thread (not one per stream: 200 cameras should not mean 400 threads) detects
  stalls from the observed frame interval and abandons a read that hangs past its timeout even
  though FFmpeg's interrupt should have ended it: the stuck thread is left to die on its own
  (it closes its decoder when the read returns and never emits again) and a fresh thread
  reconnects.
- Each stream's reader (`stream_reader.StreamReader`) holds at most the one frame it is handing to
  `emit`; buffering and drop policy belong to the runtime's queue. Backoff and probing: `reconnect.py`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from vap_video.pipeline.config import StreamConfig
from vap_video.pipeline.decode_plan import DecodePlan
from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.stream_reader import STABLE_RESET_S, EmitFn, StateFn, StreamReader

log = logging.getLogger(__name__)

# Watchdog period: small against stall_min_s (>= 1 s by default), cheap for 200 streams.
WATCHDOG_PERIOD_S = 0.1


class Supervisor:
    """Owns every StreamReader and the single watchdog thread; streams can come and go at runtime."""

    def __init__(self, emit: EmitFn, metrics: Metrics, on_state: StateFn | None = None, *,
                 watchdog_period_s: float = WATCHDOG_PERIOD_S, stable_reset_s: float = STABLE_RESET_S,
                 plan: DecodePlan | None = None) -> None:
        self._emit = emit
        self.plan = plan
        self._metrics = metrics
        self._on_state = on_state
        self._period = watchdog_period_s
        self._stable_reset_s = stable_reset_s
        self._workers: dict[str, StreamReader] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._watchdog: threading.Thread | None = None

    def add(self, cfg: StreamConfig) -> None:
        """Start a stream; ValueError if the name is taken or the URL is not a supported kind."""
        with self._lock:
            if cfg.name in self._workers:
                raise ValueError(f"stream {cfg.name!r} already exists: remove it first or pick another name")
            worker = StreamReader(cfg, self._emit, self._metrics, self._on_state, stable_reset_s=self._stable_reset_s,
                                  plan=self.plan)
            self._workers[cfg.name] = worker
            if self._closing.is_set():  # added again after stop_all(): let the old watchdog end first
                if self._watchdog is not None and self._watchdog is not threading.current_thread():
                    self._watchdog.join(2 * self._period + 1.0)
                self._closing.clear()
            if self._watchdog is None or not self._watchdog.is_alive():
                self._watchdog = threading.Thread(target=self._watch, name="vap-watchdog", daemon=True)
                self._watchdog.start()
        worker.start()

    def remove(self, name: str, timeout: float = 5.0) -> None:
        """Stop a stream, release its decoder and forget its metric series; KeyError if unknown."""
        with self._lock:
            if name not in self._workers:
                raise KeyError(f"no stream named {name!r} (known: {', '.join(sorted(self._workers)) or 'none'})")
            worker = self._workers.pop(name)
        worker.stop(timeout)
        self._metrics.forget_stream(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    def worker(self, name: str) -> StreamReader:
        """The worker of stream `name` (KeyError if unknown)."""
        with self._lock:
            return self._workers[name]

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            workers = list(self._workers.values())
        return [w.snapshot() for w in workers]

    def all_finished(self) -> bool:
        """True when there is at least one stream and every stream has finished or failed.

        Only finite inputs (files, `synthetic://...&frames=N`) ever finish; a camera never does,
        so any camera keeps this False, as does an empty supervisor (streams may still be added).
        """
        with self._lock:
            workers = list(self._workers.values())
        return bool(workers) and all(w.state in ("finished", "failed") for w in workers)

    def stop_all(self, timeout: float = 5.0) -> None:
        """Stop every stream (in parallel, so N blocked readers cost one timeout) and the watchdog."""
        self._closing.set()
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            w._stop.set()
            src = w._source
            if src is not None:
                src.interrupt()
        deadline = time.monotonic() + timeout
        for w in workers:
            w.stop(max(0.0, deadline - time.monotonic()))
        wd = self._watchdog
        if wd is not None and wd is not threading.current_thread():
            wd.join(max(0.1, deadline - time.monotonic()))

    def _watch(self) -> None:
        """The single watchdog loop: check every stream each period; exceptions are logged, never raised."""
        while not self._closing.wait(self._period):
            with self._lock:
                workers = list(self._workers.values())
            now = time.monotonic()
            for w in workers:
                try:
                    w.check(now)
                except Exception:
                    log.exception("watchdog: check of stream %s failed", w.name)


__all__ = ["Supervisor", "WATCHDOG_PERIOD_S"]
