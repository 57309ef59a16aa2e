"""Per-stream multi-object tracker: a clean-room ByteTrack (Zhang et al., ECCV 2022).

Written from the paper, not from any implementation. The ideas that matter:

* **Two-stage association.** High-score detections are matched first against every track that is
  alive (tracked or lost) with an IoU cost fused with the detection score; the tracks left over
  are then matched against the *low*-score detections with plain IoU. Low-score boxes are mostly
  occluded objects, so this keeps ids through partial occlusion without creating tracks from
  noise.

  Where we depart from the paper, each measured on `benchmarks/tracker_compare.py`'s camera-like
  set (see `benchmarks/tracker.md`): every stage's assignment makes a pair only if it is worth
  more than leaving both sides unmatched (`tracking_match.assign`), never two poor pairs instead
  of one good one; lost tracks take part in the low-score stage too (an object coming out from
  behind another scores low for a while) and then get a buffered-IoU stage of their own (a
  prediction drifts during an occlusion); a lost track's lifetime grows with the time it was
  tracked (`lost_ttl_ratio`, between `lost_ttl_s` and `lost_ttl_max_s`: real objects are waited
  for, clutter is not, and a box seen once waits only `lost_ttl_once_s`); a new track needs a
  higher score in open space than where a tracked object covers part of it (objects appear by
  entering or by coming out from behind another); and tracks are reported from their first box
  (`min_hits` 1), with tentative tracks, when `min_hits` is raised, confirmable by a low-score box.
* **Time, not frames.** The Kalman filter predicts with the real time between updates (stream
  pts), velocities are in pixels per second, and lost-track lifetimes are in seconds. Dropped
  frames and variable frame rates therefore change nothing but the prediction horizon.
* **Vectorised state.** All tracks live in stacked NumPy arrays (means (N, 8), covariances
  (N, 8, 8), ids, counters), so predict, update and the IoU cost run once per frame for all
  tracks; removed tracks are compacted away (state size follows the live objects, never grows).

Ids are int64, start at 1, are never reused within one tracker (one tracker per stream), and
only confirmed tracks are ever reported, so no event can carry a tentative id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.config import Strict
from pipeline.frames import Detections
from pipeline.geometry import iou_matrix
from pipeline.tracking_kalman import Kalman, to_boxes, to_measurement
from pipeline.tracking_match import assign, buffered_iou, covered_by, dedup_detections

__all__ = ["ByteTracker", "TrackerConfig", "Tracks", "dedup_detections", "map_ultralytics_tracker"]

_log = logging.getLogger(__name__)

#: Keys that only an Ultralytics tracker YAML has; any of them switches on the mapping below.
ULTRALYTICS_KEYS = ("tracker_type", "track_high_thresh", "track_low_thresh", "track_buffer", "match_thresh",
                    "gmc_method", "proximity_thresh", "appearance_thresh", "with_reid")
_ULTRALYTICS_DROPPED = ("gmc_method", "proximity_thresh", "appearance_thresh", "with_reid", "model")


def map_ultralytics_tracker(data: dict) -> tuple[dict, list[str]]:
    """Ultralytics tracker keys -> vap's, with one note per key saying what it became.

    Why: users arrive with the `bytetrack.yaml` they tuned for `yolo track`; failing on its keys
    would make them translate by hand. Ultralytics counts `track_buffer` in frames at 30 fps and
    `match_thresh` as a cost (1 - similarity); vap counts seconds and similarities.
    """
    out: dict = {}
    notes: list[str] = []
    for key, value in data.items():
        if key == "tracker_type":
            if value not in ("bytetrack", "botsort"):
                raise ValueError(f"tracker_type {value!r} is not an Ultralytics tracker vap can map (bytetrack, "
                                 "botsort)")
            notes.append(f"tracker_type {value} -> vap's ByteTrack-style tracker"
                         + (" (BoT-SORT's camera-motion compensation and re-id are not used)" if value == "botsort"
                            else ""))
        elif key == "track_high_thresh":
            out["high_thresh"] = value
            notes.append(f"track_high_thresh {value} -> high_thresh {value}")
        elif key == "track_low_thresh":
            out["low_thresh"] = value
            notes.append(f"track_low_thresh {value} -> low_thresh {value}")
        elif key == "track_buffer":
            ttl = float(value) / 30.0
            out["lost_ttl_s"] = ttl
            notes.append(f"track_buffer {value} (frames at 30 fps) -> lost_ttl_s {ttl:g}")
        elif key == "match_thresh":
            out["match_iou_high"] = round(1.0 - float(value), 6)
            notes.append(f"match_thresh {value} (a cost) -> match_iou_high {out['match_iou_high']:g} (a similarity)")
        elif key in _ULTRALYTICS_DROPPED:
            notes.append(f"{key} dropped: vap's tracker uses no appearance features or camera-motion compensation")
        elif key == "new_track_thresh":
            out[key] = value
            notes.append(f"new_track_thresh {value} -> new_track_thresh {value} for a box that a tracked object "
                         "partly covers; alone in open space a box needs new_track_open_thresh (default 0.8)")
        else:
            out[key] = value  # vap's own keys (fuse_score has the same meaning)
    if "high_thresh" in out and "new_track_thresh" in out and out["new_track_thresh"] < out["high_thresh"]:
        notes.append(f"new_track_thresh {out['new_track_thresh']} raised to high_thresh {out['high_thresh']} "
                     "(vap starts tracks only from first-stage detections)")
        out["new_track_thresh"] = out["high_thresh"]
    return out, notes


class TrackerConfig(Strict):
    """ByteTrack settings: the paper's MOT17 values in seconds, except the association, birth and lifetime
    rules that `benchmarks/tracker.md` measured better (cost-limited assignment, lost tracks in stage 2 and
    a buffered stage 1b, births by context, reporting from the first box, earned lost lifetime)."""

    high_thresh: float = Field(
        0.5, ge=0, le=1, description="Detections at or above this score take part in the first association stage.")
    low_thresh: float = Field(
        0.1, ge=0, le=1, description="Detections in [low_thresh, high_thresh) are used only in the second stage "
        "(to keep occluded tracks alive); below low_thresh they are ignored.")
    new_track_thresh: float = Field(
        0.6, ge=0, le=1, description="An unmatched high-score detection starts a new track only at or above this "
        "score; above high_thresh so that borderline boxes extend tracks but do not create them. This is the "
        "threshold for a box that a confirmed track partly covers (see new_track_open_thresh).")
    new_track_open_thresh: float = Field(
        0.8, ge=0, le=1, description="Score a detection needs to start a track where no confirmed track covers "
        "new_track_cover of it. Objects appear by entering or by coming out from behind another, and then "
        "score low because they are partly hidden; a mid-score box alone in open space is more often clutter. "
        "Set it to new_track_thresh for one threshold everywhere (values below new_track_thresh act as it).")
    new_track_cover: float = Field(
        0.1, ge=0, le=1, description="Fraction of a detection's area that one confirmed track's box must cover for "
        "the detection to start a track at new_track_thresh instead of new_track_open_thresh.")
    match_iou_high: float = Field(
        0.3, ge=0, le=1, description="Stage 1 gate: minimum IoU x detection score (the paper's score-fused "
        "similarity) between a predicted track box and a high-score detection. Also the zero of a pair's worth "
        "in the assignment (a pair is worth its similarity minus the gate), so it decides when leaving a track "
        "unmatched beats a poor pair; the paper's 0.2 measured worse once lost tracks have stage 1b.")
    match_iou_low: float = Field(
        0.5, ge=0, le=1, description="Stage 2 gate: minimum plain IoU between a still-unmatched confirmed track (tracked "
        "or lost) and a low-score detection (strict, because low-score boxes are unreliable).")
    match_iou_tentative: float = Field(
        0.3, ge=0, le=1, description="Gate for tentative tracks against the high-score detections left after "
        "stage 1 (plain IoU).")
    fuse_score: bool = Field(
        True, description="Stage 1 similarity is IoU x score (paper); false uses plain IoU.")
    min_hits: int = Field(
        1, ge=1, description="Consecutive matched frames before a tentative track is confirmed and reported; a "
        "tentative track that misses one frame is removed. 1 (default) reports a track from its first box: the "
        "birth thresholds (new_track_thresh, new_track_open_thresh) are what keep clutter out, and a new object "
        "missed in its second frame keeps its track instead of restarting.")
    lost_ttl_s: float = Field(
        1.0, gt=0, description="Seconds a confirmed track survives without a match (coasting on its Kalman "
        "prediction) before it is ended and reported in Tracks.ended; the least a lost track lives (see "
        "lost_ttl_ratio).")
    lost_ttl_max_s: float = Field(
        3.0, gt=0, description="Upper bound of a lost track's lifetime. A track that has been seen for a while "
        "is a real object and worth waiting for, a short one is more likely clutter: a lost track lives "
        "lost_ttl_s or lost_ttl_ratio x the time it has been tracked, whichever is longer, at most this "
        "(or lost_ttl_s, if that is longer).")
    lost_ttl_once_s: float = Field(
        0.2, ge=0, description="Lost lifetime of a track seen in one frame only (confirmed at birth, never "
        "matched again): such a track is most often a spurious box, and while it coasts it can take another "
        "object's detection and it costs update time.")
    lost_ttl_ratio: float = Field(
        2.0, ge=0, description="Seconds of lost lifetime earned per second tracked (see lost_ttl_max_s); 0 gives "
        "the fixed lost_ttl_s of the ByteTrack paper.")
    lost_buffer_rate: float = Field(
        0.5, ge=0, description="Stage 1b, lost tracks still unmatched after stage 2 vs the high-score detections "
        "left: boxes enlarged on every side by this fraction of their size per second lost (buffered IoU), so a "
        "prediction that drifted during an occlusion still finds its object; 0 turns the stage off.")
    lost_buffer_max: float = Field(
        0.5, ge=0, description="Largest enlargement of stage 1b (fraction of the box size on every side).")
    match_biou_lost: float = Field(
        0.4, ge=0, le=1, description="Stage 1b gate: minimum buffered IoU between a lost track and a detection.")
    tentative_low: bool = Field(
        True, description="Tentative tracks left unmatched also try the low-score detections nobody took (stage-2 "
        "gate), so a new object that is partly hidden in its second frame is confirmed instead of restarting.")
    motion: Literal["xyah", "xywh"] = Field(
        "xywh", description="Kalman state: centre, width and height (default), or centre, aspect ratio w/h and "
        "height (the paper's, for upright pedestrians). A box that is clipped by the frame edge or partly hidden "
        "changes its aspect at once, which xyah's near-constant aspect model fights; xywh measured better on "
        "every family of benchmarks/tracker.md.")
    per_class: bool = Field(
        False, description="Match detections only to tracks of the same class. False (default) matches across "
        "classes and lets each track keep the class with the highest accumulated score, which absorbs a "
        "detector that flickers between similar classes.")
    dedup_iou: float | None = Field(
        0.7, gt=0, le=1, description="Before association, of two detections of different classes overlapping "
        "with IoU above this, keep only the higher score (an NMS-free head sometimes emits one object twice "
        "with two classes). None turns it off.")
    std_weight_position: float = Field(
        1.0 / 20, gt=0, description="Kalman noise of position and size per reference frame, as a fraction of the "
        "box height (the SORT/ByteTrack convention).")
    std_weight_velocity: float = Field(
        1.0 / 160, gt=0, description="Kalman noise of velocity per reference frame, as a fraction of the box height.")
    noise_ref_fps: float = Field(
        30.0, gt=0, description="Frame rate the std weights were tuned at: process noise grows with "
        "dt x noise_ref_fps, so a dropped frame adds the uncertainty of one more frame.")

    oc_reupdate: bool = Field(
        False, description="OC-SORT observation-centric re-update: when a lost track is found again, rewind "
        "its filter to the last observation and re-run it along a straight virtual path to the new one, "
        "instead of correcting the drifted prediction (fixes the velocity after occlusion).")
    oc_direction_weight: float = Field(
        0.0, ge=0, le=1, description="OC-SORT observation-centric momentum in stage 1: bonus (weight x score x "
        "(pi/2 - angle)/pi) for detections in the direction the track has been moving; 0 = off, OC-SORT uses 0.2.")
    oc_delta_s: float = Field(
        0.1, gt=0, description="Time span over which a track's direction of motion is measured (OC-SORT: 3 "
        "frames).")

    @model_validator(mode="before")
    @classmethod
    def _from_ultralytics(cls, data: object) -> object:
        """Accept an Ultralytics tracker YAML (bytetrack.yaml / botsort.yaml) as it is."""
        if isinstance(data, dict) and any(k in data for k in ULTRALYTICS_KEYS):
            mapped, notes = map_ultralytics_tracker(data)
            for note in notes:
                _log.warning("tracker: %s", note)
            return mapped
        return data

    @model_validator(mode="after")
    def _ordered(self) -> "TrackerConfig":
        if self.low_thresh > self.high_thresh:
            raise ValueError(f"tracker: low_thresh ({self.low_thresh}) must not exceed high_thresh "
                             f"({self.high_thresh})")
        if self.new_track_thresh < self.high_thresh:
            raise ValueError(f"tracker: new_track_thresh ({self.new_track_thresh}) must be at least high_thresh "
                             f"({self.high_thresh}); only high-score detections can start tracks")
        return self


def _empty_i64() -> np.ndarray:
    return np.zeros((0,), dtype=np.int64)


@dataclass(slots=True)
class Tracks:
    """What one `ByteTracker.update` returns: the confirmed tracks matched in this frame.

    `boxes` and `scores` are the matched *detection's* (what the camera saw), not the Kalman
    estimate, so events report observed boxes. `ended` lists confirmed ids removed in this update.
    """

    ids: np.ndarray = field(default_factory=_empty_i64)  # (N,) int64
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (N, 4) float32
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))  # (N,) float32
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))  # (N,) int32
    ended: np.ndarray = field(default_factory=_empty_i64)  # (M,) int64

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class ByteTracker:
    """One stream's tracker. Not thread-safe: the runtime owns one per stream and calls it in order.

    Track states: *tentative* (new, not yet `min_hits` consecutive hits, never reported), *tracked*
    (confirmed and matched in the last update), *lost* (confirmed, missed, coasting for the lifetime
    it earned, see `lost_ttl_ratio`). Tentative tracks that miss once and lost tracks past their ttl are removed.
    """

    def __init__(self, cfg: TrackerConfig) -> None:
        self.cfg = cfg
        self._kf = Kalman(cfg.motion, cfg.std_weight_position, cfg.std_weight_velocity, cfg.noise_ref_fps)
        self._next_id = 1
        self._t_last: float | None = None
        self._t_offset = 0.0  # added to t after a backwards jump so internal time stays monotonic
        self._last_dt = 0.0
        self._alloc(0, 1)

    # -- state arrays -------------------------------------------------------------------------

    def _alloc(self, n: int, n_cls: int) -> None:
        self._mean = np.zeros((n, 8))
        self._cov = np.zeros((n, 8, 8))
        self._ids = np.zeros((n,), np.int64)  # 0 while tentative; assigned at confirmation
        self._confirmed = np.zeros((n,), bool)
        self._lost = np.zeros((n,), bool)
        self._hits = np.zeros((n,), np.int32)
        self._last_seen = np.zeros((n,), np.float64)
        self._born = np.zeros((n,), np.float64)
        self._cls_score = np.zeros((n, n_cls), np.float64)
        # observation-centric state (OC-SORT options): last observation and the filter state right
        # after it, plus a direction anchor (an older observation centre and its time)
        self._obs = np.zeros((n, 4))
        self._snap_mean = np.zeros((n, 8))
        self._snap_cov = np.zeros((n, 8, 8))
        self._dir = np.zeros((n, 2))
        self._dir_anchor = np.zeros((n, 2))
        self._dir_anchor_t = np.zeros((n,))

    _ARRAYS = ("_mean", "_cov", "_ids", "_confirmed", "_lost", "_hits", "_last_seen", "_born", "_cls_score", "_obs",
               "_snap_mean", "_snap_cov", "_dir", "_dir_anchor", "_dir_anchor_t")

    def _keep(self, mask: np.ndarray) -> None:
        for name in self._ARRAYS:
            setattr(self, name, getattr(self, name)[mask])

    def _grow_classes(self, max_class: int) -> None:
        need = max_class + 1
        if need > self._cls_score.shape[1]:
            extra = np.zeros((len(self._cls_score), need - self._cls_score.shape[1]))
            self._cls_score = np.concatenate([self._cls_score, extra], axis=1)

    def _append(self, meas: np.ndarray, scores: np.ndarray, classes: np.ndarray, t: float) -> None:
        n = len(meas)
        if n == 0:
            return
        mean, cov = self._kf.initiate(meas)
        cls = np.zeros((n, self._cls_score.shape[1]))
        cls[np.arange(n), classes] = scores
        new = {
            "_mean": mean, "_cov": cov, "_ids": np.zeros((n,), np.int64), "_confirmed": np.zeros((n,), bool),
            "_lost": np.zeros((n,), bool), "_hits": np.ones((n,), np.int32), "_last_seen": np.full((n,), t), "_born": np.full((n,), t),
            "_cls_score": cls, "_obs": meas.copy(), "_snap_mean": mean.copy(), "_snap_cov": cov.copy(),
            "_dir": np.zeros((n, 2)), "_dir_anchor": meas[:, :2].copy(), "_dir_anchor_t": np.full((n,), t),
        }
        for name in self._ARRAYS:
            setattr(self, name, np.concatenate([getattr(self, name), new[name]]))

    # -- public API ---------------------------------------------------------------------------

    def active_count(self) -> int:
        """Confirmed tracks alive (tracked or lost): the `vap_active_tracks` gauge."""
        return int(np.count_nonzero(self._confirmed))

    def state_size(self) -> int:
        """Rows held in the state arrays (all tracks incl. tentative): for memory-bound tests."""
        return int(len(self._ids))

    def _clock(self, t: float) -> float:
        """Internal monotonic time. A backwards jump (stream restart, pts wrap) is bridged with the
        last interval instead of corrupting dt and the lost-track ttl."""
        t = float(t)
        if self._t_last is not None and t + self._t_offset < self._t_last:
            self._t_offset = self._t_last + self._last_dt - t
        return t + self._t_offset

    def _observe(self, rows: np.ndarray, z: np.ndarray, now: float) -> None:
        """Record observations: last measurement, filter snapshot, direction of motion."""
        self._obs[rows] = z
        self._snap_mean[rows] = self._mean[rows]
        self._snap_cov[rows] = self._cov[rows]
        due = now - self._dir_anchor_t[rows] >= self.cfg.oc_delta_s
        if due.any():
            r = rows[due]
            step = z[due, :2] - self._dir_anchor[r]
            norm = np.linalg.norm(step, axis=1, keepdims=True)
            self._dir[r] = np.where(norm > 1e-6, step / np.maximum(norm, 1e-6), self._dir[r])
            self._dir_anchor[r] = z[due, :2]
            self._dir_anchor_t[r] = now

    def _direction_bonus(self, tracks: np.ndarray, z: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """(tracks x dets) OC-SORT momentum term: (pi/2 - angle) / pi x score, where angle is between
        the track's direction of motion and the direction from its last observation to the
        detection; 0 for tracks without a direction yet."""
        to_det = z[None, :, :2] - self._obs[tracks][:, None, :2]
        norm = np.linalg.norm(to_det, axis=2)
        cos = np.einsum("tdk,tk->td", to_det, self._dir[tracks]) / np.maximum(norm, 1e-6)
        angle = np.arccos(np.clip(cos, -1.0, 1.0))
        bonus = (np.pi / 2 - angle) / np.pi * scores[None, :]
        has_dir = np.linalg.norm(self._dir[tracks], axis=1) > 0.5
        return np.where(has_dir[:, None] & (norm > 1e-6), bonus, 0.0)

    def _reupdate(self, rows: np.ndarray, z: np.ndarray, now: float) -> None:
        """OC-SORT re-update: for tracks found again after a gap, restart from the filter state at
        their last observation and feed it virtual observations on the straight line to the new
        one, one per typical frame interval (at most 30), so the velocity reflects the gap."""
        step_dt = self._last_dt if self._last_dt > 0 else 1.0 / self.cfg.noise_ref_fps
        for k, row in enumerate(rows.tolist()):
            gap = now - float(self._last_seen[row])
            if gap <= 0:
                continue
            n_steps = int(min(30, max(1, round(gap / step_dt))))
            mean, cov = self._snap_mean[row:row + 1], self._snap_cov[row:row + 1]
            z0, z1 = self._obs[row], z[k]
            for s in range(1, n_steps + 1):
                mean, cov = self._kf.predict(mean, cov, gap / n_steps)
                mean, cov = self._kf.update(mean, cov, (z0 + (z1 - z0) * (s / n_steps))[None, :])
            self._mean[row], self._cov[row] = mean[0], cov[0]

    def update(self, dets: Detections, t: float) -> Tracks:
        """Advance to stream time `t` (seconds) with this frame's detections (may be empty)."""
        cfg = self.cfg
        now = self._clock(t)
        dt = 0.0 if self._t_last is None else now - self._t_last
        cadence = self._last_dt if self._last_dt > 0 else dt  # the usual interval between updates
        if dt > 0:
            self._last_dt = dt
        self._t_last = now

        # -- clean the detections ---------------------------------------------------------------
        boxes = np.asarray(dets.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(dets.scores, dtype=np.float32).reshape(-1)
        classes = np.asarray(dets.class_ids).reshape(-1).astype(np.int32, copy=False)
        if not (len(boxes) == len(scores) == len(classes)):
            raise ValueError(f"Detections rows disagree: {len(boxes)} boxes, {len(scores)} scores, "
                             f"{len(classes)} class ids")
        valid = (np.isfinite(boxes).all(axis=1) & np.isfinite(scores) & (boxes[:, 2] > boxes[:, 0])
                 & (boxes[:, 3] > boxes[:, 1]) & (scores >= cfg.low_thresh) & (classes >= 0))
        d = Detections(boxes[valid], scores[valid], classes[valid])
        if cfg.dedup_iou is not None:
            d = dedup_detections(d, cfg.dedup_iou)
        if len(d):
            self._grow_classes(int(d.class_ids.max()))
        meas_all = to_measurement(d.boxes, cfg.motion)

        # -- predict every track to now ---------------------------------------------------------
        if self._lost.any():
            # a coasting box should not keep shrinking or growing: freeze its size velocity
            self._mean[self._lost, 7] = 0.0
            if cfg.motion == "xywh":
                self._mean[self._lost, 6] = 0.0
        size_before = self._mean[:, 2:4].copy()
        size_step = self._mean[:, 6:8] * min(dt, cadence)
        self._mean, self._cov = self._kf.predict(self._mean, self._cov, dt)
        if len(self._mean):
            # a long prediction (dropped frames, a stall) would extrapolate the size linearly, which
            # can shrink a box to nothing or turn it inside out: the size moves by at most one usual
            # interval's worth of its velocity (a size change does not persist like motion does),
            # and one prediction may at most halve or double it (the aspect, in xyah)
            if dt > cadence:
                self._mean[:, 2:4] = size_before + size_step
            np.clip(self._mean[:, 2:4], 0.5 * size_before, 2.0 * size_before, out=self._mean[:, 2:4])
        pred_boxes = to_boxes(self._mean, cfg.motion)

        n = len(self._ids)
        track_det = np.full((n,), -1, np.intp)  # matched detection row per track
        track_cls = self._cls_score.argmax(axis=1).astype(np.int32) if n else np.zeros((0,), np.int32)

        # one IoU matrix of every track against every detection; each stage takes its block of it
        iou_all = iou_matrix(pred_boxes, d.boxes) if n and len(d) else None

        def cost_for(tr: np.ndarray, dr: np.ndarray, fuse: bool, gate: float) -> tuple[np.ndarray, np.ndarray]:
            """Cost (1 - similarity) and the validity mask (similarity >= gate) of tracks x dets."""
            assert iou_all is not None  # callers only ask for non-empty blocks
            iou = iou_all[tr[:, None], dr[None, :]]
            sim = iou * d.scores[dr][None, :] if fuse else iou
            if cfg.per_class:
                sim = np.where(track_cls[tr][:, None] == d.class_ids[dr][None, :], sim, 0.0)
            return 1.0 - sim, sim >= gate

        det_free = np.ones(len(d), bool)

        def match(tracks: np.ndarray, dets_mask: np.ndarray, fuse: bool, gate: float, momentum: bool = False) -> None:
            """One association stage: still-unmatched `tracks` against still-free detections."""
            tr = tracks[track_det[tracks] < 0]
            dr = np.flatnonzero(dets_mask & det_free)
            if not len(tr) or not len(dr):
                return
            cost, valid = cost_for(tr, dr, fuse, gate)
            if momentum and cfg.oc_direction_weight > 0:
                cost = cost - cfg.oc_direction_weight * self._direction_bonus(tr, meas_all[dr], d.scores[dr])
            r, c = assign(cost, valid, 1.0 - gate)
            track_det[tr[r]] = dr[c]
            det_free[dr[c]] = False

        confirmed, tentative = np.flatnonzero(self._confirmed), np.flatnonzero(~self._confirmed)
        is_high = d.scores >= cfg.high_thresh
        # stage 1: confirmed tracks (tracked + lost) vs high-score detections, score-fused IoU
        match(confirmed, is_high, cfg.fuse_score, cfg.match_iou_high, momentum=True)
        # stage 2: every confirmed track still unmatched (tracked or lost) vs the low-score
        # detections, plain IoU with the strict gate. Lost tracks take part: an object coming out
        # from behind another is half hidden and scores low for a while, and waiting for a high
        # score until the ttl runs out is where the paper's variant loses identities in crowds.
        match(confirmed, ~is_high, False, cfg.match_iou_low)
        # stage 1b: lost tracks still unmatched vs the high-score detections left, buffered IoU that
        # widens with the time lost: the prediction of an object hidden for a while has drifted
        if cfg.lost_buffer_rate > 0:
            lost = np.flatnonzero(self._confirmed & self._lost & (track_det < 0))
            dr = np.flatnonzero(is_high & det_free)
            if len(lost) and len(dr):
                buf = np.minimum(cfg.lost_buffer_rate * (now - self._last_seen[lost]), cfg.lost_buffer_max)
                sim = buffered_iou(pred_boxes[lost], d.boxes[dr], buf)
                r, c = assign(1.0 - sim, sim >= cfg.match_biou_lost, 1.0 - cfg.match_biou_lost)
                track_det[lost[r]] = dr[c]
                det_free[dr[c]] = False
        # stage 3: tentative tracks vs high-score detections nobody took
        match(tentative, is_high, False, cfg.match_iou_tentative)
        # stage 3b: tentative tracks still unmatched vs low-score detections nobody took (the strict
        # stage-2 gate): a new object partly hidden in its second frame is confirmed, not restarted
        if cfg.tentative_low:
            match(tentative, ~is_high, False, cfg.match_iou_low)

        # -- correct matched tracks -------------------------------------------------------------
        matched = np.flatnonzero(track_det >= 0)
        if len(matched):
            rows = track_det[matched]
            z = meas_all[rows]
            self._mean[matched], self._cov[matched] = self._kf.update(
                self._mean[matched], self._cov[matched], z)
            if cfg.oc_reupdate:
                refound = matched[self._lost[matched]]
                if len(refound):
                    self._reupdate(refound, z[self._lost[matched]], now)
            self._cls_score[matched, d.class_ids[rows]] += d.scores[rows]
            self._hits[matched] += 1
            self._last_seen[matched] = now
            self._lost[matched] = False
            if cfg.oc_reupdate or cfg.oc_direction_weight > 0:  # state only the OC-SORT options read
                self._observe(matched, z, now)
        missed = track_det < 0
        self._hits[missed] = 0
        self._lost[missed & self._confirmed] = True

        # confirmation: ids are handed out only here, so tentative tracks never consume an id
        promote = ~self._confirmed & (self._hits >= cfg.min_hits)
        if promote.any():
            k = int(np.count_nonzero(promote))
            self._ids[promote] = np.arange(self._next_id, self._next_id + k, dtype=np.int64)
            self._next_id += k
            self._confirmed[promote] = True

        # -- report, then prune ------------------------------------------------------------------
        out_rows = np.flatnonzero(self._confirmed & (track_det >= 0))
        det_rows = track_det[out_rows]
        out_cls = self._cls_score[out_rows].argmax(axis=1).astype(np.int32) if len(out_rows) else \
            np.zeros((0,), np.int32)
        ttl = np.clip(cfg.lost_ttl_ratio * (self._last_seen - self._born), cfg.lost_ttl_s,
                      max(cfg.lost_ttl_s, cfg.lost_ttl_max_s))
        # a track seen in one frame only (confirmed at birth, never matched again) earned nothing
        ttl = np.where(self._last_seen > self._born, ttl, cfg.lost_ttl_once_s)
        expired = self._confirmed & self._lost & (now - self._last_seen > ttl)
        ended = self._ids[expired].copy()
        drop = expired | (~self._confirmed & missed)
        result = Tracks(
            ids=self._ids[out_rows].copy(),
            boxes=d.boxes[det_rows].astype(np.float32, copy=True),
            scores=d.scores[det_rows].astype(np.float32, copy=True),
            class_ids=out_cls,
            ended=ended,
        )
        if drop.any():
            self._keep(~drop)

        # -- new tentative tracks from unclaimed confident detections ----------------------------
        new = np.flatnonzero(det_free & (d.scores >= cfg.new_track_thresh))
        open_thresh = max(cfg.new_track_open_thresh, cfg.new_track_thresh)
        weak = d.scores[new] < open_thresh
        if weak.any():
            # a mid-score box starts a track only where a confirmed track covers part of it (an object
            # coming out from behind another); alone in open space it must score open_thresh
            cover = covered_by(d.boxes[new[weak]], to_boxes(self._mean[self._confirmed], cfg.motion))
            keep = np.ones(len(new), bool)
            keep[np.flatnonzero(weak)] = cover > cfg.new_track_cover
            new = new[keep]
        if len(new):
            self._append(meas_all[new], d.scores[new], d.class_ids[new], now)
            if cfg.min_hits <= 1:
                # confirmed at birth: report them in this very frame
                fresh = np.arange(len(self._ids) - len(new), len(self._ids))
                self._ids[fresh] = np.arange(self._next_id, self._next_id + len(new), dtype=np.int64)
                self._next_id += len(new)
                self._confirmed[fresh] = True
                result = Tracks(
                    ids=np.concatenate([result.ids, self._ids[fresh]]),
                    boxes=np.concatenate([result.boxes, d.boxes[new].astype(np.float32)]),
                    scores=np.concatenate([result.scores, d.scores[new].astype(np.float32)]),
                    class_ids=np.concatenate([result.class_ids, d.class_ids[new].astype(np.int32)]),
                    ended=result.ended,
                )
        return result
