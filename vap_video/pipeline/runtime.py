"""The single-node pipeline: decoders -> deadline batcher -> engine -> trackers -> analytics -> sinks.

Threads (all bounded hand-offs):
  decoder threads (one per stream, `Supervisor`) --put--> DeadlineBatcher
  `prep`  : next batch, letterbox into one float32 array              --q(1)-->
  `infer` : engine call (ONNX Runtime/TensorRT release the GIL, so the next batch's preprocessing
            overlaps this one)                                          --q(1)-->
  `post`  : thresholds + inverse letterbox, per-stream tracker and analytics, events to the sinks
The `post` thread alone owns tracker/analytics state, so none of it needs locks. Streams can be
added and removed while running; removal releases the decoder and drops the stream's state after
its open tracks are closed with `track.end`.

Why one module of ~600 lines: `Pipeline` is the composition root, and its three data-path loops,
its stream registry and its shutdown order share one lock and one end-of-stream protocol; split
across files, the order in which they hand off and drain would no longer read in one place.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Callable

import numpy as np

from vap_video.engines.backends import Backend, backend_kind, load_backend
from vap_video.pipeline import __version__
from vap_video.pipeline.analytics import AnalyticsConfig, StreamAnalytics
from vap_video.pipeline.batcher import DeadlineBatcher
from vap_video.pipeline.config import ConfigError, redact_url
from vap_video.pipeline.decode_plan import DecodePlan
from vap_video.pipeline.dehaze import StreamDehazers, source_transform
from vap_video.pipeline.engine_tuner import ThreadTuner, thread_tuner_for
from vap_video.pipeline.events import make_event
from vap_video.pipeline.frames import Detections, Frame
from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.postprocess import Postprocessor
from vap_video.pipeline.preprocess import BatchPreprocessor, Letterbox
from vap_video.pipeline.settings import Settings, StreamSettings
from vap_video.pipeline.sinks import EventBus, SinkRunner, build_sink
from vap_video.pipeline.snapshots import Snapshotter
from vap_video.pipeline.supervisor import Supervisor
from vap_video.pipeline.tracking import Tracker, Tracks, make_tracker

if TYPE_CHECKING:
    from vap_video.pipeline.annotate import AnnotatedVideos

log = logging.getLogger("vap.runtime")

# Stream states reported by the supervisor, mapped to the stream events they produce.
_STATE_EVENTS = {"streaming": "stream.up", "stalled": "stream.stalled", "backoff": "stream.down",
                 "stopped": "stream.down", "finished": "stream.down", "failed": "stream.down"}

ResultHook = Callable[[Frame, Detections, Tracks, list[dict[str, Any]]], None]
EventListener = Callable[[list[dict[str, Any]]], None]
FirstUpHook = Callable[[dict[str, Any]], list[dict[str, Any]]]


@dataclass
class _StreamEntry:
    """One stream's bookkeeping across threads (decoder, API, post), guarded by `Pipeline._lock`
    (except `latency`, which only the post thread appends to and readers copy under the lock).

    Its life: added (`add_stream`), finished (the decoder reached the end or failed), finalised
    (the post thread processed every emitted frame and closed its tracks); or removing (the name
    stays reserved, frames in flight still see the config) then removed (the decoder is gone; the
    post thread closes the tracks and drops the entry).
    """

    cfg: StreamSettings
    emitted: int = 0                 # frames handed to the batcher
    finished: bool = False
    finalised: bool = False
    removing: bool = False
    removed: bool = False
    down: bool | None = None         # last published up/down state: one stream.down per outage
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=256))  # capture-to-done, for progress
    incarnation: int | None = None   # cluster owner number: goes into the stream's track ids
    first_up: FirstUpHook | None = None  # rewrites the stream's first stream.up (handover, takeover)
    stop_reason: str | None = None   # why remove_stream stopped it (e.g. handover), on its stream.down


@dataclass
class _StreamState:
    """Per-stream state owned by the post thread."""

    cfg: StreamSettings
    tracker: Tracker
    analytics: StreamAnalytics
    processed: int = 0
    last_t: float | None = None
    last_pts: float | None = None
    last_capture: float | None = None


@dataclass
class _Batch:
    frames: list[Frame]
    images: np.ndarray | None = None
    transforms: list[Letterbox] = field(default_factory=list)
    output: np.ndarray | None = None


def gpu_preprocessor(backend: Backend, torch_device: str, trt_device: int, rect: bool) -> Any:
    """Letterbox + normalise on the GPU that runs the engine (uint8 frames cross PCIe, not floats)."""
    if backend.name not in ("tensorrt", "torch"):
        raise ConfigError(f"model.gpu_preprocess needs the tensorrt or torch backend (this model runs on "
                          f"{backend.name}); set gpu_preprocess: false")
    device = torch_device if backend.name == "torch" else f"cuda:{trt_device}"
    try:
        import torch
    except ModuleNotFoundError:
        raise ConfigError("model.gpu_preprocess needs PyTorch with CUDA: pip install torch") from None
    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise ConfigError(f"model.gpu_preprocess needs a CUDA device (got {device!r}, CUDA available: "
                          f"{torch.cuda.is_available()}); set gpu_preprocess: false")
    from vap_video.engines.gpu_preprocess import GpuPreprocessor

    info = backend.info
    return GpuPreprocessor(info.input_hw, info.stride, rect=rect, device=device)


class Pipeline:
    """One node's data path. `start()`, then `wait()` or `stop()`; streams can change while running."""

    def __init__(self, settings: Settings, backend: Backend | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._tuner: ThreadTuner | None = None
        if backend is None:
            kind = backend_kind(settings.model.path, settings.model.backend)
            backend = load_backend(settings.model.path, kind, **settings.model.backend_options(kind))
            self._tuner = thread_tuner_for(settings, backend, kind)   # intra_op_threads: 0 (auto)
        self.backend = backend
        if getattr(backend, "intra_op_threads", 0):
            self.metrics.engine_threads.set(backend.intra_op_threads)  # type: ignore[attr-defined]
        if self._tuner is not None:
            self._tuner.on_choice = self.metrics.engine_threads.set
        info = self.backend.info
        self.names = info.names
        self.metrics.info.info({"version": __version__, "backend": self.backend.name,
                                "model": str(settings.model.path.name),
                                "input": f"{info.input_hw[0]}x{info.input_hw[1]}", "precision": info.precision,
                                "layout": info.layout})   # "one-to-many+nms": the NMS fallback is in use
        b = settings.batch
        self.batcher = DeadlineBatcher(b.max_batch, b.max_delay_ms / 1000, b.stream_cap, self.metrics)
        rect = settings.model.rect and info.dynamic_hw
        self.preprocess = gpu_preprocessor(self.backend, settings.model.torch.device, settings.model.tensorrt.device,
                                           rect) if settings.model.gpu_preprocess else \
            BatchPreprocessor(info.input_hw, info.stride, rect=rect,
                              dtype=np.uint8 if info.input_dtype == "uint8" else np.float32)
        self._dehazers = StreamDehazers(self.metrics, info.input_hw)  # prep thread only
        self.postprocess = Postprocessor(info.names, settings.model.conf, settings.model.class_conf,
                                         settings.model.classes)
        settings.analytics.check_classes(self.names, where="analytics: ")
        for s in settings.streams:
            settings.stream_analytics(s).check_classes(self.names, where=f"streams.{s.name}.analytics: ")
        self.bus = EventBus([SinkRunner(build_sink(c), c.filter, self.metrics) for c in settings.sinks])
        # Decoders convert straight to the engine's letterbox size (one swscale pass) unless the
        # frames go to the GPU whole, or a consumer of the pixels needs them (see _needs_full_frames).
        self.decode_plan: DecodePlan | None = None if settings.model.gpu_preprocess else DecodePlan(info.input_hw)
        self.supervisor = Supervisor(self._emit, self.metrics, on_state=self._on_state, plan=self.decode_plan)
        self.hooks: list[ResultHook] = []
        # Called with every published batch of events, on the publishing thread (post or a decoder's
        # state change): must be quick and thread-safe (the console's event feed is one).
        self.listeners: list[EventListener] = []
        self.snapshots = Snapshotter(settings.snapshots, self.metrics) if settings.snapshots.enabled else None
        if self.snapshots is not None:
            self.hooks.append(self.snapshots)  # runs before the events are published: adds their paths
        self.annotator: AnnotatedVideos | None = None
        if settings.annotate.enabled:
            from vap_video.pipeline.annotate import AnnotatedVideos as _Videos

            inputs = {Path(s.url) for s in settings.streams if s.kind == "file" and "://" not in s.url}
            self.annotator = _Videos(settings.annotate.dir, self.names, settings.annotate.streams,
                                     analytics=self._analytics_of, avoid=inputs)
            self.hooks.append(self.annotator)

        self._lock = threading.Lock()
        self._streams: dict[str, _StreamEntry] = {}   # guarded by _lock
        self._states: dict[str, _StreamState] = {}     # post thread only
        self._to_remove: queue.SimpleQueue[tuple[str, str | None]] = queue.SimpleQueue()
        self._to_reconfigure: queue.SimpleQueue[tuple[str, StreamSettings]] = queue.SimpleQueue()
        self._q_infer: queue.Queue[_Batch | None] = queue.Queue(1)
        self._q_post: queue.Queue[_Batch | None] = queue.Queue(1)
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stopping = threading.Event()
        self._done = threading.Event()
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        stages = (("prep", self._prep_loop, self._q_infer), ("infer", self._infer_loop, self._q_post),
                  ("post", self._post_loop, None))
        for name, target, downstream in stages:
            t = threading.Thread(target=self._guard(target, downstream), name=f"vap-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self._started = True
        for s in self.settings.streams:
            self.add_stream(s)

    @property
    def ready(self) -> bool:
        """Engine loaded and data-path threads running (sources may still be connecting)."""
        return self._started and all(t.is_alive() for t in self._threads) and not self._stopping.is_set()

    def add_stream(self, cfg: StreamSettings, *, incarnation: int | None = None,
                   first_up: FirstUpHook | None = None) -> None:
        """Start a stream now. ValueError if the name is taken; ConfigError if its analytics name
        classes the engine does not have.

        For cluster workers: `incarnation` goes into the stream's track ids (`name:incarnation.n`);
        `first_up` is called with the stream's first `stream.up` event and returns the events to
        publish instead (a handover or gap report, measured at the first frame)."""
        self.settings.stream_analytics(cfg).check_classes(self.names, where=f"streams.{cfg.name}.analytics: ")
        with self._lock:
            entry = self._streams.get(cfg.name)
            if entry is not None and entry.removing:
                raise ValueError(f"stream {cfg.name!r} is still being removed; add it again in a moment")
            if entry is not None:
                raise ValueError(f"stream {cfg.name!r} already exists")
            self._streams[cfg.name] = _StreamEntry(cfg, incarnation=incarnation, first_up=first_up)
        self.batcher.add_stream(cfg.name, cfg.is_live, self.settings.queue_size_for(cfg))
        if self.decode_plan is not None:
            self.decode_plan.keep_full(cfg.name, self._needs_full_frames(cfg))
        try:
            self.supervisor.add(cfg)
        except Exception:
            self.batcher.remove_stream(cfg.name)
            with self._lock:
                self._streams.pop(cfg.name, None)
            raise
        if self._tuner is not None:
            self._tuner.rearm()   # more streams can make the engine the limit
        log.info("stream %s added (%s, %s)", cfg.name, redact_url(cfg.url), "live" if cfg.is_live else "file")

    def _needs_full_frames(self, cfg: StreamSettings) -> bool:
        """True when something reads this stream's pixels at source resolution: snapshots (event
        pictures and crops), annotated videos, the dehazing stage. The console asks for full
        frames itself, only while someone watches (`DecodePlan.want_full`)."""
        s = self.settings
        annotated = s.annotate.enabled and (s.annotate.streams is None or cfg.name in s.annotate.streams)
        return s.snapshots.enabled or annotated or s.stream_dehaze(cfg).enabled

    def remove_stream(self, name: str, timeout: float = 5.0, reason: str | None = None) -> None:
        """Stop a stream, release its decoder, close its tracks (track.end) and forget it. KeyError if unknown.

        `reason` (e.g. `handover`) goes on its `stream.down` and on every `track.end`.

        The name stays reserved until the post thread has closed the stream's tracks and removed
        its metric series, so a stream re-added under the same name never shares state with it.
        """
        with self._lock:
            entry = self._streams.get(name)
            if entry is None or entry.removing:
                raise KeyError(name)
            entry.removing = True
            entry.stop_reason = reason
        # Queue first: a file decoder blocked in put() is released at once and sees it must stop.
        self.batcher.remove_stream(name)
        self.supervisor.remove(name, timeout)
        with self._lock:
            entry.removed = True
        self._to_remove.put((name, reason))

    def publish(self, events: list[dict[str, Any]]) -> None:
        """Send events to the sinks (and listeners) as the pipeline's own: for cluster reports."""
        self._publish(events)

    def _analytics_of(self, name: str) -> Any:
        cfg = self.stream_config(name)
        return None if cfg is None else self.settings.stream_analytics(cfg)

    def update_analytics(self, name: str, analytics: AnalyticsConfig) -> StreamSettings:
        """Replace one stream's zones and lines while it runs; KeyError if unknown, ConfigError if
        they name classes the engine lacks. The post thread applies it before its next batch
        (see `StreamAnalytics.reconfigure`), so tracks keep their ids and lifecycle."""
        analytics.check_classes(self.names, where=f"streams.{name}.analytics: ")
        with self._lock:
            entry = self._streams.get(name)
            if entry is None or entry.removing:
                raise KeyError(name)
            new = entry.cfg.model_copy(update={"analytics": analytics})
            entry.cfg = new
        self._to_reconfigure.put((name, new))
        log.info("stream %s: analytics replaced (%d zones, %d lines)", name, len(analytics.zones),
                 len(analytics.lines))
        return new

    def streams(self) -> list[dict[str, Any]]:
        return self.supervisor.snapshot()

    def stream_config(self, name: str) -> StreamSettings | None:
        with self._lock:
            entry = self._streams.get(name)
            return None if entry is None or entry.removed else entry.cfg

    def _current(self) -> dict[str, _StreamEntry]:
        """The streams not removed (a stream being removed still counts until its decoder is gone)."""
        with self._lock:
            return {n: e for n, e in self._streams.items() if not e.removed}

    def files_done(self) -> bool:
        """True when there are streams, none is live, and every one was fully processed."""
        entries = list(self._current().values())
        if not entries or any(e.cfg.is_live for e in entries):
            return False
        return all(e.finalised for e in entries)

    def input_problems(self) -> dict[str, str]:
        """Streams whose input was not processed to its end, with the reason: files that failed
        (could not be opened or decoded) or were truncated. Decides the run's exit code."""
        out: dict[str, str] = {}
        for name in self.supervisor.names():
            try:
                w = self.supervisor.worker(name)
            except KeyError:  # removed meanwhile
                continue
            if w.failed:
                out[name] = f"failed: {w.failed}"
            elif w.truncated:
                out[name] = f"truncated: {w.truncated}"
        return out

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every file stream is fully processed (or `timeout`). True when done."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.files_done():
            if self.error is not None or self._done.is_set():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, timeout: float | None = None) -> bool:
        """Drain in-flight frames and flush sinks within `timeout` (default from config). True if clean."""
        if self._stopping.is_set():
            return self._done.wait(timeout or 0)
        timeout = self.settings.shutdown_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self._stopping.set()
        # Close the batcher first: it releases decoders blocked on a full file queue (they stop at
        # once), and next_batch still drains every frame already accepted before returning None.
        self.batcher.close()
        self.supervisor.stop_all(timeout=min(5.0, timeout / 2))
        clean = True
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
            clean &= not t.is_alive()
        if self.annotator is not None and not any(t.is_alive() for t in self._threads):
            self.annotator.close()  # the post thread has ended: nobody writes frames any more
        if self.snapshots is not None:
            self.snapshots.close(max(0.5, deadline - time.monotonic()))
        clean &= self.bus.close(max(0.5, deadline - time.monotonic()))
        if self._tuner is not None:
            self._tuner.abandon()   # a trial session still open is closed too
        self.backend.close()
        self._done.set()
        return clean

    # ------------------------------------------------------------------ decoder side
    def _emit(self, frame: Frame) -> bool:
        ok = self.batcher.put(frame)
        if ok:
            with self._lock:
                entry = self._streams.get(frame.stream)
                if entry is not None:
                    entry.emitted += 1
        return ok

    def _on_state(self, stream: str, state: str, reason: str) -> None:
        etype = _STATE_EVENTS.get(state)
        is_down = etype == "stream.down"
        hook = None
        with self._lock:
            entry = self._streams.get(stream)
            if entry is not None:
                if state in ("finished", "failed"):  # a failed file is done too: nothing more will come
                    entry.finished = True
                released = state == "stopped" and entry.stop_reason is not None
                if etype is not None:
                    if is_down and entry.down and not released:
                        return  # one stream.down per outage, not one per reconnect attempt
                    entry.down = is_down
                if released:   # e.g. handed over while it was down: say so, after the outage's own
                    reason = entry.stop_reason or reason
                if etype == "stream.up":
                    hook, entry.first_up = entry.first_up, None
        if etype is None:
            return
        events = [make_event(etype, stream, time.time(), state=state, reason=reason or None)]
        if hook is not None:
            try:
                events = hook(events[0])
            except Exception:  # a report must never cost the stream its stream.up
                log.exception("stream %s: the first stream.up hook failed", stream)
        self._publish(events)

    # ------------------------------------------------------------------ data path
    def _guard(self, fn: Callable[[], None], downstream: queue.Queue[_Batch | None] | None) -> Callable[[], None]:
        """Run a data-path stage; on a crash record the error and end the stages after it.

        The end marker lets the post thread still close open tracks (track.end) and exit, and
        `_put` makes the stages before the crash give up instead of blocking on a dead consumer.
        """
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # a data-path crash must be visible, not a silent dead thread
                log.exception("data path thread %s failed", threading.current_thread().name)
                self.error = exc
                self._done.set()
                if downstream is not None:
                    self._put(downstream, None, force=True)
        return run

    def _put(self, q: queue.Queue[_Batch | None], item: _Batch | None, force: bool = False) -> bool:
        """Hand a batch to the next stage; False when a stage has failed and nobody will take it."""
        while True:
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                if self.error is not None and not force:
                    return False
                me = threading.current_thread()
                if force and not any(t.is_alive() for t in self._threads if t is not me):
                    return False

    def _prep_loop(self) -> None:
        while True:
            frames = self.batcher.next_batch(timeout=0.2)
            self.metrics.queue_depth.labels("batcher").set(self.batcher.depth())
            if frames is None:
                break
            if not frames:
                if not self._put(self._q_infer, _Batch([])):  # lets post notice finished/removed streams
                    return
                continue
            t0 = time.perf_counter()
            if self._dehazers.streams():  # drop the dehaze state of removed streams, once per batch
                self._dehazers.prune(set(self._current()))
            pictures = [self._dehazed(f) for f in frames]
            if isinstance(self.preprocess, BatchPreprocessor):
                images, transforms = self.preprocess(pictures, [f.src_hw for f in frames])
            else:
                images, transforms = self.preprocess(pictures)
            # dehazed frames were shrunk to the engine size first; a no-op for frames that were not
            # (and for frames the decoder scaled: their transform already maps to source pixels)
            info_hw = self.backend.info.input_hw
            transforms = [lb if f.scaled else source_transform(lb, f.image, info_hw)
                          for lb, f in zip(transforms, frames)]
            self.metrics.stage_seconds.labels("preprocess").observe(time.perf_counter() - t0)
            if not self._put(self._q_infer, _Batch(frames, images, transforms)):
                return
        self._put(self._q_infer, None)

    def _dehazed(self, frame: Frame) -> np.ndarray:
        """The picture the engine sees: dehazed when the stream's dehaze stage is enabled and its gate is on."""
        cfg = self.stream_config(frame.stream)
        dehaze = None if cfg is None else self.settings.stream_dehaze(cfg)
        return self._dehazers.apply(frame.stream, frame.image, dehaze, owner=cfg, index=frame.index)

    def _infer_loop(self) -> None:
        """Run batches in order. A backend with several execution contexts (TensorRT's `submit`)
        gets up to that many batches in flight, so the copy-in of the next overlaps this one's run;
        a finished batch moves on at once, not when the next one arrives."""
        depth = int(getattr(self.backend, "contexts", 1)) if hasattr(self.backend, "submit") else 1
        pending: deque[tuple[_Batch, Any, list[float]]] = deque()

        def finish(batch: _Batch, output: np.ndarray | None, seconds: float) -> bool:
            if not batch.frames:                      # a tick for post (finished/removed streams): keeps its place
                return self._put(self._q_post, batch)
            batch.output = output
            self.metrics.inference_seconds.observe(seconds)
            self.metrics.stage_seconds.labels("inference").observe(seconds)
            self.metrics.batch_size.observe(len(batch.frames))
            batch.images = None
            return self._put(self._q_post, batch)

        def drain(keep: int) -> bool:
            """Hand on, in order, every finished batch at the front, and wait for the oldest while
            more than `keep` batches with frames are in flight."""
            while pending and (pending[0][1].done() or sum(1 for b, _, _ in pending if b.frames) > keep):
                batch, future, times = pending.popleft()
                output = future.result()
                # result() can return just before the done-callback has stamped the end time
                if not finish(batch, output, (times[1] or time.perf_counter()) - times[0]):
                    return False
            return True

        def submit(batch: _Batch) -> None:
            times = [time.perf_counter(), 0.0]
            future = self.backend.submit(batch.images)  # type: ignore[attr-defined]
            # the engine's own time, not the time this thread took to come back for the result
            future.add_done_callback(lambda _f: times.__setitem__(1, time.perf_counter()))
            pending.append((batch, future, times))

        while True:
            try:
                batch = self._q_infer.get(timeout=0.002 if pending else None)
            except queue.Empty:                      # only while batches are in flight
                futures_wait([pending[0][1]], timeout=0.01)
                if not drain(depth):
                    return
                continue
            if batch is None:
                break
            if not batch.frames and pending:          # in order behind the batches in flight, without waiting
                done: Future = Future()
                done.set_result(None)
                pending.append((batch, done, [0.0, 0.0]))
            elif not batch.frames:
                if not finish(batch, None, 0.0):
                    return
            elif depth > 1:
                submit(batch)
                if not drain(depth - 1):
                    return
            else:
                t0 = time.perf_counter()
                assert batch.images is not None  # every batch with frames was preprocessed
                output = self.backend.infer(batch.images)
                seconds = time.perf_counter() - t0
                if self._tuner is not None and not self._tuner.done:
                    self._tuner.observe(len(batch.frames), seconds)
                    self.backend = self._tuner.backend   # the next batch runs on the session it says
                if not finish(batch, output, seconds):
                    return
        if drain(0):
            self._put(self._q_post, None)

    def _post_loop(self) -> None:
        while True:
            batch = self._q_post.get()
            if batch is None:
                break
            self._drain_removals()
            self._drain_reconfigure()
            if batch.frames:
                self._process(batch)
            self._finalise_finished()
        self._drain_removals()
        # Shutdown: close every open track so consumers see track.end for what they saw start.
        now = time.time()
        for name in list(self._states):
            self._finish_stream(name, now)

    def _process(self, batch: _Batch) -> None:
        t0 = time.perf_counter()
        assert batch.output is not None  # the infer stage filled it (batches with frames only come here)
        dets_per_frame = self.postprocess(batch.output, batch.transforms)
        t1 = time.perf_counter()
        self.metrics.stage_seconds.labels("postprocess").observe(t1 - t0)
        events: list[dict[str, Any]] = []
        captures: list[float] = []  # capture time of each event's frame, for the latency histogram
        counts = np.zeros(len(self.names), dtype=np.int64)
        for frame, dets in zip(batch.frames, dets_per_frame):
            state = self._state_for(frame.stream)
            if state is None:  # stream removed while its frame was in flight: its series are gone too
                continue
            t = self._stream_time(state, frame)
            tracks = state.tracker.update(dets, t)
            new = state.analytics.update(tracks, t, frame.capture_ts, frame.shape)
            for e in new:  # which frame caused it: lets consumers find the picture in the video
                e["frame_index"] = frame.index
                if frame.pts is not None:
                    e["pts"] = round(frame.pts, 4)
            state.processed += 1
            if len(dets):
                counts += np.bincount(dets.class_ids, minlength=len(self.names))
            self.metrics.frames_processed.labels(frame.stream).inc()
            self.metrics.active_tracks.labels(frame.stream).set(state.tracker.active_count())
            for hook in self.hooks:
                hook(frame, dets, tracks, new)
            events.extend(new)
            captures.extend([frame.capture_ts] * len(new))
        t2 = time.perf_counter()
        self.metrics.stage_seconds.labels("tracking").observe(t2 - t1)
        for cls_id in np.nonzero(counts)[0]:
            self.metrics.detections.labels(self.names[cls_id]).inc(int(counts[cls_id]))
        self._publish(events)
        now = time.time()
        for ts in captures:
            self.metrics.event_latency.observe(now - ts)
        for frame in batch.frames:
            entry = self._streams.get(frame.stream)
            if frame.stream not in self._states or entry is None:
                continue
            self.metrics.frame_latency.labels(frame.stream).observe(now - frame.capture_ts)
            entry.latency.append(now - frame.capture_ts)

    def latency_percentiles(self) -> dict[str, tuple[float, float]]:
        """Per stream (p50, p95) of recent capture-to-done latency in seconds."""
        out = {}
        with self._lock:
            windows = {name: list(e.latency) for name, e in self._streams.items()}
        for name, window in windows.items():
            values = np.array(window)
            if values.size:
                out[name] = (float(np.percentile(values, 50)), float(np.percentile(values, 95)))
        return out

    def _publish(self, events: list[dict[str, Any]]) -> None:
        self.metrics.count_events(events)
        self.bus.publish(events)
        if events:
            for listener in self.listeners:
                listener(events)

    def _state_for(self, name: str) -> _StreamState | None:
        state = self._states.get(name)
        if state is None:
            cfg = self.stream_config(name)
            if cfg is None:
                return None
            entry = self._streams.get(name)
            state = _StreamState(cfg, make_tracker(self.settings.stream_tracker(cfg)),
                                 StreamAnalytics(name, self.settings.stream_analytics(cfg), self.names,
                                                 entry.incarnation if entry is not None else None))
            self._states[name] = state
        return state

    @staticmethod
    def _stream_time(state: _StreamState, frame: Frame) -> float:
        """Monotonic stream time for the tracker: PTS deltas, capture-time deltas when PTS jumps back or far."""
        if state.last_t is None:
            t = 0.0
        else:
            dt = None
            if frame.pts is not None and state.last_pts is not None:
                d = frame.pts - state.last_pts
                if 0 < d < 10:
                    dt = d
            if dt is None:
                dt = max(1e-3, frame.capture_ts - (state.last_capture or frame.capture_ts))
            t = state.last_t + dt
        state.last_t, state.last_pts, state.last_capture = t, frame.pts, frame.capture_ts
        return t

    def _finish_stream(self, name: str, capture_ts: float, reason: str | None = None) -> None:
        if self.annotator is not None:
            self.annotator.finish(name)
        state = self._states.pop(name, None)
        if state is not None:
            t = state.last_t or 0.0
            self._publish(state.analytics.finish(t, capture_ts, reason))

    def _drain_removals(self) -> None:
        """Finish removed streams: close their tracks, then drop every trace of them."""
        while True:
            try:
                name, reason = self._to_remove.get_nowait()
            except queue.Empty:
                return
            self._finish_stream(name, time.time(), reason)
            self.metrics.forget_stream(name)  # after the track.end/zone events, which touch its series
            with self._lock:
                self._streams.pop(name, None)  # the name is free again

    def _drain_reconfigure(self) -> None:
        """Apply analytics replaced through `update_analytics` (post thread: it owns the state)."""
        while True:
            try:
                name, cfg = self._to_reconfigure.get_nowait()
            except queue.Empty:
                return
            state = self._states.get(name)
            if state is None:   # no frame seen yet: _state_for builds it from the new config
                continue
            state.cfg = cfg
            self._publish(state.analytics.reconfigure(self.settings.stream_analytics(cfg), time.time()))

    def _finalise_finished(self) -> None:
        with self._lock:
            emitted = {n: e.emitted for n, e in self._streams.items()
                       if e.finished and not e.finalised and not e.removed}
        for name, count in emitted.items():
            state = self._states.get(name)
            processed = state.processed if state else 0
            if processed >= count:
                self._finish_stream(name, time.time())
                with self._lock:
                    entry = self._streams.get(name)
                    if entry is not None:
                        entry.finalised = True
