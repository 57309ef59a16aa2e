"""A bounded, crash-safe FIFO of events on local disk: where a sink's events wait while its broker is down.

Why a spool: delivery is at least once, so an event a sink could not deliver (yet) must neither be
lost nor hold up the pipeline. `SinkRunner.offer` appends every accepted batch here (from the
pipeline's thread, under the runner's lock) and the sink thread delivers from the head, oldest
first, acknowledging what the broker confirmed; the spool outlives a restart of vap. Appends use
unbuffered `os.write`: a failed one (disk full) is cut back to the segment's last known size and
raised, so the caller counts exactly those events as lost.

Layout: a directory of append-only segment files `seg-<n>.jsonl` (one JSON line per entry:
`{"t": append time, "e": event}`) and `cursor.json`, the read position (segment, byte offset),
replaced atomically after each acknowledged batch. A crash can therefore replay a batch that was
delivered but not yet acknowledged (a duplicate, which consumers drop by event id), never skip one.
A line torn by a crash at the end of a segment is cut off at open, undecodable lines are skipped,
and a cursor that points past the repaired data (power loss without fsync) restarts that segment
from its beginning; what the repair cuts is counted in `dropped`.

Bounded by `max_mb`. When full, an explicit policy decides: `drop_oldest` deletes the oldest
segment (keeps what is happening now; the usual choice for alerts) or `drop_newest` refuses new
events. Either way every lost event is counted (`vap_spool_dropped_total`) and logged.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from vap_video.pipeline.config import ConfigError, Strict

log = logging.getLogger("vap.spool")


class SpoolConfig(Strict):
    """Local disk spool for events a sink could not deliver (at-least-once while the broker is down)."""

    enabled: bool = Field(True, description="Spool undelivered events on disk and replay them in order")
    dir: Path | None = Field(None, description="Spool directory (default: spool/<sink name> under the working dir); "
                             "must be private to this sink")
    max_mb: float = Field(256.0, gt=0, description="Most disk space the spool may use")
    policy: Literal["drop_oldest", "drop_newest"] = Field(
        "drop_oldest", description="When full: delete the oldest spooled events, or refuse new ones (counted)")
    segment_mb: float = Field(8.0, gt=0, description="Size of one spool file; the unit that drop_oldest deletes")
    fsync: bool = Field(False, description="fsync every append (power-loss safe, slower); a crash of vap alone "
                        "loses nothing either way")
    replay_batch: int = Field(500, ge=1, description="Events per delivery attempt when replaying")


@dataclass
class _Segment:
    seq: int
    path: Path
    size: int
    count: int  # entries not yet acknowledged


@dataclass(frozen=True)
class SpoolPosition:
    """Where reading stopped after a `peek`; pass it to `ack` once those entries are delivered."""

    seq: int
    offset: int
    count: int


class Spool:
    """FIFO of JSON-serialisable events on disk. Not thread-safe: one sink thread owns it."""

    CURSOR = "cursor.json"

    def __init__(self, directory: Path, max_bytes: int, policy: str = "drop_oldest",
                 segment_bytes: int = 8 << 20, fsync: bool = False) -> None:
        if policy not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"spool policy must be drop_oldest or drop_newest, got {policy!r}")
        self.dir = Path(directory)
        self.max_bytes = int(max_bytes)
        self.policy = policy
        # At least 4 segments fit, so drop_oldest never throws away most of the spool at once.
        self.segment_bytes = max(1024, min(int(segment_bytes), self.max_bytes // 4 or 1))
        self.fsync = fsync
        self.dropped = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"spool directory {self.dir} is not writable ({exc.strerror}); "
                              "set spool.dir to a writable path or spool.enabled: false") from None
        # One owner per directory: two writers would interleave segments and fight over the cursor.
        self._lock_fh = open(self.dir / ".lock", "a+")
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_fh.close()
            raise ConfigError(f"spool directory {self.dir} is already in use by another sink or vap process; "
                              "give each sink its own spool.dir") from None
        self._segments: list[_Segment] = []
        self._read_seq, self._read_off = 0, 0
        self._fd: int | None = None
        self._fd_path: Path | None = None
        self._oldest_t: float | None = None
        self._open()

    # ------------------------------------------------------------------ state
    def _open(self) -> None:
        cursor = self.dir / self.CURSOR
        if cursor.exists():
            try:
                c = json.loads(cursor.read_text("utf-8"))
                self._read_seq, self._read_off = int(c["seq"]), int(c["offset"])
            except (ValueError, KeyError, TypeError):
                log.error("spool %s: unreadable cursor; replaying every remaining segment from its start", self.dir)
        for path in sorted(self.dir.glob("seg-*.jsonl"), key=lambda p: int(p.stem[4:])):
            seq = int(path.stem[4:])
            if seq < self._read_seq:  # fully acknowledged before a crash
                path.unlink()
                continue
            start = self._read_off if seq == self._read_seq else 0
            count, start = self._count_and_repair(path, start)
            if seq == self._read_seq:
                self._read_off = start
            self._segments.append(_Segment(seq, path, path.stat().st_size, count))
        if self._segments and self._segments[0].seq != self._read_seq:
            self._read_seq, self._read_off = self._segments[0].seq, 0
        if self._segments:
            log.info("spool %s: %d events from a previous run to replay", self.dir, len(self))

    def _count_and_repair(self, path: Path, start: int) -> tuple[int, int]:
        """Count complete entries after `start`; cut a torn last line (crash in the middle of a write).

        Returns (entries after the read position, the read position to use). After a power loss
        without fsync the cursor can point past the end of the repaired file or into the middle of
        a line (the cursor reached the disk, the data it refers to did not): then the segment is
        re-read from its start (duplicates, never a skipped event). Undecodable lines are skipped
        and counted in `dropped`, so one bad line cannot hide the entries after it.
        """
        with open(path, "rb") as fh:
            data = fh.read()
        good_end = data.rfind(b"\n") + 1
        if good_end < len(data):
            log.warning("spool %s: cutting %d bytes of a torn entry", path, len(data) - good_end)
            self.dropped += 1
            with open(path, "r+b") as fh:
                fh.truncate(good_end)
            data = data[:good_end]
        if start > len(data) or (start > 0 and data[start - 1:start] != b"\n"):
            log.error("spool %s: read position %d is not at an entry boundary of the %d-byte file (power loss "
                      "without fsync?); replaying the file from its start", path, start, len(data))
            start = 0
        count, pos = 0, 0
        while pos < len(data):
            nl = data.index(b"\n", pos)
            if pos >= start:
                if _decode(data[pos:nl]) is None:
                    self.dropped += 1
                    log.error("spool %s: skipping an undecodable entry at byte %d", path, pos)
                else:
                    count += 1
            pos = nl + 1
        return count, start

    def __len__(self) -> int:
        return sum(s.count for s in self._segments)

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    def oldest_age(self, now: float | None = None) -> float:
        """Seconds the oldest unacknowledged entry has waited (0 when empty)."""
        if not len(self):
            self._oldest_t = None
            return 0.0
        if self._oldest_t is None:
            entries, _ = self._read(1)
            self._oldest_t = entries[0][0] if entries else None
        return max(0.0, (now or time.time()) - self._oldest_t) if self._oldest_t else 0.0

    # ------------------------------------------------------------------ writing
    def append(self, events: list[dict[str, Any]]) -> int:
        """Add events at the tail. Returns how many were dropped to respect the size bound."""
        if not events:
            return 0
        now = round(time.time(), 3)
        lines = [json.dumps({"t": now, "e": e}, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
                 for e in events]
        need = sum(len(x) for x in lines)
        dropped = 0
        if self.size_bytes + need > self.max_bytes:
            if self.policy == "drop_newest":
                room = self.max_bytes - self.size_bytes
                keep = 0
                while keep < len(lines) and len(lines[keep]) <= room:
                    room -= len(lines[keep])
                    keep += 1
                dropped = len(lines) - keep
                lines = lines[:keep]
            else:
                while self._segments and self.size_bytes + need > self.max_bytes:
                    dropped += self._drop_oldest_segment()
        if dropped:
            self.dropped += dropped
            log.error("spool %s is full (%.1f MB): %d events dropped by policy %s",
                      self.dir, self.max_bytes / 1e6, dropped, self.policy)
        if not lines:
            return dropped
        tail = self._tail()
        data = b"".join(lines)
        fd = self._writer(tail)
        try:
            view = memoryview(data)
            while view:  # os.write: no user-space buffer whose failed flush could leave half a batch behind
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        except OSError:
            # Disk full or gone: put the file back to its last known size so a half-written batch
            # neither replays nor shifts the counts; the caller counts these events as lost.
            try:
                os.ftruncate(fd, tail.size)
            except OSError as exc:
                log.error("spool %s: could not cut a failed write back (%s)", tail.path, exc)
            raise
        tail.size += len(data)
        tail.count += len(lines)
        return dropped

    def _tail(self) -> _Segment:
        if not self._segments or self._segments[-1].size >= self.segment_bytes:
            seq = self._segments[-1].seq + 1 if self._segments else max(self._read_seq, 1)
            if not self._segments:
                self._read_seq, self._read_off = seq, 0
            self._segments.append(_Segment(seq, self.dir / f"seg-{seq:09d}.jsonl", 0, 0))
        return self._segments[-1]

    def _writer(self, seg: _Segment) -> int:
        if self._fd is None or self._fd_path != seg.path:
            self._close_writer()
            self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._fd_path = seg.path
        return self._fd

    def _close_writer(self, sync: bool = False) -> None:
        if self._fd is not None:
            try:
                if sync:
                    os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd, self._fd_path = None, None

    def _drop_oldest_segment(self) -> int:
        seg = self._segments.pop(0)
        if self._fd_path == seg.path:
            self._close_writer()
        seg.path.unlink(missing_ok=True)
        self._oldest_t = None
        if self._segments:
            self._read_seq, self._read_off = self._segments[0].seq, 0
        else:
            self._read_seq, self._read_off = seg.seq + 1, 0
        self._save_cursor()
        return seg.count

    # ------------------------------------------------------------------ reading
    def peek(self, n: int) -> tuple[list[dict[str, Any]], SpoolPosition]:
        """Up to `n` oldest events, without removing them, and the position after the last one."""
        entries, pos = self._read(n)
        return [e for _, e in entries], pos

    def peek_each(self, n: int) -> list[tuple[dict[str, Any], SpoolPosition]]:
        """Like `peek`, with the position after each event (to acknowledge a delivered prefix)."""
        positions: list[SpoolPosition] = []
        entries, _ = self._read(n, positions)
        return [(e, p) for (_, e), p in zip(entries, positions)]

    def _read(self, n: int, positions: list[SpoolPosition] | None = None
              ) -> tuple[list[tuple[float, dict[str, Any]]], SpoolPosition]:
        out: list[tuple[float, dict[str, Any]]] = []
        seq, off = self._read_seq, self._read_off
        for seg in self._segments:
            if seg.seq < seq or seg.count == 0:
                continue
            start = off if seg.seq == self._read_seq else 0
            with open(seg.path, "rb") as fh:
                fh.seek(start)
                pos = start
                while len(out) < n:
                    line = fh.readline()
                    if not line.endswith(b"\n"):
                        break
                    pos += len(line)
                    rec = _decode(line)
                    if rec is None:  # counted at open; a bad line must not stop replay
                        continue
                    out.append(rec)
                    if positions is not None:
                        positions.append(SpoolPosition(seg.seq, pos, len(out)))
            seq, off = seg.seq, pos
            if len(out) >= n:
                break
        return out, SpoolPosition(seq, off, len(out))

    def ack(self, pos: SpoolPosition) -> None:
        """Forget everything up to `pos` (those events were delivered).

        Safe when drop_oldest deleted segments between the `peek` and this `ack` (appends come from
        another thread): positions in deleted segments are ignored, and the number of entries
        acknowledged in the head segment is counted from the file, not taken from the peek.
        """
        if not self._segments or pos.seq < self._segments[0].seq or (
                pos.seq == self._read_seq and pos.offset <= self._read_off):
            return  # already dropped or already acknowledged
        while self._segments and self._segments[0].seq < pos.seq:
            dropped = self._segments.pop(0)
            if self._fd_path == dropped.path:
                self._close_writer()
            dropped.path.unlink(missing_ok=True)
            self._read_seq, self._read_off = pos.seq, 0
        head = self._segments[0] if self._segments else None
        if head is not None and head.seq == pos.seq:
            start = self._read_off if self._read_seq == head.seq else 0
            with open(head.path, "rb") as fh:
                fh.seek(start)
                done = fh.read(max(0, pos.offset - start)).count(b"\n")
            head.count = max(0, head.count - done)
        self._read_seq, self._read_off = pos.seq, pos.offset
        if head is not None and head.count == 0 and head.seq == pos.seq and len(self._segments) > 1:
            self._segments.pop(0)
            head.path.unlink(missing_ok=True)
            self._read_seq, self._read_off = self._segments[0].seq, 0
        elif head is not None and head.count == 0 and len(self._segments) == 1:
            # Empty: start over in a fresh segment so files do not grow forever.
            self._close_writer()
            head.path.unlink(missing_ok=True)
            self._segments.clear()
            self._read_seq, self._read_off = head.seq + 1, 0
        self._oldest_t = None
        self._save_cursor()

    def _save_cursor(self) -> None:
        tmp = self.dir / (self.CURSOR + ".tmp")
        tmp.write_text(json.dumps({"seq": self._read_seq, "offset": self._read_off}), "utf-8")
        if self.fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, self.dir / self.CURSOR)

    def close(self) -> None:
        self._close_writer(sync=True)
        if not self._lock_fh.closed:
            self._lock_fh.close()  # releases the flock


def _decode(line: bytes) -> tuple[float, dict[str, Any]] | None:
    """One spool line as (append time, event); None for a line that is not a spool entry."""
    try:
        rec = json.loads(line)
        return float(rec["t"]), rec["e"]
    except (ValueError, KeyError, TypeError):
        return None
