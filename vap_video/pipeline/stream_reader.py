"""One stream's reader: its thread, its state machine, and the watchdog's checks of it.

The `Supervisor` (supervisor.py) owns one `StreamReader` per stream and the single watchdog thread;
the behaviour both implement is described at the top of supervisor.py. A reader holds at most the
one frame it is handing to `emit`; buffering and drop policy belong to the runtime's queue.

Why one class of ~530 lines: the reader thread (open, read, back off) and the watchdog (stall,
hung call, fps) change the same state under the same lock, and the generation counter that lets
an abandoned thread die quietly only works if both sides see it; split apart they would reach
into each other's privates.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vap_video.pipeline.config import StreamConfig, redact_url, source_kind
from vap_video.pipeline.decode_plan import DecodePlan, FrameStride
from vap_video.pipeline.frames import Frame
from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.reconnect import PROBE_CONNECT_S, backoff_delay, probe_address, tcp_answers
from vap_video.pipeline.source_errors import SourceError, classify_error
from vap_video.pipeline.sources import Source, open_source

log = logging.getLogger(__name__)

EmitFn = Callable[[Frame], bool]
StateFn = Callable[[str, str, str], None]

# Streaming this long without an error resets the backoff to its initial delay.
STABLE_RESET_S = 10.0
# Grace on top of FFmpeg's own open/read timeout before the watchdog calls a call hung.
HANG_GRACE_S = 2.0
# EMA weight of the newest inter-frame interval.
EMA_ALPHA = 0.1


class StreamReader:
    """Reads one stream in its own daemon thread and hands frames to `emit`.

    `emit(frame) -> bool` is the runtime's: for live streams it never blocks, for files it blocks
    until there is room and returns False when the pipeline is stopping (the worker then stops).
    `on_state(stream, state, reason)` is called on every state change, from the worker's or the
    watchdog's thread; it must not block.
    """

    def __init__(self, cfg: StreamConfig, emit: EmitFn, metrics: Metrics,
                 on_state: StateFn | None = None, *, stable_reset_s: float = STABLE_RESET_S,
                 rng: random.Random | None = None, plan: DecodePlan | None = None) -> None:
        source_kind(cfg.url)  # ValueError naming the supported forms, before any thread starts
        self.cfg = cfg
        self._plan = plan  # decode straight to the engine size (None: full frames)
        self.name = cfg.name
        self._emit = emit
        self._metrics = metrics
        self._on_state = on_state
        self._stable_reset_s = stable_reset_s
        self._rng = rng or random.Random()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._source: Source | None = None
        self.state = "starting"
        self._last_backoff_reason: str | None = None
        self._state_since = time.monotonic()
        # counters and observations (read by snapshot() and the watchdog)
        self.frames = 0           # frames handed to emit (also the next Frame.index)
        self.decoded = 0          # frames decoded, including stride drops
        self.drops = 0            # frames skipped by max_fps
        self.reconnects = 0
        self.decode_errors = 0
        self.last_error: str | None = None
        self.failed: str | None = None      # why a file failed for good (state 'failed')
        self.truncated: str | None = None   # why a file that finished ended early
        self.resolution: tuple[int, int] | None = None  # (width, height)
        self.fps = 0.0
        self._interval_ema: float | None = None
        self._last_arrival: float | None = None   # monotonic time of the last decoded frame
        self._last_progress: float | None = None  # last decoded frame or end of an emit
        self._recover_since: float | None = None  # while stalled: first frame of the current steady run
        self._probe_down = False  # the last backoff probe found nothing answering at the camera's port
        self._in_emit = False
        self._fps_mark: tuple[float, int] | None = None
        # labelled metric children, resolved once (per-frame work stays small)
        self._m_decoded = metrics.frames_decoded.labels(self.name)
        self._m_errors = metrics.decode_errors.labels(self.name)
        self._m_reconnects = metrics.reconnects.labels(self.name)
        self._m_stride = metrics.frames_dropped.labels(self.name, "stride")
        self._m_fps = metrics.stream_fps.labels(self.name)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the reader thread (open happens there, never in the caller's thread)."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"stream {self.name} already started")
            self.state = "created"  # so the first 'starting' is a real, announced change
            self._set_state("starting", "opening", force=True)
            self._spawn()

    def _spawn(self) -> None:
        self._generation += 1
        gen = self._generation
        self._thread = threading.Thread(target=self._run, args=(gen,), name=f"vap-src-{self.name}-{gen}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread and release the decoder; state becomes 'stopped'.

        Returns within `timeout`. A read blocked inside FFmpeg cannot be interrupted from here;
        it ends at the latest after `read_timeout_s`, and the thread closes the decoder then.
        """
        self._stop.set()
        with self._lock:
            src, thread = self._source, self._thread
        if src is not None:
            src.interrupt()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("stream %s: reader still blocked after %.1fs; its decoder is released when the "
                            "read times out (read_timeout_s=%g)", self.name, timeout, self.cfg.read_timeout_s)
        with self._lock:
            self._generation += 1  # whatever the old thread does from now on is ignored
        self._set_state("stopped", "stopped", force=True)

    @property
    def alive(self) -> bool:
        """True while a reader thread runs (for tests and diagnostics)."""
        t = self._thread
        return t is not None and t.is_alive()

    # ------------------------------------------------------------------ state

    def _set_state(self, state: str, reason: str, gen: int | None = None, force: bool = False,
                   expect: str | None = None) -> bool:
        """Change state (no-op if unchanged).

        `gen` guards against an abandoned thread writing; `expect` makes the watchdog's change
        conditional on the state it observed, so it never overwrites a newer one.
        """
        with self._lock:
            if gen is not None and gen != self._generation:
                return False
            if expect is not None and self.state != expect:
                return False
            if self.state == state:
                return True
            if self.state == "stopped" and not force:
                return False
            old, self.state = self.state, state
            self._state_since = time.monotonic()
        self._metrics.set_state(self.name, state)
        # One line per change; a retry loop failing the same way again is logged at DEBUG so a
        # camera that is down for a day does not flood the log (the first failure and the
        # recovery are always visible).
        level = logging.WARNING if state in ("backoff", "stalled") else \
            logging.ERROR if state == "failed" else logging.INFO
        if state == "starting" and old == "backoff":
            level = logging.DEBUG
        elif state == "backoff":
            if reason == self._last_backoff_reason:
                level = logging.DEBUG
            self._last_backoff_reason = reason
        elif state == "streaming":
            self._last_backoff_reason = None
        log.log(level, "stream %s: %s -> %s (%s)", self.name, old, state, reason)
        if self._on_state is not None:
            try:
                self._on_state(self.name, state, reason)
            except Exception:
                log.exception("stream %s: on_state callback failed", self.name)
        return True

    def _current(self, gen: int) -> bool:
        return gen == self._generation and not self._stop.is_set()

    # ------------------------------------------------------------------ reader thread

    def _run(self, gen: int) -> None:
        """Open/read/backoff loop of one thread generation; never lets an exception escape."""
        attempt = 0
        first = gen == 1
        while self._current(gen):
            if not first:
                self.reconnects += 1
                self._m_reconnects.inc()
            first = False
            self._set_state("starting", "reconnecting" if self.reconnects else "opening", gen)
            outcome, error, streamed_s = self._session(gen)
            if outcome == "finished":
                if self.truncated:
                    log.warning("stream %s: %s: truncated: %s; processed what could be read",
                                self.name, redact_url(self.cfg.url), self.truncated)
                    self._metrics.inputs_incomplete.labels(self.name, "truncated").inc()
                    self._set_state("finished", f"truncated: {self.truncated}", gen)
                else:
                    self._set_state("finished", "end of file", gen)
                return
            if outcome == "stopped" or not self._current(gen):
                if outcome == "stopped" and gen == self._generation:
                    self._set_state("stopped", "pipeline stopping", gen, force=True)
                return
            if streamed_s >= self._stable_reset_s:
                attempt = 0
            message = str(error) if error is not None else f"{redact_url(self.cfg.url)}: stream lost"
            with self._lock:
                if gen == self._generation:
                    self.last_error = message
            if error is not None and self._fails_for_good(error):
                with self._lock:
                    if gen == self._generation:
                        self.failed = message
                self._metrics.inputs_incomplete.labels(self.name, "failed").inc()
                self._set_state("failed", message, gen)
                return
            self._set_state("backoff", message, gen)
            delay = backoff_delay(attempt, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self._rng)
            attempt += 1
            self._wait_backoff(delay, error is not None and error.kind == "unreachable"
                               and ": unreachable:" in str(error), gen)

    def _wait_backoff(self, delay: float, refused: bool, gen: int) -> None:
        """Sleep out a backoff, probing a network camera's port meanwhile; return early when it
        answers after having been down.

        "Down" means a probe failed, in this or an earlier wait, or the open itself found nothing
        listening (refused, no route). A camera that answers but fails (401, 404, resets, hangs)
        answers probes too: without a probe failure first, it keeps the full backoff.
        """
        interval = self.cfg.probe_interval_s
        address = probe_address(self.cfg.url) if interval > 0 else None
        if address is None or delay <= interval:
            self._stop.wait(delay)
            return
        if refused:
            self._probe_down = True
        end = time.monotonic() + delay
        while self._current(gen):
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            if self._stop.wait(min(interval, remaining)):
                return
            if end - time.monotonic() <= 0:
                return  # the full open is due now anyway
            if tcp_answers(address, min(PROBE_CONNECT_S, interval)):
                if self._probe_down:
                    self._probe_down = False
                    log.debug("stream %s: %s:%d answers again; opening now instead of in %.1fs", self.name,
                              address[0], address[1], max(0.0, end - time.monotonic()))
                    return
            else:
                self._probe_down = True

    def _fails_for_good(self, error: SourceError) -> bool:
        """True when retrying cannot help: any error of a file with batch semantics (a missing,
        empty, corrupt or moov-less file stays so), or a synthetic scene that cannot exist."""
        kind = self.cfg.kind
        if kind == "file":
            return self.cfg.live is not True
        return kind == "synthetic" and error.kind == "unsupported"

    def _session(self, gen: int) -> tuple[str, SourceError | None, float]:
        """One open + read session: ('finished' | 'stopped' | 'error', error, seconds streamed)."""
        src: Source | None = None
        session: _Session | None = None
        try:
            src = open_source(self.cfg)
            session = self._start(src, gen)
            if session is None or self._read(session, gen) == "stopped":
                return "stopped", None, 0.0
            return self._finish(session, gen)
        except SourceError as exc:
            return "error", exc, session.streamed_s() if session else 0.0
        except Exception as exc:
            err = classify_error(exc, self.cfg.url, "read", self.cfg.read_timeout_s)
            log.debug("stream %s: unexpected %s", self.name, type(exc).__name__, exc_info=True)
            return "error", err, session.streamed_s() if session else 0.0
        finally:
            if src is not None:
                if session is not None and gen == self._generation:
                    self._sync_counters(session)
                src.close()
            with self._lock:
                if self._source is src:
                    self._source = None

    def _start(self, src: Source, gen: int) -> _Session | None:
        """Open `src` for this generation (None: stopped meanwhile)."""
        with self._lock:
            if gen != self._generation:
                return None
            self._source = src
        if self._stop.is_set():
            return None
        src.plan = self._plan
        # The max_fps cap: sources that can apply it before converting the picture do so
        # (a dropped frame is never converted); for the others it is applied here.
        session = _Session(src, FrameStride(self.cfg.max_fps))
        if session.early:
            src.stride = session.stride
        src.open()
        # The gap across a reconnect is an outage, not a frame interval: keep it out of the EMA.
        self._last_arrival = None
        return session

    def _read(self, session: _Session, gen: int) -> str | None:
        """Hand the session's frames to `emit` until the source ends; 'stopped' if told to stop."""
        src, stride = session.src, session.stride
        for frame in src.frames():
            if not self._current(gen):
                return "stopped"
            session.frames += 1
            now = time.monotonic()
            previous, limit = self._last_arrival, self._stall_limit()  # before this gap moves the EMA
            self._observe_arrival(now)
            self._sync_counters(session)
            self._note_frame(frame, now, previous, limit, session, gen)
            if not session.early and not stride.keep(frame.pts):
                self.drops += 1
                self._m_stride.inc()
                continue
            frame.index = self.frames
            self.frames += 1
            self._in_emit = True
            try:
                keep_going = self._emit(frame)
            finally:
                self._in_emit = False
                self._last_progress = time.monotonic()
            del frame  # the reader never holds more than the frame it is handing over
            if keep_going is False:
                return "stopped"
        return None

    def _note_frame(self, frame: Frame, now: float, previous: float | None, limit: float, session: _Session,
                    gen: int) -> None:
        """Resolution changes and the state a frame moves the stream to (streaming, recovered)."""
        h, w = frame.shape
        if self.resolution != (w, h):
            if self.resolution is not None:
                log.info("stream %s: resolution %dx%d -> %dx%d", self.name, *self.resolution, w, h)
            self.resolution = (w, h)
        if self.state == "stalled":
            if self._recovered(now, previous, limit):
                self._set_state("streaming", f"frames again for {now - (self._recover_since or now):.1f}s",
                                gen, expect="stalled")
        elif self.state != "streaming":
            self._set_state("streaming", f"first frame {w}x{h}", gen)
            if session.streaming_since is None:
                session.streaming_since = now

    def _finish(self, session: _Session, gen: int) -> tuple[str, SourceError | None, float]:
        """How a session whose source ended went: finished (maybe truncated), or a file with no frame."""
        src = session.src
        self._sync_counters(session)
        if not self._current(gen):
            return "stopped", None, 0.0
        if session.frames == 0 and self.cfg.kind == "file":
            damage = f" ({src.decode_errors} damaged packet(s); last: {src.last_decode_error})" \
                if src.decode_errors else ""
            return "error", SourceError("corrupt", f"{redact_url(self.cfg.url)}: no decodable video frame "
                                                   f"in the file{damage}"), 0.0
        with self._lock:
            if src.truncated:
                self.truncated = src.truncated
            if src.last_decode_error and src.decode_errors:
                self.last_error = f"{redact_url(self.cfg.url)}: {src.decode_errors} damaged packet(s) " \
                                  f"skipped; last: {src.last_decode_error}"
        return "finished", None, 0.0

    def _sync_counters(self, session: _Session) -> None:
        """Add what the source counted since the last sync: damaged packets, frames dropped early."""
        src, stride = session.src, session.stride
        if src.decode_errors != session.reported_errors:
            self._add_decode_errors(src.decode_errors - session.reported_errors)
            session.reported_errors = src.decode_errors
        if session.early and stride.dropped != session.early_drops:
            self._count_stride_drops(stride.dropped - session.early_drops)
            session.early_drops = stride.dropped

    def _stall_limit(self) -> float:
        """Silence longer than this is a stall: scaled to the observed frame interval, floored."""
        return max(self.cfg.stall_min_s, self.cfg.stall_factor * (self._interval_ema or 0.0))

    def _recovered(self, now: float, previous: float | None, limit: float) -> bool:
        """While stalled: True once frames have come steadily for `stall_recover_s`.

        A gap longer than the stall limit starts the steady run again, so a camera that sends a
        frame now and then stays `stalled` instead of toggling to `streaming` on every frame.
        """
        if self._recover_since is None or previous is None or now - previous > limit:
            self._recover_since = now
        return now - self._recover_since >= self.cfg.stall_recover_s

    def _count_stride_drops(self, n: int) -> None:
        """Frames the source dropped for max_fps before converting them: decoded, and dropped."""
        self.drops += n
        self._m_stride.inc(n)
        self.decoded += n
        self._m_decoded.inc(n)

    def _add_decode_errors(self, n: int) -> None:
        self.decode_errors += n
        self._m_errors.inc(n)

    def _observe_arrival(self, now: float) -> None:
        """Update the inter-frame interval EMA that stall detection scales with."""
        self.decoded += 1
        self._m_decoded.inc()
        last = self._last_arrival
        if last is not None:
            dt = now - last
            ema = self._interval_ema
            self._interval_ema = dt if ema is None else ema + EMA_ALPHA * (dt - ema)
        self._last_arrival = now
        self._last_progress = now

    # ------------------------------------------------------------------ watchdog side

    def check(self, now: float | None = None) -> None:
        """One watchdog pass: stall detection, hung-call fallback, fps gauge. Never blocks."""
        now = time.monotonic() if now is None else now
        self._update_fps(now)
        if self._stop.is_set():
            return
        state = self.state
        if state == "streaming" and not self._in_emit and self._last_progress is not None:
            quiet = now - self._last_progress
            limit = self._stall_limit()
            if quiet > limit:
                self._recover_since = None
                self._set_state("stalled", f"no frame for {quiet:.1f}s (limit {limit:.1f}s)", expect="streaming")
        src = self._source
        blocked = src.blocked_since if src is not None else None
        if blocked is not None and state in ("starting", "streaming", "stalled"):
            allowed = (self.cfg.open_timeout_s if state == "starting" else self.cfg.read_timeout_s) + HANG_GRACE_S
            if now - blocked > allowed:
                self._abandon(f"{'open' if state == 'starting' else 'read'} hung for {now - blocked:.1f}s "
                              f"despite its timeout; reconnecting")

    def _abandon(self, reason: str) -> None:
        """Leave a thread stuck in FFmpeg behind and reconnect with a fresh one."""
        with self._lock:
            if self._stop.is_set():
                return
            src = self._source
            self._source = None
            message = f"{redact_url(self.cfg.url)}: {reason}"
            self.last_error = message
            self._generation += 1  # the stuck thread's writes are ignored from now on
            old_gen_state = self.state
        if src is not None:
            src.interrupt()
        log.warning("stream %s: abandoning a hung reader (%s)", self.name, old_gen_state)
        self._set_state("backoff", message)
        with self._lock:
            if not self._stop.is_set():
                self._spawn_reconnect()

    def _spawn_reconnect(self) -> None:
        gen = self._generation
        self._thread = threading.Thread(target=self._run_after_abandon, args=(gen,),
                                        name=f"vap-src-{self.name}-{gen}", daemon=True)
        self._thread.start()

    def _run_after_abandon(self, gen: int) -> None:
        self._stop.wait(backoff_delay(0, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self._rng))
        self._run(gen)

    def _update_fps(self, now: float) -> None:
        mark = self._fps_mark
        if mark is None:
            self._fps_mark = (now, self.decoded)
            return
        if now - mark[0] >= 1.0:
            self.fps = (self.decoded - mark[1]) / (now - mark[0])
            self._m_fps.set(self.fps)
            self._fps_mark = (now, self.decoded)

    # ------------------------------------------------------------------ reporting

    def snapshot(self) -> dict[str, Any]:
        """What the control API shows for this stream (URL redacted)."""
        return {
            "name": self.name,
            "url": redact_url(self.cfg.url),
            "kind": self.cfg.kind,
            "live": self.cfg.is_live,
            "state": self.state,
            "fps": round(self.fps, 2),
            "frames": self.frames,
            "drops": self.drops,
            "reconnects": self.reconnects,
            "decode_errors": self.decode_errors,
            "last_error": self.last_error,
            "failed": self.failed,
            "truncated": self.truncated,
            "resolution": list(self.resolution) if self.resolution else None,
        }


@dataclass(slots=True)
class _Session:
    """One open source and what the reader has already counted of it."""

    src: Source
    stride: FrameStride
    frames: int = 0               # frames the source produced in this session
    reported_errors: int = 0      # its decode errors already added to the counters
    early_drops: int = 0          # its max_fps drops already counted
    streaming_since: float | None = None
    early: bool = field(init=False)  # the source applies max_fps itself, before conversion

    def __post_init__(self) -> None:
        self.early = self.src.strides_early and self.stride.period > 0

    def streamed_s(self) -> float:
        return time.monotonic() - self.streaming_since if self.streaming_since else 0.0


__all__ = ["EmitFn", "StateFn", "StreamReader"]
