"""What a training run shows while it runs: a live bar per epoch on a terminal, one line per epoch in a log.

Why two modes: on a terminal the user wants the loss falling, img/s and an ETA inside an epoch;
in a log file (nohup, CI, a scheduler's capture) a redrawn bar is a wall of control codes, so
there it prints only the per-epoch summary line (and ``log_every`` lines when asked). The bar uses
``rich`` when it is installed (part of the ``train`` extra); without it, or without a terminal,
the plain lines are all there is, with the same numbers.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["TrainProgress", "format_duration"]

LOSS_SUFFIXES = ("_box", "_cls", "_reg")


def format_duration(seconds: float) -> str:
    """h:mm:ss (or m:ss under an hour) for ETAs."""
    s = max(int(round(seconds)), 0)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class TrainProgress:
    """Per-epoch progress of one process (rank 0). ``live`` defaults to "stdout is a terminal"."""

    def __init__(self, epochs: int, start_epoch: int = 0, out: TextIO | None = None, live: bool | None = None,
                 log_every: int = 0) -> None:
        self.out = out or sys.stdout
        self.epochs, self.first_epoch, self.log_every = epochs, start_epoch, log_every
        self.live = _isatty(self.out) if live is None else live
        self._bar: Any = None
        self._task: Any = None
        self._epoch_times: list[float] = []
        self._t0 = time.perf_counter()
        self._epoch = 0
        self._iters = 0
        if self.live:
            try:
                from rich.console import Console
            except ImportError:
                self.live = False
            else:
                self.console = Console(file=self.out, force_terminal=True, highlight=False)

    # ---- one epoch

    def start_epoch(self, epoch: int, iters: int) -> None:
        """Epoch `epoch` (0-based) of `iters` iterations begins."""
        self._epoch, self._iters, self._t0 = epoch, iters, time.perf_counter()
        if not self.live:
            return
        self._bar = _bar(self.console)
        self._bar.start()
        self._task = self._bar.add_task(f"epoch {epoch + 1}/{self.epochs}", total=iters, speed="", losses="")

    def update(self, i: int, losses: dict[str, float], images: int) -> None:
        """After iteration i (0-based): running mean losses of this epoch and images seen so far."""
        elapsed = time.perf_counter() - self._t0
        rate = images / elapsed if elapsed > 0 else 0.0
        eta = elapsed / (i + 1) * (self._iters - i - 1)
        loss_text = " ".join(f"{k} {v:.3f}" for k, v in losses.items() if k.endswith(LOSS_SUFFIXES))
        speed = f"{rate:.1f} img/s  ETA {format_duration(eta)} (run {format_duration(self.run_eta(eta))})"
        if self._bar is not None:
            self._bar.update(self._task, completed=i + 1, speed=speed, losses=loss_text)
        elif self.log_every and (i + 1) % self.log_every == 0:
            self._print(f"  epoch {self._epoch + 1} iter {i + 1}/{self._iters} {loss_text} | {speed}")

    def run_eta(self, epoch_left_s: float) -> float:
        """Seconds left in the run: this epoch's rest plus the later epochs at the mean epoch time so far
        (this epoch's pace until one has finished)."""
        later = self.epochs - self._epoch - 1
        if self._epoch_times:
            per = sum(self._epoch_times) / len(self._epoch_times)
        else:
            per = time.perf_counter() - self._t0 + epoch_left_s
        return epoch_left_s + later * per

    def end_epoch(self, summary: str) -> None:
        """The epoch's training part ended (`summary`: its one line, after validation)."""
        self._epoch_times.append(time.perf_counter() - self._t0)
        self.close()
        self._print(summary)

    def stop_training_part(self) -> None:
        """The iterations are done (validation follows): freeze the bar where it is."""
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _bar(console: Any) -> Any:
    """A two-line rich progress display: the bar with speed and ETAs, then the running losses
    (folded onto more lines on a narrow terminal rather than cut)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class TwoLine(Progress):
        def get_renderables(self):
            yield self.make_tasks_table(self.tasks)
            for task in self.tasks:
                yield Text("  " + str(task.fields.get("losses", "")), overflow="fold")

    return TwoLine(TextColumn("{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.fields[speed]}"), console=console, transient=False,
                   refresh_per_second=4)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
