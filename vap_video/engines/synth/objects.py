"""The synthetic world's classes and the ground truth of one object in one picture."""

from __future__ import annotations

from dataclasses import dataclass




#: Class names of the synthetic world. Index = class id.
CLASS_NAMES: list[str] = ["person", "car", "bicycle", "dog"]

PERSON, CAR, BICYCLE, DOG = 0, 1, 2, 3


@dataclass
class GTObject:
    """Ground truth of one object in one picture.

    box is (x1, y1, x2, y2) in pixels, clipped to the picture; it is the object's full (amodal)
    extent, so an occluded object keeps its whole box. visibility is the fraction of the object's
    pixels that are seen (not hidden by nearer objects and not cut off by the picture border), the
    MOTChallenge convention.
    """

    track_id: int
    class_id: int
    box: tuple[float, float, float, float]
    visibility: float = 1.0
