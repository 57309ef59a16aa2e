"""The `analytics:` section of a stream: zones, lines and the event policy (gate, stationary, updates).

Apart from the rules (`vap_video.pipeline.analytics`, which re-exports these) so that the
settings can be read and validated without the per-track state machine; the geometry checks
(polygon order, zero area, coordinates in range) run here, at load time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from vap_video.pipeline.config import ConfigError, Strict
from vap_video.pipeline.geometry import polygon_area, self_intersection

Anchor = Literal["bottom_center", "center"]


def _check_relative(kind: str, name: str, pts: list[tuple[float, float]], relative: bool) -> None:
    if relative:
        bad = [p for p in pts if not (0.0 <= p[0] <= 1.0 and 0.0 <= p[1] <= 1.0)]
        if bad:
            raise ValueError(f"{kind} {name!r}: relative=true needs every coordinate in [0, 1], got {bad[0]} "
                             f"(use pixels with relative=false, or divide by the frame size)")
    else:
        bad = [p for p in pts if p[0] < 0 or p[1] < 0]
        if bad:
            raise ValueError(f"{kind} {name!r}: pixel coordinates must not be negative, got {bad[0]}")


class ZoneConfig(Strict):
    """A polygon zone. Coordinates are source pixels, or fractions of width/height with relative=true."""

    name: str = Field(min_length=1, description="Zone name; appears in events as `zone`.")
    polygon: list[tuple[float, float]] = Field(
        description="Vertices (x, y) in order, at least 3, edges must not cross; closed implicitly.")
    relative: bool = Field(False, description="Coordinates are fractions in [0, 1] of frame width and height.")
    classes: list[str] | None = Field(
        None, description="Class names this zone watches; None = every class.")
    inertia_frames: int = Field(
        3, ge=1, description="Consecutive frames inside (outside) before a track counts as entered (exited).")
    loiter_s: float | None = Field(
        None, gt=0, description="Emit zone.loiter once per visit when a track's dwell passes this; None = off.")
    anchor: Anchor = Field("bottom_center", description="Point of the box tested against the polygon.")

    @model_validator(mode="after")
    def _geometry(self) -> ZoneConfig:
        if len(self.polygon) < 3:
            raise ValueError(f"zone {self.name!r}: polygon needs at least 3 points, got {len(self.polygon)}")
        _check_relative("zone", self.name, self.polygon, self.relative)
        crossing = self_intersection(self.polygon)
        if crossing is not None:
            i, j = crossing
            raise ValueError(f"zone {self.name!r}: polygon edges {i}-{i + 1} and {j}-{(j + 1) % len(self.polygon)} "
                             f"cross each other; list the vertices in order around the zone")
        if abs(polygon_area(self.polygon)) <= 1e-12:
            raise ValueError(f"zone {self.name!r}: polygon has zero area (all points on one line)")
        return self


class LineConfig(Strict):
    """A counting line from `points[0]` (A) to `points[1]` (B).

    Direction `in` is a crossing from the **left** side to the **right** side of A->B as seen on
    the screen (image y points down). Example: a horizontal line drawn left to right, A=(0, 500),
    B=(1920, 500): moving downward (from above the line to below it) is `in`, upward is `out`.
    Swap A and B to swap the meaning.
    """

    name: str = Field(min_length=1, description="Line name; appears in events as `line`.")
    points: tuple[tuple[float, float], tuple[float, float]] = Field(description="A and B, (x, y) each.")
    relative: bool = Field(False, description="Coordinates are fractions in [0, 1] of frame width and height.")
    classes: list[str] | None = Field(None, description="Class names counted; None = every class.")
    hysteresis_px: float = Field(
        8.0, ge=0, description="The anchor must get this far past the line (pixels, perpendicular) on the other "
        "side before a crossing counts; absorbs box jitter on the line.")
    anchor: Anchor = Field("bottom_center", description="Point of the box whose path is tested.")

    @model_validator(mode="after")
    def _geometry(self) -> LineConfig:
        _check_relative("line", self.name, list(self.points), self.relative)
        (ax, ay), (bx, by) = self.points
        if ax == bx and ay == by:
            raise ValueError(f"line {self.name!r}: both points are {self.points[0]}; a line needs two "
                             f"distinct points")
        return self


class AnalyticsConfig(Strict):
    """Zones, lines and event policy for one stream."""

    zones: list[ZoneConfig] = Field(default_factory=list)
    lines: list[LineConfig] = Field(default_factory=list)
    stationary_s: float | None = Field(
        None, gt=0, description="Seconds a track must stay put before object.stationary; None = off.")
    stationary_tolerance: float = Field(
        0.1, gt=0, description="'Put' means the box centre stays within this fraction of the box size "
        "(sqrt(w*h)) of where it settled, plus stationary_min_px.")
    stationary_min_px: float = Field(2.0, ge=0, description="Jitter allowance in pixels added to the tolerance.")
    min_start_score: float = Field(
        0.5, ge=0, le=1, description="track.start only once the median score of the track so far reaches this "
        "(false-positive gate).")
    stale_track_s: float = Field(
        300.0, gt=0, description="Safety net: a track the tracker has not reported for this long is ended "
        "here (track.end) even if the tracker never said so, so state cannot leak.")
    update_interval_s: float | None = Field(
        None, gt=0, description="Emit track.update at most this often per track, plus on every zone change; "
        "None = only on zone changes.")

    @field_validator("zones", "lines")
    @classmethod
    def _unique_names(cls, v: list[ZoneConfig] | list[LineConfig], info: ValidationInfo) -> list:
        names = [item.name for item in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            what = "zone" if info.field_name == "zones" else "line"
            raise ValueError(f"{what} names must be unique; repeated: {', '.join(sorted(dup))}")
        return v

    def check_classes(self, class_names: list[str], where: str = "") -> None:
        """Raise ConfigError if a zone or line filters on a class the engine does not have.

        Separate from validation because the class names come from the engine's metadata, known
        only once the model is loaded; `vap validate` can call it after loading the metadata.
        """
        known = set(class_names)
        for kind, items in (("zone", self.zones), ("line", self.lines)):
            for item in items:
                unknown = [c for c in (item.classes or []) if c not in known]
                if unknown:
                    raise ConfigError(f"{where}{kind} {item.name!r} lists unknown classes {unknown}; "
                                      f"the engine's classes are: {', '.join(class_names)}")
