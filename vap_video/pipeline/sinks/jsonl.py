"""JSONL sink: events appended to a local file as JSON lines, rotated by size.

Durability: every batch of events is handed to the OS (unbuffered write) before the next batch (a
crash of the vap process loses nothing already written). `fsync` decides power-loss safety:
`always` (fsync per batch), `interval` (at most `fsync_interval_s` of events at risk; default) or
`never`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from vap_video.pipeline.config import ConfigError
from vap_video.pipeline.sinks.base import Sink, SinkConfigBase, SinkKind
from vap_video.pipeline.sinks.spool import SpoolConfig

log = logging.getLogger("vap.sinks.jsonl")


class JsonlSinkConfig(SinkConfigBase):
    """Append events as JSON lines; rotate by size."""

    type: Literal["jsonl"] = Field("jsonl", description="Sink kind")
    path: Path = Field(Path("events/events.jsonl"), description="File to append to; rotated files sit next to it")
    rotate_mb: float = Field(100.0, gt=0, description="Rotate when the file passes this size")
    max_files: int | None = Field(None, ge=1, description="Delete the oldest rotated files beyond this count "
                                  "(None keeps all: vap never deletes events unless told to)")
    fsync: Literal["always", "interval", "never"] = Field(
        "interval", description="Power-loss safety: fsync every batch, every fsync_interval_s, or never")
    fsync_interval_s: float = Field(1.0, gt=0, description="With fsync=interval: most seconds of events at risk")
    spool: SpoolConfig = Field(default_factory=lambda: SpoolConfig(enabled=False),
                               description="Disk spool (off: the file is local, a failed write is retried in place)")


class JsonlSink(Sink):
    """Appends with unbuffered `os.write` and knows the file's size: a write that fails half-way
    (disk full) is cut back to the last whole batch, so the retry neither duplicates events nor
    leaves a torn line in the middle of the file."""

    def __init__(self, cfg: JsonlSinkConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.path = Path(cfg.path)
        self._fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:
            raise ConfigError(f"sinks: {cfg.name} cannot write {self.path} ({exc.strerror}); "
                              "choose a writable path") from None
        self._last_sync = time.monotonic()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(self._fd).st_size
        if size:  # a line torn by an earlier crash: end it, so the next event starts on its own line
            with open(self.path, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    os.write(self._fd, b"\n")
                    size += 1
        self._size = size

    def write(self, events: list[dict[str, Any]]) -> None:
        if self._fd is None:
            self._open()
        fd = self._fd
        assert fd is not None
        data = "".join(json.dumps(e, separators=(",", ":"), ensure_ascii=False) + "\n" for e in events).encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            try:
                os.ftruncate(fd, self._size)  # no half batch behind: the retry writes it whole, once
            except OSError as exc:
                log.error("sink %s: could not cut a failed write back (%s)", self.name, exc)
            raise
        self._size += len(data)
        now = time.monotonic()
        if self.cfg.fsync == "always" or (
                self.cfg.fsync == "interval" and now - self._last_sync >= self.cfg.fsync_interval_s):
            os.fsync(fd)
            self._last_sync = now
        if self._size >= self.cfg.rotate_mb * 1e6:
            self._rotate()

    def _rotate(self) -> None:
        """Move the full file aside. A failure (disk full, permissions) is logged and writing goes on
        in the current file: rotation is housekeeping, losing events over it is not acceptable."""
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        try:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            self.path.rename(self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}"))
            if self.cfg.max_files is not None:
                rotated = sorted(self.path.parent.glob(f"{self.path.stem}-*{self.path.suffix}"))
                for old in rotated[: max(0, len(rotated) - self.cfg.max_files)]:
                    old.unlink()
        except OSError as exc:
            log.error("sink %s: rotating %s failed (%s); still appending to it", self.name, self.path, exc)
        finally:
            self._open()

    def close(self) -> None:
        if self._fd is not None:
            if self.cfg.fsync != "never":
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


KIND = SinkKind(JsonlSinkConfig, JsonlSink)
