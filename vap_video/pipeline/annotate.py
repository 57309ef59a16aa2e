"""Annotated video output: tracks drawn on the frames of one stream, encoded to H.264 with PyAV.

Runs as a result hook on the pipeline's post thread, so it sees exactly what the tracker saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from vap_video.pipeline.analytics import AnalyticsConfig
from vap_video.pipeline.frames import Detections, Frame
from vap_video.pipeline.geometry import signed_distance
from vap_video.pipeline.tracking import Tracks

_PALETTE = np.array([(230, 57, 70), (29, 161, 242), (42, 157, 143), (244, 162, 97), (131, 56, 236),
                     (255, 190, 11), (58, 134, 255), (251, 86, 7)], dtype=np.uint8)


def _pixels(points: Sequence[tuple[float, float]], relative: bool, w: int, h: int) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if relative:
        pts = pts * (w, h)
    return np.round(pts).astype(np.int32)


def draw_geometry(image: np.ndarray, analytics: AnalyticsConfig | None) -> None:
    """Draw the configured zones (outlined) and lines (with an arrow towards 'in') in place."""
    if analytics is None:
        return
    h, w = image.shape[:2]
    for zone in analytics.zones:
        pts = _pixels(zone.polygon, zone.relative, w, h)
        cv2.polylines(image, [pts], True, (255, 255, 0), 1, cv2.LINE_AA)
        cv2.putText(image, zone.name, tuple(int(v) for v in pts.min(axis=0) + (4, 14)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
    for line in analytics.lines:
        a, b = _pixels(line.points, line.relative, w, h)
        cv2.line(image, tuple(int(v) for v in a), tuple(int(v) for v in b), (0, 255, 255), 2, cv2.LINE_AA)
        mid = (a + b) / 2
        d = (b - a).astype(np.float64)
        normal = np.array([-d[1], d[0]]) / max(1e-6, float(np.hypot(*d))) * 20
        if signed_distance((mid + normal)[None], a, b)[0] < 0:  # point the arrow to the side 'in' ends on
            normal = -normal
        cv2.arrowedLine(image, tuple(int(v) for v in mid), tuple(int(v) for v in mid + normal), (0, 255, 255), 2,
                        cv2.LINE_AA, tipLength=0.4)
        label = f"{line.name} (in)"
        (tw, _), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        tip = mid + normal
        org = (tip[0] + 4, tip[1] + 4) if normal[0] >= 0 else (tip[0] - tw - 4, tip[1] + 4)  # beside the tip
        cv2.putText(image, label, tuple(int(v) for v in org), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1,
                    cv2.LINE_AA)


def draw_tracks(image: np.ndarray, tracks: Tracks, names: list[str],
                analytics: AnalyticsConfig | None = None) -> np.ndarray:
    """A copy of `image` (RGB) with the zones and lines, and each track's box, id and class."""
    out = image.copy()
    draw_geometry(out, analytics)
    for tid, box, cls, score in zip(tracks.ids, tracks.boxes, tracks.class_ids, tracks.scores):
        color = tuple(int(c) for c in _PALETTE[int(tid) % len(_PALETTE)])
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 2)
        label = f"{tid} {names[int(cls)] if 0 <= int(cls) < len(names) else cls} {score:.2f}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        cv2.rectangle(out, (x1, max(0, y1 - th - 4)), (x1 + tw + 2, y1), color, -1)
        cv2.putText(out, label, (x1 + 1, y1 - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class AnnotatedWriter:
    """Writes one stream's annotated frames to an MP4; the size is fixed by the first frame.

    With `use_pts` the video keeps the stream's own timing (frame pts, in ms): a live stream that
    dropped stale frames, or a file of any frame rate, plays at its real speed. Without it every
    frame lasts 1/fps.
    """

    def __init__(self, path: Path, stream: str, names: list[str], fps: float = 25.0,
                 analytics: AnalyticsConfig | None = None, use_pts: bool = False) -> None:
        self.path = Path(path)
        self.use_pts = use_pts
        self._first_pts: float | None = None
        self._last_ms = -1
        self.analytics = analytics
        self.stream = stream
        self.names = names
        self.fps = fps
        self.frames = 0
        self._container: Any = None
        self._video: Any = None
        self._size: tuple[int, int] | None = None

    def __call__(self, frame: Frame, dets: Detections, tracks: Tracks, events: list[dict]) -> None:
        if frame.stream != self.stream:
            return
        img = draw_tracks(frame.image, tracks, self.names, self.analytics)
        if self._container is None:
            h, w = img.shape[:2]
            self._size = (w - w % 2, h - h % 2)  # yuv420p needs even sizes
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(self.path), mode="w")
            self._video = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1000))
            self._video.width, self._video.height = self._size
            self._video.pix_fmt = "yuv420p"
            self._video.options = {"preset": "veryfast", "crf": "26"}
            if self.use_pts:
                self._video.codec_context.time_base = Fraction(1, 1000)
                self._video.time_base = Fraction(1, 1000)
        assert self._size is not None   # set with the container, above
        w, h = self._size
        if img.shape[1] != w or img.shape[0] != h:
            img = cv2.resize(img, (w, h))
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        if self.use_pts:
            vf.pts = self._pts_ms(frame.pts)
            vf.time_base = Fraction(1, 1000)
        for packet in self._video.encode(vf):
            self._container.mux(packet)
        self.frames += 1

    def _pts_ms(self, pts: float | None) -> int:
        """Milliseconds since the first frame; strictly increasing (a jump back, e.g. a reconnect or
        a looped file, continues one nominal frame later instead)."""
        step = max(1, round(1000 / self.fps))
        if pts is None:
            ms = self._last_ms + step
        else:
            if self._first_pts is None:
                self._first_pts = pts
            ms = round((pts - self._first_pts) * 1000)
            if ms <= self._last_ms or ms - self._last_ms > 10_000:
                self._first_pts = pts - (self._last_ms + step) / 1000
                ms = self._last_ms + step
        self._last_ms = ms
        return ms

    def close(self) -> None:
        if self._container is not None:
            for packet in self._video.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None


class AnnotatedVideos:
    """The `annotate:` section at work: one `AnnotatedWriter` per stream, `DIR/<stream>.mp4`.

    A result hook on the post thread (like `AnnotatedWriter`); a writer opens at the stream's first
    frame and closes when the stream finishes, so a file's video is complete as soon as the file
    is, and the rest at `close()`. `avoid` lists paths never to write (the inputs themselves: an
    input inside the output folder gets `<stream>.annotated.mp4` instead of being overwritten).
    """

    def __init__(self, out_dir: Path, names: list[str], streams: list[str] | None = None,
                 analytics: Any = None, avoid: set[Path] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.names = names
        self.streams = None if streams is None else set(streams)
        self._analytics = analytics  # callable: stream name -> AnalyticsConfig | None
        self._avoid = {p.resolve() for p in (avoid or set())}
        self._writers: dict[str, AnnotatedWriter] = {}
        self.written: dict[str, Path] = {}

    def path_for(self, stream: str) -> Path:
        path = self.out_dir / f"{stream}.mp4"
        if path.resolve() in self._avoid:
            path = self.out_dir / f"{stream}.annotated.mp4"
        return path

    def __call__(self, frame: Frame, dets: Detections, tracks: Tracks, events: list[dict]) -> None:
        name = frame.stream
        if self.streams is not None and name not in self.streams:
            return
        writer = self._writers.get(name)
        if writer is None:
            analytics = self._analytics(name) if self._analytics is not None else None
            writer = AnnotatedWriter(self.path_for(name), name, self.names, analytics=analytics, use_pts=True)
            self._writers[name] = writer
        writer(frame, dets, tracks, events)

    def finish(self, stream: str) -> None:
        """Close the stream's video (it finished or was removed); a later frame starts a new file."""
        writer = self._writers.pop(stream, None)
        if writer is not None:
            writer.close()
            if writer.frames:
                self.written[stream] = writer.path

    def close(self) -> None:
        for name in list(self._writers):
            self.finish(name)
