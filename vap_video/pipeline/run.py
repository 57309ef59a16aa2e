"""Running a pipeline to its end: signals, drain, the exit code.

Its own module (not the CLI's) because `vap run`, `vap demo` and tests all run pipelines, and the
demo must not import the command line that dispatches to it. The exit codes are documented in the
README and in `vap_video/pipeline/cli.py`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vap_video.pipeline.config import ConfigError

if TYPE_CHECKING:   # for the annotation only; the pipeline's modules are imported when it runs
    from vap_video.pipeline.settings import Settings

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_MODEL, EXIT_INPUTS, EXIT_FORCED = 0, 1, 2, 3, 4, 130
EXIT_PIPE = 128 + signal.SIGPIPE

__all__ = ["run_pipeline", "EXIT_OK", "EXIT_FAIL", "EXIT_CONFIG", "EXIT_MODEL", "EXIT_INPUTS", "EXIT_FORCED",
           "EXIT_PIPE"]

log = logging.getLogger("vap")


def _forced_exit() -> None:
    """Exit 130 at once, from a signal handler: raw, non-blocking I/O only.

    The message goes out only if stderr can take it without blocking (a full pipe would hold the
    exit hostage); a low-level thread (no Python locks, which the interrupted main thread may
    hold) ends the process anyway should the write still block.
    """
    import _thread
    import select

    def _exit_soon() -> None:
        time.sleep(0.5)
        os._exit(EXIT_FORCED)

    _thread.start_new_thread(_exit_soon, ())
    message = b"\nforced exit: events still in flight may be lost\n"
    try:
        poller = select.poll()
        poller.register(2, select.POLLOUT)
        if any(ev & select.POLLOUT and not ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0)):
            os.write(2, message)
    except OSError:
        pass
    os._exit(EXIT_FORCED)


def run_pipeline(settings: Settings, quiet: bool = False, duration: float | None = None,
                 prepare: Callable[[Any], None] | None = None, on_done: Callable[[Any], None] | None = None) -> int:
    """Run until files are done, `duration` passes, or SIGINT/SIGTERM; then drain and flush.

    `prepare` gets the pipeline before its first frame (to install result hooks); `on_done` gets
    the stopped pipeline (for summaries).
    """
    from vap_video.pipeline.api import ApiServer
    from vap_video.pipeline.progress import Progress
    from vap_video.pipeline.runtime import Pipeline

    pipeline = Pipeline(settings)
    if prepare:
        prepare(pipeline)
    server = None
    if settings.server.enabled:
        try:
            server = ApiServer(pipeline, settings.server.host, settings.server.port)
        except ConfigError:
            pipeline.stop(timeout=2)  # release the sinks it opened
            raise
        server.start()
        log.info("console on %s/ (also /metrics /healthz /readyz /streams)%s", server.url,
                 "" if server.token else f"; no API token: set ${settings.server.token_env} to require one")
    stop = threading.Event()
    signals: dict[str, Any] = {"count": 0, "first": None}

    def on_signal(signum: int, _frame: object) -> None:
        # No buffered I/O in here: the handler runs between two bytecodes of the main thread, which
        # may be inside a write to stderr (a log line, the progress line) blocked on a slow pipe.
        # Printing or logging from here then fails with "reentrant call" (and logging swallows
        # it), so a second signal was lost and the drain ended with 0 instead of 130.
        signals["count"] += 1
        if signals["count"] > 1:
            _forced_exit()
        signals["first"] = signum
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    progress = None if quiet else Progress(pipeline)
    deadline = None if duration is None else time.monotonic() + duration
    try:
        pipeline.start()
        while not stop.is_set():
            if pipeline.error is not None or pipeline.files_done():
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if progress:
                progress.tick()
            stop.wait(0.2)
        if signals["first"] is not None:
            log.info("%s received: draining (send it again, or Ctrl-C, to force)",
                     signal.Signals(signals["first"]).name)
    finally:
        problems = pipeline.input_problems()  # before stop(): it moves every stream to 'stopped'
        clean = pipeline.stop()
        if progress:
            progress.close()
        if server:
            server.close()
        for s, h in old.items():
            signal.signal(s, h)
        if on_done:
            on_done(pipeline)
    if pipeline.error is not None:
        print(f"error: data path failed: {pipeline.error}", file=sys.stderr)
        return EXIT_FAIL
    if not clean:
        print("error: shutdown deadline passed before every event was delivered", file=sys.stderr)
        return EXIT_FAIL
    if problems:
        for name, why in problems.items():
            print(f"input {name}: {why}", file=sys.stderr)
        print(f"finished; {len(problems)} input(s) not processed to their end (exit {EXIT_INPUTS})",
              file=sys.stderr)
        return EXIT_INPUTS
    return EXIT_OK
