"""Snapshots: a JPEG of the frame (and of the object's crop) for chosen events, path put into the event.

Why: an alert that says "person entered zone door" is far more useful with the picture. The
snapshot is taken from the very frame that caused the event, so it shows what the detector saw.

Encoding a 1080p JPEG costs several milliseconds, too much for the `post` thread that owns tracking,
so the pipeline only assigns the path and hands the (already decoded, never modified) frame to one
writer thread behind a bounded queue. When that queue is full, or a stream exceeds
`max_per_stream_s`, the event goes out without a snapshot (counted), never late. Paths are
relative to `dir`, so consumers on another machine can map them onto a shared mount.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from vap_video.pipeline.config import ConfigError, Strict
from vap_video.pipeline.frames import Detections, Frame

log = logging.getLogger("vap.snapshots")

DEFAULT_TYPES = ["track.start", "zone.enter", "zone.loiter"]


class SnapshotConfig(Strict):
    """Optional JPEG snapshots of the frame and the object crop for chosen event types."""

    enabled: bool = Field(False, description="Write snapshots and add their paths to the events")
    dir: Path = Field(Path("events/snapshots"), description="Root folder; files go to <stream>/<date>/<event id>.jpg")
    types: list[str] = Field(default_factory=lambda: list(DEFAULT_TYPES),
                             description="Event types that get a snapshot (track.start and zone events)")
    crop: bool = Field(True, description="Also write the object's crop (<event id>-crop.jpg)")
    crop_margin: float = Field(0.1, ge=0, le=1, description="Margin around the box, as a fraction of its size")
    quality: int = Field(85, ge=10, le=100, description="JPEG quality")
    max_per_stream_s: float = Field(5.0, gt=0, description="At most this many snapshots per stream and second")
    queue_size: int = Field(32, ge=1, description="Frames waiting for the writer; beyond it events go without one")


def _safe_folder(stream: str) -> bool:
    """True when a stream name can be one folder directly below the snapshot root.

    The config already refuses such names; this is the last line of defence for any caller that
    builds frames itself: no separator, no '.' or '..', nothing hidden, nothing empty.
    """
    return bool(stream) and not stream.startswith(".") and "/" not in stream and "\\" not in stream \
        and "\0" not in stream


class Snapshotter:
    """A pipeline result hook: `(frame, dets, tracks, new_events)` -> adds `snapshot` paths to events."""

    def __init__(self, cfg: SnapshotConfig, metrics: Any = None) -> None:
        import cv2  # the runtime already depends on OpenCV; imported here to keep module import light
        self._cv2 = cv2
        self.cfg = cfg
        self.metrics = metrics
        self.root = Path(cfg.dir)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"snapshots: cannot create {self.root} ({exc.strerror}); choose a writable dir") \
                from None
        self.written = 0
        self.skipped = 0
        self._types = set(cfg.types)
        self._refused: set[str] = set()
        self._budget: dict[str, tuple[float, float]] = {}  # stream -> (tokens, last refill)
        self._q: queue.Queue[tuple[np.ndarray, list[tuple[Path, tuple[int, int, int, int] | None]]] | None] = \
            queue.Queue(cfg.queue_size)
        self._thread = threading.Thread(target=self._writer, name="vap-snapshots", daemon=True)
        self._thread.start()

    def __call__(self, frame: Frame, dets: Detections, tracks: Any, events: list[dict[str, Any]]) -> None:
        wanted = [e for e in events if e["type"] in self._types and "box" in e]
        if not wanted:
            return
        if not _safe_folder(frame.stream):
            self._refuse(frame.stream, len(wanted))
            return
        jobs: list[tuple[Path, tuple[int, int, int, int] | None]] = []
        chosen = []
        for e in wanted:
            if not self._take(frame.stream):
                self._skip(1)
                continue
            day = datetime.fromtimestamp(frame.capture_ts, tz=UTC).strftime("%Y%m%d")
            rel = Path(frame.stream) / day / f"{e['id']}.jpg"
            jobs.append((rel, None))
            if self.cfg.crop:
                crop_rel = rel.with_name(f"{e['id']}-crop.jpg")
                jobs.append((crop_rel, self._crop_box(e["box"], frame.shape)))
            chosen.append((e, rel, crop_rel if self.cfg.crop else None))
        if not jobs:
            return
        try:
            self._q.put_nowait((frame.image, jobs))
        except queue.Full:
            self._skip(len(chosen))
            return
        for e, rel, crop in chosen:  # paths only once the write is queued: never a dangling path
            e["snapshot"] = rel.as_posix()
            if crop is not None:
                e["snapshot_crop"] = crop.as_posix()

    def _refuse(self, stream: str, n: int) -> None:
        """A stream whose name would put files outside `dir` gets no snapshots (counted as failed)."""
        if stream not in self._refused:
            self._refused.add(stream)
            log.error("snapshots: stream name %r would write outside %s; its events go without snapshots "
                      "(rename the stream)", stream, self.root)
        self._failed(n)

    def _take(self, stream: str) -> bool:
        """Token bucket per stream: rate max_per_stream_s, burst the same but at least 1 (a rate below
        one per second, e.g. 0.2 = one every 5 s, must still allow one snapshot at a time)."""
        rate = self.cfg.max_per_stream_s
        burst = max(1.0, rate)
        now = time.monotonic()
        tokens, last = self._budget.get(stream, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        ok = tokens >= 1
        self._budget[stream] = (tokens - 1 if ok else tokens, now)
        return ok

    def _skip(self, n: int) -> None:
        self.skipped += n
        if self.metrics is not None:
            self.metrics.snapshots.labels("skipped").inc(n)

    def _crop_box(self, box: list[float], shape: tuple[int, int]) -> tuple[int, int, int, int]:
        h, w = shape
        x1, y1, x2, y2 = box
        mx, my = (x2 - x1) * self.cfg.crop_margin, (y2 - y1) * self.cfg.crop_margin
        # At least one pixel inside the image, even for a degenerate box on the border (x1 == width):
        # the event already carries the crop's path, so the crop must not come out empty.
        cx1 = min(max(0, int(x1 - mx)), w - 1)
        cy1 = min(max(0, int(y1 - my)), h - 1)
        return (cx1, cy1, max(cx1 + 1, min(w, int(np.ceil(x2 + mx)))), max(cy1 + 1, min(h, int(np.ceil(y2 + my)))))

    def _writer(self) -> None:
        cv2 = self._cv2
        params = [cv2.IMWRITE_JPEG_QUALITY, self.cfg.quality]
        while True:
            item = self._q.get()
            if item is None:
                return
            image, jobs = item
            try:
                bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # frames are RGB, JPEG encoders expect BGR
            except Exception as exc:  # cv2.error on an odd frame: count it, keep the writer alive
                log.error("snapshot: cannot convert a %s frame (%s)", getattr(image, "shape", "?"), exc)
                self._failed(len(jobs))
                continue
            for rel, box in jobs:
                pic = bgr if box is None else bgr[box[1]:max(box[3], box[1] + 1), box[0]:max(box[2], box[0] + 1)]
                path = self.root / rel
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    ok, data = cv2.imencode(".jpg", pic, params)
                    if not ok:
                        raise OSError("JPEG encoding failed")
                    tmp = path.with_suffix(".tmp")
                    tmp.write_bytes(data.tobytes())
                    tmp.replace(path)  # readers never see a half-written JPEG
                    self.written += 1
                    if self.metrics is not None:
                        self.metrics.snapshots.labels("written").inc()
                except Exception as exc:  # OSError, cv2.error: one bad snapshot must not stop the writer
                    log.error("snapshot %s could not be written: %s", path, exc)
                    self._failed(1)

    def _failed(self, n: int) -> None:
        if self.metrics is not None:
            self.metrics.snapshots.labels("failed").inc(n)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer, all within `timeout`.

        A writer still busy at the deadline (a stalled disk) is left behind as a daemon thread;
        the snapshots it had not written are named in the log, since their events already carry
        the paths.
        """
        deadline = time.monotonic() + timeout
        try:
            self._q.put(None, timeout=timeout)
        except queue.Full:
            pass                                  # the join below times out too, and says so
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("snapshot writer did not finish within %.1f s: about %d queued snapshots were not "
                        "written, though their events name the files", timeout, self._q.qsize())
