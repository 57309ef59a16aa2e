"""The two records that flow through the data path: decoded frames and detections.

Kept as plain slotted dataclasses over NumPy arrays so every stage can vectorise over them and
nothing in the hot path allocates Python objects per box.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class Frame:
    """One decoded picture from one stream.

    `image` is H x W x 3 uint8 **RGB** (the engine contract is RGB; decoding straight to rgb24 in
    PyAV saves a colour conversion). `pts` is the stream's own presentation time in seconds (None
    when the container has none); `capture_ts` is wall-clock `time.time()` at decode, the start of
    the capture-to-event latency.

    `src_hw` is set when the decoder already scaled the picture down to the engine's letterbox
    size in the same pass as the colour conversion (`vap_video.pipeline.decode_plan`): `image` is then that
    smaller picture and `src_hw` the (height, width) of the source. Boxes, zones and events stay in
    source pixels either way; only consumers of the pixels themselves (snapshots, annotated videos,
    dehazing, the console's view) need the full picture, and the runtime keeps it for them.
    """

    stream: str
    index: int
    pts: float | None
    capture_ts: float
    image: np.ndarray
    src_hw: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the source picture (not of `image` when the decoder scaled it)."""
        if self.src_hw is not None:
            return self.src_hw
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def scaled(self) -> bool:
        """True when `image` is smaller than the source (decoded straight to the engine size)."""
        return self.src_hw is not None and self.src_hw != self.image.shape[:2]


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


@dataclass(slots=True)
class Detections:
    """Detections of one frame, in source-frame pixels (x1, y1, x2, y2)."""

    boxes: np.ndarray = field(default_factory=_empty_boxes)  # (N, 4) float32
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))  # (N,)
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))  # (N,)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, mask: np.ndarray) -> Detections:
        """Rows where `mask` (bool or index array) holds."""
        return Detections(self.boxes[mask], self.scores[mask], self.class_ids[mask])
