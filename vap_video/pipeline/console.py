"""What the web console shows: each stream's latest frame, live JPEGs, and a feed of recent events.

Why this shape: the `post` thread must not pay for a picture nobody looks at. As a result hook it
only keeps a reference to each stream's latest frame and tracks (the frame is never modified after
decode, so holding it is safe; at most one extra frame per stream stays alive). Drawing boxes,
zones and lines and encoding the JPEG happen on the HTTP thread of the viewer that asked, at the
viewer's rate (`server.live_fps`), so with nobody watching the console costs a dict store per frame.

Events arrive through `Pipeline.listeners` into a bounded ring with sequence numbers; each
server-sent-events client reads from its own position, so a slow viewer never slows the pipeline
(it skips events older than the ring instead).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from vap_video.pipeline.analytics import AnalyticsConfig, LineConfig, ZoneConfig
from vap_video.pipeline.annotate import draw_tracks
from vap_video.pipeline.frames import Detections, Frame
from vap_video.pipeline.tracking import Tracks

if TYPE_CHECKING:
    from vap_video.pipeline.runtime import Pipeline

EVENT_BACKLOG = 500


@dataclass
class _Latest:
    frame: Frame
    tracks: Tracks
    seq: int


def _relative(analytics: AnalyticsConfig, w: int, h: int) -> AnalyticsConfig:
    """The same zones and lines in fractions of a (w, h) frame, to draw them on a resized copy."""
    def zone(z: ZoneConfig) -> ZoneConfig:
        if z.relative:
            return z
        return z.model_copy(update={"relative": True, "polygon": [(x / w, y / h) for x, y in z.polygon]})

    def line(ln: LineConfig) -> LineConfig:
        if ln.relative:
            return ln
        (ax, ay), (bx, by) = ln.points
        return ln.model_copy(update={"relative": True, "points": ((ax / w, ay / h), (bx / w, by / h))})

    return analytics.model_copy(update={"zones": [zone(z) for z in analytics.zones],
                                        "lines": [line(ln) for ln in analytics.lines]})


class ConsoleFeed:
    """Result hook and event listener of one pipeline; the HTTP handlers read from it."""

    def __init__(self, pipeline: Pipeline, backlog: int = EVENT_BACKLOG, quality: int = 75) -> None:
        self.pipeline = pipeline
        self.quality = quality
        self._latest: dict[str, _Latest] = {}
        self._frame_seq = 0
        self._events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=backlog)
        self._event_seq = 0
        self._cond = threading.Condition()
        self._watchers = 0        # live views open now: only then are frame waiters woken
        self.encoded = 0          # JPEGs encoded (the benchmark checks nothing is encoded unwatched)

    def install(self) -> None:
        """Attach to the pipeline (hooks run after snapshots, so events already carry their paths)."""
        self.pipeline.hooks.append(self)
        self.pipeline.listeners.append(self.on_events)

    # ------------------------------------------------------------------ producer side
    def __call__(self, frame: Frame, dets: Detections, tracks: Tracks, events: list[dict[str, Any]]) -> None:
        """Post thread: remember the frame. No copy, no drawing, no lock unless someone watches."""
        self._frame_seq += 1
        self._latest[frame.stream] = _Latest(frame, tracks, self._frame_seq)
        if self._watchers:
            with self._cond:
                self._cond.notify_all()

    def on_events(self, events: list[dict[str, Any]]) -> None:
        with self._cond:
            for e in events:
                self._event_seq += 1
                self._events.append((self._event_seq, e))
            self._cond.notify_all()

    def forget(self, stream: str) -> None:
        """Drop a removed stream's frame (its memory, and so it is no longer served)."""
        self._latest.pop(stream, None)

    # ------------------------------------------------------------------ viewer side
    def latest_seq(self, stream: str) -> int | None:
        latest = self._live(stream)
        return None if latest is None else latest.seq

    def _live(self, stream: str) -> _Latest | None:
        latest = self._latest.get(stream)
        if latest is not None and self.pipeline.stream_config(stream) is None:
            self._latest.pop(stream, None)   # removed by someone else (cluster, another client)
            return None
        return latest

    def jpeg(self, stream: str, max_width: int | None = None) -> tuple[bytes, int] | None:
        """The stream's latest frame with boxes, track ids, zones and lines, as JPEG, and its sequence."""
        latest = self._live(stream)
        if latest is None:
            return None
        cfg = self.pipeline.stream_config(stream)
        analytics = self.pipeline.settings.stream_analytics(cfg) if cfg is not None else None
        plan = getattr(self.pipeline, "decode_plan", None)
        if plan is not None:
            plan.want_full(stream)  # someone is looking: decode this stream at full size for a while
        image, tracks = latest.frame.image, latest.tracks
        src_h, src_w = latest.frame.shape     # boxes, zones and lines are in source pixels
        h, w = image.shape[:2]                # smaller when the decoder scaled it for the engine
        scale = w / src_w
        if max_width and w > max_width:
            # shrink first and draw on the small picture: a fraction of the pixels to copy and draw
            shrink = max_width / w
            # INTER_AREA only where it is cheap and needed (halving or more): at 0.75x it costs 3x linear
            interp = cv2.INTER_AREA if shrink <= 0.5 else cv2.INTER_LINEAR
            image = cv2.resize(image, (max_width, max(1, int(round(h * shrink)))), interpolation=interp)
            scale *= shrink
        if scale != 1:
            tracks = replace(tracks, boxes=np.asarray(tracks.boxes, dtype=np.float32) * scale)
            if analytics is not None:
                analytics = _relative(analytics, src_w, src_h)
        image = draw_tracks(image, tracks, self.pipeline.names, analytics)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return None
        self.encoded += 1
        return data.tobytes(), latest.seq

    def frame_size(self, stream: str) -> tuple[int, int] | None:
        """(width, height) of the stream's latest frame: the editor's coordinate space."""
        latest = self._live(stream)
        if latest is None:
            return None
        h, w = latest.frame.shape
        return int(w), int(h)

    def wait_frame(self, stream: str, after: int, timeout: float) -> int | None:
        """Block until the stream has a frame newer than `after` (or `timeout`); its sequence or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._watchers += 1
            try:
                while True:
                    seq = self.latest_seq(stream)
                    if seq is not None and seq > after:
                        return seq
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    self._cond.wait(min(left, 0.5))
            finally:
                self._watchers -= 1

    def events_after(self, after: int) -> list[tuple[int, dict[str, Any]]]:
        with self._cond:
            return [(s, e) for s, e in self._events if s > after]

    def wait_events(self, after: int, timeout: float) -> list[tuple[int, dict[str, Any]]]:
        """Events with a sequence above `after`, waiting up to `timeout` for the first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._event_seq > after:
                    return [(s, e) for s, e in self._events if s > after]
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(left)
