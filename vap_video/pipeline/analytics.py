"""Turns one stream's tracks into events: track lifecycle, zones, lines, stationary objects.

One `StreamAnalytics` per stream, fed every frame with the tracker's output. Rules, in order of
precedence:

* **False-positive gate.** A confirmed track emits nothing until the median of its scores so far
  reaches `min_start_score`; then `track.start`. A track that never passes emits nothing at all,
  not even `track.end`, so a consumer never sees half a lifecycle.
* **Zones** test the box's bottom-centre (the feet, where the object touches the ground) against a
  polygon. State flips only after `inertia_frames` consecutive frames agree, so a box wobbling on
  the edge does not flap. `zone.enter` / `zone.exit` (with `dwell_s`) carry `occupancy` (tracks in
  the zone after the event); `zone.loiter` fires once per visit when dwell passes `loiter_s`.
* **Lines** count directional crossings of the anchor point's path with hysteresis: the point must
  be `hysteresis_px` clear of the line on the new side before a crossing counts, and the path
  from its last clear position must pass through the drawn segment.
* **Stationary.** A track whose centre stays within a small radius (relative to its size) for
  `stationary_s` emits `object.stationary` once, then its zone, line and periodic updates are
  frozen until it moves again (parked cars do not spam).
* **Bounded state.** Everything per track is dropped at its end.

Times: `t` is stream time (pts seconds) and drives dwell, loiter, stationary and update periods;
`capture_ts` is wall clock and becomes the event's `ts`.

The rules stay in one module: they share one per-track state and one precedence order (the gate
before zones and lines, exits before `track.end`). Their settings are in
`vap_video.pipeline.analytics_config`, re-exported here.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vap_video.pipeline.analytics_config import AnalyticsConfig, Anchor, LineConfig, ZoneConfig
from vap_video.pipeline.events import make_event
from vap_video.pipeline.geometry import (
    as_points,
    box_anchor,
    points_in_polygon,
    segments_intersect,
    signed_distance,
)
from vap_video.pipeline.tracking import Tracks

_MAX_START_SCORES = 64  # scores kept for the median gate; enough for a stable median, bounded


@dataclass(slots=True)
class _ZoneState:
    inside: bool = False
    streak: int = 0  # consecutive frames disagreeing with `inside`
    enter_t: float = 0.0
    loitered: bool = False


@dataclass(slots=True)
class _TrackState:
    first_t: float
    last_t: float
    class_id: int
    score: float
    box: list[float]
    anchor_pt: tuple[float, float]  # stationary reference: where the centre settled
    anchor_t: float
    start_scores: list[float] = field(default_factory=list)
    started: bool = False
    zones: dict[str, _ZoneState] = field(default_factory=dict)
    entered: list[str] = field(default_factory=list)  # zone names ever entered, in order
    line_side: dict[str, int] = field(default_factory=dict)  # committed side: -1 left, +1 right
    line_clear_pt: dict[str, list[float]] = field(default_factory=dict)  # last point clear of the band
    stationary: bool = False
    last_update_t: float = 0.0


class StreamAnalytics:
    """Zones, lines and the per-track event lifecycle of one stream."""

    def __init__(self, stream: str, cfg: AnalyticsConfig, class_names: list[str],
                 incarnation: int | None = None) -> None:
        self.stream = stream
        # Track ids are `stream:n`; a cluster worker passes the stream's owner incarnation and
        # they become `stream:incarnation.n`, unique across the owners a camera has had.
        self._id_prefix = f"{stream}:" if incarnation is None else f"{stream}:{int(incarnation)}."
        self.cfg = cfg
        self.class_names = list(class_names)
        cfg.check_classes(self.class_names, where=f"stream {stream!r}: ")
        self._zone_cls = [self._class_mask(z.classes) for z in cfg.zones]
        self._line_cls = [self._class_mask(ln.classes) for ln in cfg.lines]
        self._tracks: dict[int, _TrackState] = {}
        self._occupancy = {z.name: 0 for z in cfg.zones}
        self._counts = {ln.name: {"in": 0, "out": 0} for ln in cfg.lines}
        self._class_counts: dict[tuple[str, str, str], int] = {}
        self._frame_size: tuple[int, int] | None = None
        self._next_sweep_t: float | None = None
        self._polys: list[np.ndarray] = []
        self._segs: list[tuple[np.ndarray, np.ndarray]] = []

    def _class_mask(self, classes: list[str] | None) -> set[int] | None:
        if classes is None:
            return None
        return {self.class_names.index(c) for c in classes}

    # -- geometry in pixels, cached per frame size ---------------------------------------------

    def _scale(self, frame_size: tuple[int, int]) -> None:
        if frame_size == self._frame_size:
            return
        h, w = frame_size
        scale = np.array([w, h], dtype=np.float64)
        self._polys = [as_points(z.polygon) * (scale if z.relative else 1.0) for z in self.cfg.zones]
        self._segs = []
        for ln in self.cfg.lines:
            pts = as_points(ln.points) * (scale if ln.relative else 1.0)
            self._segs.append((pts[0], pts[1]))
        self._frame_size = frame_size

    # -- public API ----------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """Crossings so far per line and direction: {line: {"in": n, "out": n}} (for metrics)."""
        return {k: dict(v) for k, v in self._counts.items()}

    def counts_by_class(self) -> dict[tuple[str, str, str], int]:
        """Crossings so far keyed by (line, direction, class name)."""
        return dict(self._class_counts)

    def occupancy(self) -> dict[str, int]:
        """Started tracks currently inside each zone."""
        return dict(self._occupancy)

    def open_tracks(self) -> int:
        """Tracks with analytics state (started or not): for memory-bound tests and metrics."""
        return len(self._tracks)

    def update(self, tracks: Tracks, t: float, capture_ts: float, frame_size: tuple[int, int]) -> list[dict]:
        """Process one frame's tracks; returns the events it caused, in causal order.

        `frame_size` is (height, width) of the source frame, as `Frame.shape` gives it; relative
        zone and line coordinates are scaled by it.
        """
        self._scale((int(frame_size[0]), int(frame_size[1])))
        events: list[dict] = []
        t = float(t)
        n = len(tracks)
        if n:
            ids = tracks.ids.tolist()
            # geometry for all tracks at once, then plain Python lists: the per-track loop below
            # indexes them element by element, which is far cheaper on lists than on arrays
            boxes = np.asarray(tracks.boxes, dtype=np.float64).reshape(-1, 4)
            zone_inside = [points_in_polygon(box_anchor(boxes, z.anchor), poly).tolist()
                           for z, poly in zip(self.cfg.zones, self._polys)]
            line_pts_arr = [box_anchor(boxes, ln.anchor) for ln in self.cfg.lines]
            line_dist = [signed_distance(p, a, b).tolist() for p, (a, b) in zip(line_pts_arr, self._segs)]
            line_pts = [p.tolist() for p in line_pts_arr]
            centres = box_anchor(boxes, "center").tolist()
            box_list = boxes.tolist()
            score_list = tracks.scores.tolist()
            class_list = tracks.class_ids.tolist()
            for i, tid in enumerate(ids):
                st = self._tracks.get(tid)
                score = float(score_list[i])
                cls = int(class_list[i])
                if st is None:
                    st = self._tracks[tid] = _TrackState(first_t=t, last_t=t, class_id=cls, score=score,
                                                         box=box_list[i], anchor_pt=tuple(centres[i]),
                                                         anchor_t=t)
                st.last_t, st.class_id, st.score, st.box = t, cls, score, box_list[i]
                if not st.started:
                    st.start_scores.append(score)
                    if len(st.start_scores) > _MAX_START_SCORES:
                        del st.start_scores[0]
                    if statistics.median(st.start_scores) < self.cfg.min_start_score:
                        continue
                    st.started = True
                    st.start_scores = []
                    st.last_update_t = t
                    events.append(self._track_event("track.start", tid, st, capture_ts))
                events.extend(self._step(tid, st, t, capture_ts, i, zone_inside, line_pts, line_dist, centres[i]))
        for tid in tracks.ended.tolist():
            events.extend(self._end(int(tid), capture_ts))
        if self._next_sweep_t is None or t >= self._next_sweep_t or t < self._next_sweep_t - 2.0:
            # once per stream second: end tracks the tracker forgot (bounded state, whatever happens)
            self._next_sweep_t = t + 1.0
            for tid in [k for k, st in self._tracks.items() if t - st.last_t > self.cfg.stale_track_s]:
                events.extend(self._end(tid, capture_ts))
        return events

    def finish(self, t: float, capture_ts: float, reason: str | None = None) -> list[dict]:
        """End every open track (stream finished or removed): zone exits, then track.end.

        `reason` goes on each track.end (`handover`: the camera moved to another cluster worker).

        Dwell and duration run to each track's last sighting, not to `t`: a track that was lost
        for a while before the stream ended did not dwell in its zone meanwhile. Tracks that never
        passed the false-positive gate end silently. All per-track state is dropped.
        """
        events: list[dict] = []
        for tid in list(self._tracks):
            events.extend(self._end(tid, capture_ts, reason))
        return events

    def reconfigure(self, cfg: AnalyticsConfig, capture_ts: float) -> list[dict]:
        """Swap in new zones and lines while the stream runs (the console's editor applies them).

        Tracks keep their identity and lifecycle (no second track.start); a track inside a zone
        that no longer exists gets its `zone.exit` now, so every enter a consumer saw is closed.
        Zones and lines kept by name keep their state and counts; a moved zone corrects itself
        through the usual inertia with ordinary enter/exit events. Returns the exits.
        """
        cfg.check_classes(self.class_names, where=f"stream {self.stream!r}: ")
        zones = {z.name for z in cfg.zones}
        lines = {ln.name for ln in cfg.lines}
        events: list[dict] = []
        for tid, st in self._tracks.items():
            for name in [n for n in st.zones if n not in zones]:
                zs = st.zones.pop(name)
                if zs.inside:
                    events.append(self._exit(tid, st, name, zs, st.last_t, capture_ts))
            for name in [n for n in st.line_side if n not in lines]:
                del st.line_side[name]
                st.line_clear_pt.pop(name, None)
        self.cfg = cfg
        self._zone_cls = [self._class_mask(z.classes) for z in cfg.zones]
        self._line_cls = [self._class_mask(ln.classes) for ln in cfg.lines]
        self._occupancy = {z.name: sum(1 for st in self._tracks.values()
                                       if (kept := st.zones.get(z.name)) is not None and kept.inside)
                           for z in cfg.zones}
        self._counts = {ln.name: self._counts.get(ln.name, {"in": 0, "out": 0}) for ln in cfg.lines}
        self._frame_size = None  # rescale the new geometry on the next frame
        return events

    # -- per-track rules -----------------------------------------------------------------------

    def _step(self, tid: int, st: _TrackState, t: float, capture_ts: float, i: int,
              zone_inside: list[list[bool]], line_pts: list[list[list[float]]], line_dist: list[list[float]],
              centre: list[float]) -> list[dict]:
        events: list[dict] = []
        cfg = self.cfg
        if cfg.stationary_s is not None:
            w = st.box[2] - st.box[0]
            h = st.box[3] - st.box[1]
            tol = cfg.stationary_tolerance * math.sqrt(max(w * h, 0.0)) + cfg.stationary_min_px
            if math.hypot(centre[0] - st.anchor_pt[0], centre[1] - st.anchor_pt[1]) > tol:
                st.anchor_pt, st.anchor_t = (centre[0], centre[1]), t
                st.stationary = False
            elif not st.stationary and t - st.anchor_t >= cfg.stationary_s:
                st.stationary = True
                events.append(self._track_event("object.stationary", tid, st, capture_ts))
        if st.stationary:
            return events  # frozen: no zone, line or periodic events while parked

        zone_changed = False
        for k, zone in enumerate(cfg.zones):
            allowed = self._zone_cls[k]
            now_in = zone_inside[k][i] and (allowed is None or st.class_id in allowed)
            zs = st.zones.get(zone.name)
            if zs is None:
                if not now_in:
                    continue
                zs = st.zones[zone.name] = _ZoneState()
            if now_in == zs.inside:
                zs.streak = 0
            else:
                zs.streak += 1
                if zs.streak >= zone.inertia_frames:
                    zs.streak = 0
                    zone_changed = True
                    if now_in:
                        zs.inside, zs.enter_t, zs.loitered = True, t, False
                        self._occupancy[zone.name] += 1
                        if zone.name not in st.entered:
                            st.entered.append(zone.name)
                        events.append(self._track_event("zone.enter", tid, st, capture_ts, zone=zone.name,
                                                        occupancy=self._occupancy[zone.name]))
                    else:
                        events.append(self._exit(tid, st, zone.name, zs, t, capture_ts))
                        del st.zones[zone.name]
                        continue
            if zs.inside and zone.loiter_s is not None and not zs.loitered and t - zs.enter_t >= zone.loiter_s:
                zs.loitered = True
                events.append(self._track_event("zone.loiter", tid, st, capture_ts, zone=zone.name,
                                                dwell_s=round(t - zs.enter_t, 3),
                                                occupancy=self._occupancy[zone.name]))
            if not zs.inside and zs.streak == 0:
                del st.zones[zone.name]  # outside and settled: no state needed

        for k, line in enumerate(cfg.lines):
            allowed = self._line_cls[k]
            if allowed is not None and st.class_id not in allowed:
                continue
            d = line_dist[k][i]
            pt = line_pts[k][i]
            if abs(d) < line.hysteresis_px or (line.hysteresis_px == 0 and d == 0):
                continue  # inside the band: undecided
            side = 1 if d > 0 else -1
            prev = st.line_side.get(line.name)
            if prev is not None and side != prev:
                a, b = self._segs[k]
                if segments_intersect(st.line_clear_pt[line.name], pt, a, b):
                    direction = "in" if prev < 0 else "out"
                    self._counts[line.name][direction] += 1
                    key = (line.name, direction, self._class_name(st.class_id))
                    self._class_counts[key] = self._class_counts.get(key, 0) + 1
                    events.append(self._track_event("line.cross", tid, st, capture_ts, line=line.name,
                                                    direction=direction))
            st.line_side[line.name] = side
            st.line_clear_pt[line.name] = pt

        if zone_changed or (cfg.update_interval_s is not None and t - st.last_update_t >= cfg.update_interval_s):
            st.last_update_t = t
            events.append(self._track_event("track.update", tid, st, capture_ts, zones=self._current_zones(st)))
        return events

    def _exit(self, tid: int, st: _TrackState, zone: str, zs: _ZoneState, t: float, capture_ts: float) -> dict:
        self._occupancy[zone] = max(0, self._occupancy[zone] - 1)
        return self._track_event("zone.exit", tid, st, capture_ts, zone=zone,
                                 dwell_s=round(max(0.0, t - zs.enter_t), 3), occupancy=self._occupancy[zone])

    def _end(self, tid: int, capture_ts: float, reason: str | None = None) -> list[dict]:
        st = self._tracks.pop(tid, None)
        if st is None or not st.started:
            return []  # never passed the false-positive gate: silent
        events = [self._exit(tid, st, name, zs, st.last_t, capture_ts)
                  for name, zs in st.zones.items() if zs.inside]
        events.append(self._track_event("track.end", tid, st, capture_ts,
                                        duration_s=round(max(0.0, st.last_t - st.first_t), 3),
                                        zones=list(st.entered), reason=reason))
        return events

    # -- event construction --------------------------------------------------------------------

    @staticmethod
    def _current_zones(st: _TrackState) -> list[str]:
        return [name for name, zs in st.zones.items() if zs.inside]

    def _class_name(self, class_id: int) -> str:
        if 0 <= class_id < len(self.class_names):
            return self.class_names[class_id]
        return str(class_id)

    def _track_event(self, event_type: str, tid: int, st: _TrackState, capture_ts: float, **extra: Any) -> dict:
        return make_event(
            event_type, self.stream, capture_ts,
            track_id=f"{self._id_prefix}{tid}",
            **{"class": self._class_name(st.class_id)},
            class_id=int(st.class_id),
            score=round(min(1.0, max(0.0, st.score)), 4),
            box=[round(v, 1) for v in st.box],
            **extra,
        )


__all__ = ["AnalyticsConfig", "Anchor", "LineConfig", "StreamAnalytics", "ZoneConfig"]
