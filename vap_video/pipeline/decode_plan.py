"""What a decoder does with each decoded picture before the engine sees it, and which it skips.

Why this exists: with a small model on a CPU, decoding 720p, converting it to a full-size RGB
frame and then resizing that to the network size cost more CPU than the engine itself. swscale
(FFmpeg's scaler, in C) converts YUV to RGB and scales in one pass, so a decoder that knows the
engine's letterbox size converts straight to it (`VideoFrame.reformat(width, height,
format="rgb24")`): a fraction of the pixels to write, and no second pass over the full frame.

* `DecodePlan` holds the engine size and says, per stream, whether the full picture is needed
  instead: snapshots, annotated videos and dehazing read the pixels themselves, and the console
  asks for full frames only while someone looks at a stream (`want_full`, a few seconds at a
  time). The target size comes from the one letterbox rule (`vap_video.engines.letterbox.placement`), so
  the batch assembler places such a frame without resizing it again.
* `FrameStride` is the `max_fps` cap, decided from the frame's timestamp *before* conversion: a
  frame the cap drops is decoded (later frames depend on it) but never converted to RGB. Not
  decoding it at all (FFmpeg's `skip_frame`) is not used for the cap: that setting is the
  decoder's, not a packet's, and only frames no other frame references could be skipped, which
  with frame threading cannot be aimed at the frames the cap drops. `keyframes_only` uses it
  decoder-wide (`skip_frame=NONKEY`), where that is exactly what is wanted.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from vap_video.engines.letterbox import placement

__all__ = ["DecodePlan", "FrameStride", "convert"]

#: How long one console request keeps a stream at full resolution (its live view asks every frame).
FULL_RES_HOLD_S = 5.0


class DecodePlan:
    """Engine letterbox size plus the streams whose full pictures some consumer reads. Thread-safe."""

    def __init__(self, max_hw: tuple[int, int] | None, full_res: bool | set[str] = False) -> None:
        """`max_hw`: the engine input (H, W), None to never scale; `full_res`: True for every
        stream, or the names of the streams that always need the full picture."""
        self.max_hw = max_hw
        self._all_full = full_res is True
        self._full: set[str] = set() if isinstance(full_res, bool) else set(full_res)
        self._wanted: dict[str, float] = {}
        self._lock = threading.Lock()

    def keep_full(self, stream: str, on: bool) -> None:
        """Always decode `stream` at full resolution (on), or let it be scaled again (off)."""
        with self._lock:
            (self._full.add if on else self._full.discard)(stream)

    def want_full(self, stream: str, seconds: float = FULL_RES_HOLD_S) -> None:
        """Decode `stream` at full resolution for the next `seconds` (a viewer is looking at it)."""
        with self._lock:
            self._wanted[stream] = max(self._wanted.get(stream, 0.0), time.monotonic() + seconds)

    def target(self, stream: str, src_h: int, src_w: int) -> tuple[int, int] | None:
        """(height, width) to decode this picture to, or None for its full size."""
        if self.max_hw is None or self._all_full or stream in self._full:
            return None
        until = self._wanted.get(stream)
        if until is not None:
            if time.monotonic() < until:
                return None
            with self._lock:
                if self._wanted.get(stream, 0.0) <= time.monotonic():
                    self._wanted.pop(stream, None)
        nh, nw, _ = placement(src_h, src_w, *self.max_hw)
        if nh >= src_h and nw >= src_w:
            return None  # enlarging: the batch assembler does that, the frame stays as small as it came
        return nh, nw


def convert(vf: Any, target: tuple[int, int] | None, reformatter: Any = None) -> np.ndarray:
    """RGB pixels of a decoded PyAV frame: full size, or converted and scaled down in one swscale pass.

    Area averaging like the letterbox rule uses for shrinking (no aliasing; within a couple of
    grey levels of OpenCV's INTER_AREA, checked in tests/test_decode_plan.py). Pass the source's
    own `av.video.reformatter.VideoReformatter`: it keeps its swscale context (and the filter
    coefficients computed for the sizes) between frames, where `VideoFrame.reformat` builds a new
    one per call, which cost more than the scaling itself (measured 1.3-3.0 against 0.7-0.9 CPU-ms
    per 720p frame; benchmarks/pipeline.md).
    """
    if reformatter is None:
        from av.video.reformatter import VideoReformatter

        reformatter = VideoReformatter()
    if target is None:
        return reformatter.reformat(vf, format="rgb24").to_ndarray()
    h, w = target
    return reformatter.reformat(vf, width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()


class FrameStride:
    """The `max_fps` cap: keep a frame only when its time reaches the next due time.

    On the stream's own clock (pts) when it has one, else wall time, so a file read faster than
    real time keeps the same frames a camera would give. `dropped` counts frames refused.
    """

    def __init__(self, max_fps: float | None) -> None:
        self.period = 1.0 / max_fps if max_fps else 0.0
        self.dropped = 0
        self._next_due: float | None = None
        self._last_t: float | None = None

    def keep(self, pts: float | None) -> bool:
        """True when the frame with this timestamp is to be used; False (and counted) when dropped."""
        if not self.period:
            return True
        t = pts if pts is not None else time.monotonic()
        if self._last_t is not None and t < self._last_t:
            self._next_due = None  # timestamps restarted (loop, reconnect)
        self._last_t = t
        due = self._next_due
        if due is not None and t < due - 1e-6:
            self.dropped += 1
            return False
        self._next_due = t + self.period if due is None or t - due > self.period else due + self.period
        return True
