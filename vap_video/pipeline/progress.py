"""Live terminal progress for long runs: per-stream state, fps, drops and latency, once a second."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from vap_video.pipeline.runtime import Pipeline


class Progress:
    """Redraws a small table in place on a terminal; prints a line every 10 s when piped."""

    def __init__(self, pipeline: Pipeline, out: TextIO = sys.stderr) -> None:
        self.pipeline = pipeline
        self.out = out
        self.tty = out.isatty()
        self.period = 1.0 if self.tty else 10.0
        self._last = 0.0
        self._lines = 0

    def render(self) -> list[str]:
        rows = [f"{'stream':<16} {'state':<10} {'fps':>6} {'frames':>8} {'dropped':>8} {'p50 ms':>7} {'p95 ms':>7}"]
        lat = self.pipeline.latency_percentiles()
        for s in self.pipeline.streams():
            p50, p95 = lat.get(s["name"], (float("nan"), float("nan")))
            rows.append(f"{s['name'][:16]:<16} {s['state']:<10} {s.get('fps', 0):>6.1f} {s.get('frames', 0):>8} "
                        f"{s.get('drops', 0):>8} {p50 * 1e3:>7.0f} {p95 * 1e3:>7.0f}")
        return rows

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last < self.period:
            return
        self._last = now
        rows = self.render()
        if self.tty:
            if self._lines:
                self.out.write(f"\x1b[{self._lines}F\x1b[J")
            self.out.write("\n".join(rows) + "\n")
            self._lines = len(rows)
        else:
            self.out.write(" | ".join(rows[1:]) + "\n")
        self.out.flush()

    def close(self) -> None:
        self._last = 0.0
        self.tick()
