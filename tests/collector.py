"""A thread-safe collecting `emit` and state log, shared by the source and supervisor tests."""

from __future__ import annotations

import threading
import time

from vap_video.pipeline.frames import Frame


class Collector:
    """A list-collecting emit plus a log of state changes, both thread-safe."""

    def __init__(self, delay: float = 0.0) -> None:
        self.frames: list[Frame] = []
        self.states: list[tuple[str, str, str]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def emit(self, frame: Frame) -> bool:
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.frames.append(frame)
        return True

    def on_state(self, stream: str, state: str, reason: str) -> None:
        with self.lock:
            self.states.append((stream, state, reason))

    def of(self, stream: str) -> list[Frame]:
        with self.lock:
            return [f for f in self.frames if f.stream == stream]

    def state_seq(self, stream: str) -> list[str]:
        with self.lock:
            return [s for n, s, _ in self.states if n == stream]

    def seq(self, stream: str) -> list[str]:
        """Alias used by the RTSP tests."""
        return self.state_seq(stream)

    def reasons(self, stream: str) -> list[str]:
        """The reason of each state change of `stream`, in order."""
        with self.lock:
            return [r for n, _, r in self.states if n == stream]
