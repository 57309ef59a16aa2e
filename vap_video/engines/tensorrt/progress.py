"""Build progress and cancellation: TensorRT's progress monitor printing phases and steps, and a build
run on a worker thread that Ctrl-C stops cleanly (TensorRT is told to stop; nothing is written)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any




class BuildCancelled(Exception):
    """The user stopped the build (Ctrl-C); nothing was written."""


Shape4 = tuple[int, int, int, int]


class BuildProgress:
    """Prints the builder's phases and steps, at most about once a second per phase, and answers
    TensorRT's "continue?" with False once `cancel` is set (Ctrl-C).

    Plain Python so it is tested without TensorRT; `progress_monitor` wraps it in the TensorRT
    interface. TensorRT calls it from its own threads, hence the lock.
    """

    def __init__(self, log: Callable[[str], None] = print, cancel: threading.Event | None = None,
                 interval_s: float = 1.0, max_depth: int = 2) -> None:
        self.log = log
        self.cancel = cancel or threading.Event()
        self.interval_s = interval_s
        self.max_depth = max_depth
        self._phases: dict[str, tuple[int, int, float]] = {}  # name -> (depth, steps, start time)
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    def _stamp(self) -> str:
        s = int(time.monotonic() - self._t0)
        return f"[{s // 60:02d}:{s % 60:02d}]"

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with self._lock:
            depth = self._phases[parent_phase][0] + 1 if parent_phase in self._phases else 0
            self._phases[phase_name] = (depth, int(num_steps), time.monotonic())
            if depth < self.max_depth:
                self.log(f"{self._stamp()} {'  ' * depth}{phase_name} ({num_steps} steps)")

    def step_complete(self, phase_name: str, step: int) -> bool:
        with self._lock:
            depth, steps, _ = self._phases.get(phase_name, (0, 0, 0.0))
            now = time.monotonic()
            if depth < self.max_depth and steps > 1 and now - self._last.get(phase_name, 0.0) >= self.interval_s:
                self._last[phase_name] = now
                self.log(f"{self._stamp()} {'  ' * depth}{phase_name}: {step + 1}/{steps}")
        return not self.cancel.is_set()

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            depth, _, start = self._phases.pop(phase_name, (0, 0, time.monotonic()))
            self._last.pop(phase_name, None)
            if depth == 0:
                self.log(f"{self._stamp()} {phase_name} done in {time.monotonic() - start:.1f} s")


def progress_monitor(trt: Any, progress: BuildProgress) -> Any:
    """A `trt.IProgressMonitor` forwarding to `progress` (TensorRT >= 10)."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return progress.step_complete(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            progress.phase_finish(phase_name)

    return _Monitor()


def run_cancellable(fn: Callable[[], Any], cancel: threading.Event, log: Callable[[str], None] = print,
                    poll_s: float = 0.2) -> Any:
    """Run the blocking `fn` (TensorRT's build) in a worker thread so Ctrl-C reaches Python.

    The first Ctrl-C sets `cancel` (the progress monitor then tells TensorRT to stop at its next
    step) and waits for `fn` to return; a second Ctrl-C gives up waiting. Raises BuildCancelled
    after a cancel, re-raises an exception from `fn`.
    """
    box: dict[str, Any] = {}
    done = threading.Event()  # not Thread.join: a join interrupted by Ctrl-C can report a live thread as ended

    def work() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="trt-build", daemon=True).start()
    while not done.is_set():
        try:
            done.wait(poll_s)
        except KeyboardInterrupt:
            if cancel.is_set():
                raise BuildCancelled("build abandoned (second Ctrl-C)") from None
            cancel.set()
            log("Ctrl-C: stopping the build at TensorRT's next step (Ctrl-C again to abandon it)")
    if "error" in box:
        raise box["error"]
    if cancel.is_set():
        raise BuildCancelled("build cancelled; nothing was written")
    return box.get("result")
