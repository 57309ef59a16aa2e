"""Annotated video output: tracks drawn on the frames of one stream, encoded to H.264 with PyAV.

Runs as a result hook on the pipeline's post thread, so it sees exactly what the tracker saw.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from pipeline.analytics import AnalyticsConfig
from pipeline.frames import Detections, Frame
from pipeline.geometry import signed_distance
from pipeline.tracking import Tracks

_PALETTE = np.array([(230, 57, 70), (29, 161, 242), (42, 157, 143), (244, 162, 97), (131, 56, 236),
                     (255, 190, 11), (58, 134, 255), (251, 86, 7)], dtype=np.uint8)


def _pixels(points: list[tuple[float, float]], relative: bool, w: int, h: int) -> np.ndarray:
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
    """Writes one stream's annotated frames to an MP4; the size is fixed by the first frame."""

    def __init__(self, path: Path, stream: str, names: list[str], fps: float = 25.0,
                 analytics: AnalyticsConfig | None = None) -> None:
        self.path = Path(path)
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
        w, h = self._size
        if img.shape[1] != w or img.shape[0] != h:
            img = cv2.resize(img, (w, h))
        for packet in self._video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is not None:
            for packet in self._video.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
