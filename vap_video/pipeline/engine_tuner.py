"""Intra-op threads of a CPU engine, chosen by trying them in the running pipeline.

Why in the pipeline and not by timing the engine alone at start-up: the best count depends on the
model and on what else runs on the cores, and the engine alone does not see the second part. On
the 2-core VM (benchmarks/pipeline.md) the shipped small model (3-7 ms per image) runs the
pipeline fastest with 1 engine thread, because the other core decodes and a second ONNX Runtime
thread spinning against the decoders made the pipeline 1.2-2x slower, although the engine alone
was faster with 2. A standard n-scale model at 640 (45 ms per image) runs the pipeline 1.8x faster
with 2 threads, because decoding is then a small share. Neither `cores - 1` nor `cores` suits both,
and a start-up benchmark of the engine alone picks 2 for both.

So, with `intra_op_threads: 0`, the pipeline starts with one thread per core but one and, once
the engine is the limit (busy for most of a window), runs one window with one thread per core,
keeps whichever processed more frames per second (the trial must win by `MARGIN`), and closes
the other session. One trial per run. When the engine is not the limit, threads make no
difference to throughput and no trial is made; adding a stream then starts the watch again,
since more cameras can make the engine the limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vap_video.engines.backends import Backend, load_backend
from vap_video.pipeline.model_config import engine_threads, usable_cores
from vap_video.pipeline.settings import Settings

log = logging.getLogger("vap.engine")

WARMUP_S = 1.0      # first seconds not measured: sessions warm up, decoders fill the queues
WINDOW_S = 3.0      # wall seconds per measured window
SATURATED = 0.8     # the engine is the limit when busy for at least this share of a window
MARGIN = 1.05       # the trial must process this much faster to be kept (noise on shared machines)


@dataclass
class Window:
    """Frames and engine-busy seconds over one stretch of wall time."""

    start: float
    frames: int = 0
    busy_s: float = 0.0

    def rate(self, now: float) -> float:
        return self.frames / max(1e-9, now - self.start)

    def busy(self, now: float) -> float:
        return self.busy_s / max(1e-9, now - self.start)


class ThreadTuner:
    """Driven by the engine thread: `observe` after every batch, `backend` for the next one.

    `make(threads)` opens the model with that many intra-op threads (called on a helper thread,
    so the pipeline keeps running while the trial session loads and warms up).
    """

    def __init__(self, backend: Backend, threads: int, trial_threads: int, make: Callable[[int], Backend],
                 on_choice: Callable[[int], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 warmup_s: float = WARMUP_S, window_s: float = WINDOW_S) -> None:
        self.backend = backend
        self.threads = threads
        self._base_threads = threads
        self._trial_threads = trial_threads
        self._make = make
        self.on_choice = on_choice
        self._clock = clock
        self._window_s = window_s
        self._begun: float | None = None   # the first batch
        self._warmup_s = warmup_s
        self._phase = "warmup"      # warmup -> base -> loading -> trial -> done
        self._window: Window | None = None
        self._base_rate = 0.0
        self._base: Backend | None = None
        self._trial: Backend | None = None
        self._loader: threading.Thread | None = None
        self.decision = ""          # one line, for the log and `vap bench`
        self._tried = False

    @property
    def done(self) -> bool:
        return self._phase == "done"

    def observe(self, frames: int, busy_s: float) -> None:
        """One batch ran on `self.backend`: `frames` frames in `busy_s` seconds of engine time."""
        now = self._clock()
        if self._phase == "warmup":
            if self._begun is None:
                self._begun = now
            elif now - self._begun >= self._warmup_s:
                self._phase, self._window = "base", Window(now)
            return
        if self._phase == "loading":
            if self._loader is not None and not self._loader.is_alive():
                self._start_trial(now)
            return
        if self._phase not in ("base", "trial") or self._window is None:
            return
        w = self._window
        w.frames += frames
        w.busy_s += busy_s
        if now - w.start < self._window_s:
            return
        if self._phase == "base":
            self._end_base(w, now)
        else:
            self._end_trial(w, now)

    def _end_base(self, w: Window, now: float) -> None:
        if w.busy(now) < SATURATED:
            self._finish(f"the engine is not the limit (busy {w.busy(now):.0%} of {now - w.start:.1f} s): "
                         f"{self.threads} intra-op thread(s) kept, no trial")
            return
        self._base_rate = w.rate(now)
        self._tried = True
        self._phase = "loading"
        self._loader = threading.Thread(target=self._load, name="engine-trial", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        try:
            self._trial = self._make(self._trial_threads)
        except Exception as exc:  # any failure only ends the trial; the base session runs on
            log.warning("engine thread trial: could not open the model with %d threads (%s)",
                        self._trial_threads, exc)

    def _start_trial(self, now: float) -> None:
        if self._trial is None:
            self._finish(f"{self.threads} intra-op thread(s) kept (the trial session did not open)")
            return
        self._base, self.backend = self.backend, self._trial
        self._phase = "trial"
        # the batch in flight when the swap happens ran on the old session: start counting at the next
        self._window = Window(now)

    def _end_trial(self, w: Window, now: float) -> None:
        """Keep the faster session and close the other. `observe` runs after a batch has
        returned, so no batch is running on either session here."""
        assert self._base is not None and self._trial is not None
        rate = w.rate(now)
        if rate >= MARGIN * self._base_rate:
            loser, self.threads = self._base, self._trial_threads
        else:
            loser, self.backend = self._trial, self._base
        self._base = self._trial = None
        loser.close()
        self._finish(f"{self._trial_threads} intra-op threads: {rate:.1f} frames/s, {self._base_threads}: "
                     f"{self._base_rate:.1f}; keeping {self.threads}")

    def rearm(self) -> None:
        """A stream was added: if no trial was made (the engine was not the limit), watch again.
        Called from any thread; the engine thread only reads the phase."""
        if self._phase == "done" and not self._tried:
            self._begun, self._window = None, None
            self._phase = "warmup"

    def abandon(self) -> None:
        """The pipeline stops: end any trial, close every session but the current one."""
        if self._loader is not None:
            self._loader.join(30.0)   # a session being opened: wait for it, so it can be closed
        for b in (self._base, self._trial):
            if b is not None and b is not self.backend:
                b.close()
        self._base = self._trial = None
        self._phase = "done"

    def _finish(self, decision: str) -> None:
        self._phase = "done"
        self.decision = decision
        log.info("engine threads: %s", decision)
        if self.on_choice is not None:
            self.on_choice(self.threads)


def thread_tuner_for(settings: Settings, backend: Backend, kind: str) -> ThreadTuner | None:
    """A tuner when the threads are the pipeline's to choose: ONNX Runtime on the CPU with
    `intra_op_threads: 0`, and a core left over for a trial."""
    opts = settings.model.onnxruntime
    base = engine_threads()
    if kind != "onnxruntime" or opts.intra_op_threads or getattr(backend, "device", "cpu") != "cpu":
        return None
    if base + 1 > usable_cores():
        return None
    model = settings.model
    batch = settings.batch.max_batch

    def make(threads: int) -> Backend:
        trial = load_backend(model.path, kind, announce=False,
                             **{**model.backend_options(kind), "intra_op_threads": threads})
        info = trial.info   # one warm-up batch, so the trial's first window is not its first run
        dtype = np.uint8 if info.input_dtype == "uint8" else np.float32
        trial.infer(np.zeros((batch, 3, *info.input_hw), dtype=dtype))
        return trial

    return ThreadTuner(backend, base, base + 1, make)


__all__ = ["thread_tuner_for", "MARGIN", "SATURATED", "WINDOW_S", "ThreadTuner", "Window"]
