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

Why one module of ~440 lines: `ByteTracker`'s steps (clean, predict, associate, correct, report,
births) all read and write the same stacked state arrays; split across modules they would pass
that state around or reach into each other's privates. The parts that stand alone already live
apart: the Kalman filter (`tracking_kalman`), assignment and IoU variants (`tracking_match`), and
the settings (`tracking_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from vap_video.pipeline.frames import Detections
from vap_video.pipeline.geometry import iou_matrix
from vap_video.pipeline.tracking_kalman import Kalman, to_boxes, to_measurement
from vap_video.pipeline.tracking_config import ULTRALYTICS_KEYS, TrackerConfig, map_ultralytics_tracker
from vap_video.pipeline.tracking_match import assign, buffered_iou, covered_by, dedup_detections

__all__ = ["ULTRALYTICS_KEYS", "ByteTracker", "Tracker", "TrackerConfig", "Tracks", "dedup_detections", "make_tracker",
           "map_ultralytics_tracker"]

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


class Tracker(Protocol):
    """What the runtime, `vap track` and the benchmarks need of a per-stream tracker.

    `update` advances to stream time `t` (seconds, monotonic per stream) with one frame's
    detections and returns the confirmed tracks matched in it; `active_count` is what the
    `vap_active_tracks` gauge shows. Construct one through `make_tracker`.
    """

    def update(self, dets: Detections, t: float) -> Tracks: ...

    def active_count(self) -> int: ...


def make_tracker(cfg: TrackerConfig) -> Tracker:
    """The tracker a `tracker:` section describes: the one place a tracker is constructed."""
    return ByteTracker(cfg)


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
            "_lost": np.zeros((n,), bool), "_hits": np.ones((n,), np.int32), "_last_seen": np.full((n,), t),
            "_born": np.full((n,), t),
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
        """Advance to stream time `t` (seconds) with this frame's detections (may be empty).

        One frame is five steps, each its own method: clean the detections, predict every track
        to now, associate in stages, correct the matched tracks, then report, prune and give
        births. The order is the algorithm: births come last so a new track never takes a box an
        existing one could have had."""
        now, dt, cadence = self._advance_clock(t)
        d = self._clean(dets)
        frame = _Frame(d, to_measurement(d.boxes, self.cfg.motion), self._predict(dt, cadence), len(self._ids))
        if len(frame.det_free) and len(self._ids):
            frame.iou = iou_matrix(frame.pred_boxes, d.boxes)
            frame.track_cls = self._cls_score.argmax(axis=1).astype(np.int32)
        self._associate(frame, now)
        missed = self._correct(frame, now)
        result = self._report_and_prune(frame, missed, now)
        return self._births(frame, result, now)

    def _advance_clock(self, t: float) -> tuple[float, float, float]:
        """(now, dt since the last update, the usual interval between updates)."""
        now = self._clock(t)
        dt = 0.0 if self._t_last is None else now - self._t_last
        cadence = self._last_dt if self._last_dt > 0 else dt
        if dt > 0:
            self._last_dt = dt
        self._t_last = now
        return now, dt, cadence

    def _clean(self, dets: Detections) -> Detections:
        """The detections the tracker can use: finite, non-empty boxes above `low_thresh`."""
        cfg = self.cfg
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
        return d

    def _predict(self, dt: float, cadence: float) -> np.ndarray:
        """Move every track to now; returns the predicted boxes."""
        if self._lost.any():
            # a coasting box should not keep shrinking or growing: freeze its size velocity
            self._mean[self._lost, 7] = 0.0
            if self.cfg.motion == "xywh":
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
        return to_boxes(self._mean, self.cfg.motion)

    def _associate(self, f: _Frame, now: float) -> None:
        """The association stages, in the order that gives each box to the track most likely its own."""
        cfg = self.cfg
        confirmed, tentative = np.flatnonzero(self._confirmed), np.flatnonzero(~self._confirmed)
        is_high = f.d.scores >= cfg.high_thresh
        # stage 1: confirmed tracks (tracked + lost) vs high-score detections, score-fused IoU
        self._match(f, confirmed, is_high, cfg.fuse_score, cfg.match_iou_high, momentum=True)
        # stage 2: every confirmed track still unmatched (tracked or lost) vs the low-score
        # detections, plain IoU with the strict gate. Lost tracks take part: an object coming out
        # from behind another is half hidden and scores low for a while, and waiting for a high
        # score until the ttl runs out is where the paper's variant loses identities in crowds.
        self._match(f, confirmed, ~is_high, False, cfg.match_iou_low)
        # stage 1b: lost tracks still unmatched vs the high-score detections left, buffered IoU that
        # widens with the time lost: the prediction of an object hidden for a while has drifted
        if cfg.lost_buffer_rate > 0:
            lost = np.flatnonzero(self._confirmed & self._lost & (f.track_det < 0))
            dr = np.flatnonzero(is_high & f.det_free)
            if len(lost) and len(dr):
                buf = np.minimum(cfg.lost_buffer_rate * (now - self._last_seen[lost]), cfg.lost_buffer_max)
                sim = buffered_iou(f.pred_boxes[lost], f.d.boxes[dr], buf)
                r, c = assign(1.0 - sim, sim >= cfg.match_biou_lost, 1.0 - cfg.match_biou_lost)
                f.pair(lost[r], dr[c])
        # stage 3: tentative tracks vs high-score detections nobody took
        self._match(f, tentative, is_high, False, cfg.match_iou_tentative)
        # stage 3b: tentative tracks still unmatched vs low-score detections nobody took (the strict
        # stage-2 gate): a new object partly hidden in its second frame is confirmed, not restarted
        if cfg.tentative_low:
            self._match(f, tentative, ~is_high, False, cfg.match_iou_low)

    def _match(self, f: _Frame, tracks: np.ndarray, dets_mask: np.ndarray, fuse: bool, gate: float,
               momentum: bool = False) -> None:
        """One IoU stage: still-unmatched `tracks` against still-free detections in `dets_mask`."""
        cfg = self.cfg
        tr = tracks[f.track_det[tracks] < 0]
        dr = np.flatnonzero(dets_mask & f.det_free)
        if not len(tr) or not len(dr):
            return
        assert f.iou is not None  # both sides are non-empty, so the matrix was built
        iou = f.iou[tr[:, None], dr[None, :]]
        sim = iou * f.d.scores[dr][None, :] if fuse else iou
        if cfg.per_class:
            sim = np.where(f.track_cls[tr][:, None] == f.d.class_ids[dr][None, :], sim, 0.0)
        cost = 1.0 - sim
        if momentum and cfg.oc_direction_weight > 0:
            cost = cost - cfg.oc_direction_weight * self._direction_bonus(tr, f.meas[dr], f.d.scores[dr])
        r, c = assign(cost, sim >= gate, 1.0 - gate)
        f.pair(tr[r], dr[c])

    def _correct(self, f: _Frame, now: float) -> np.ndarray:
        """Kalman-correct the matched tracks, mark the missed ones; returns the missed mask."""
        cfg = self.cfg
        matched = np.flatnonzero(f.track_det >= 0)
        if len(matched):
            rows = f.track_det[matched]
            z = f.meas[rows]
            self._mean[matched], self._cov[matched] = self._kf.update(self._mean[matched], self._cov[matched], z)
            if cfg.oc_reupdate:
                refound = matched[self._lost[matched]]
                if len(refound):
                    self._reupdate(refound, z[self._lost[matched]], now)
            self._cls_score[matched, f.d.class_ids[rows]] += f.d.scores[rows]
            self._hits[matched] += 1
            self._last_seen[matched] = now
            self._lost[matched] = False
            if cfg.oc_reupdate or cfg.oc_direction_weight > 0:  # state only the OC-SORT options read
                self._observe(matched, z, now)
        missed = f.track_det < 0
        self._hits[missed] = 0
        self._lost[missed & self._confirmed] = True
        self._confirm(~self._confirmed & (self._hits >= cfg.min_hits))
        return missed

    def _confirm(self, rows: np.ndarray) -> None:
        """Hand out ids (the only place they are): a tentative track never consumes one."""
        k = int(np.count_nonzero(rows)) if rows.dtype == bool else len(rows)
        if k:
            self._ids[rows] = np.arange(self._next_id, self._next_id + k, dtype=np.int64)
            self._next_id += k
            self._confirmed[rows] = True

    def _report_and_prune(self, f: _Frame, missed: np.ndarray, now: float) -> Tracks:
        """The confirmed tracks matched in this frame; then drop expired and failed tracks."""
        cfg = self.cfg
        out_rows = np.flatnonzero(self._confirmed & (f.track_det >= 0))
        det_rows = f.track_det[out_rows]
        out_cls = self._cls_score[out_rows].argmax(axis=1).astype(np.int32) if len(out_rows) else \
            np.zeros((0,), np.int32)
        ttl = np.clip(cfg.lost_ttl_ratio * (self._last_seen - self._born), cfg.lost_ttl_s,
                      max(cfg.lost_ttl_s, cfg.lost_ttl_max_s))
        # a track seen in one frame only (confirmed at birth, never matched again) earned nothing
        ttl = np.where(self._last_seen > self._born, ttl, cfg.lost_ttl_once_s)
        expired = self._confirmed & self._lost & (now - self._last_seen > ttl)
        result = Tracks(
            ids=self._ids[out_rows].copy(),
            boxes=f.d.boxes[det_rows].astype(np.float32, copy=True),
            scores=f.d.scores[det_rows].astype(np.float32, copy=True),
            class_ids=out_cls,
            ended=self._ids[expired].copy(),
        )
        drop = expired | (~self._confirmed & missed)
        if drop.any():
            self._keep(~drop)
        return result

    def _births(self, f: _Frame, result: Tracks, now: float) -> Tracks:
        """New tracks from unclaimed confident detections; with `min_hits` 1 they are reported now."""
        cfg = self.cfg
        d = f.d
        new = np.flatnonzero(f.det_free & (d.scores >= cfg.new_track_thresh))
        open_thresh = max(cfg.new_track_open_thresh, cfg.new_track_thresh)
        weak = d.scores[new] < open_thresh
        if weak.any():
            # a mid-score box starts a track only where a confirmed track covers part of it (an object
            # coming out from behind another); alone in open space it must score open_thresh
            cover = covered_by(d.boxes[new[weak]], to_boxes(self._mean[self._confirmed], cfg.motion))
            keep = np.ones(len(new), bool)
            keep[np.flatnonzero(weak)] = cover > cfg.new_track_cover
            new = new[keep]
        if not len(new):
            return result
        self._append(f.meas[new], d.scores[new], d.class_ids[new], now)
        if cfg.min_hits > 1:
            return result
        fresh = np.arange(len(self._ids) - len(new), len(self._ids))
        self._confirm(fresh)
        return Tracks(
            ids=np.concatenate([result.ids, self._ids[fresh]]),
            boxes=np.concatenate([result.boxes, d.boxes[new].astype(np.float32)]),
            scores=np.concatenate([result.scores, d.scores[new].astype(np.float32)]),
            class_ids=np.concatenate([result.class_ids, d.class_ids[new].astype(np.int32)]),
            ended=result.ended,
        )


@dataclass(slots=True)
class _Frame:
    """One update's working state: the cleaned detections and who has been paired with whom.

    `track_det[i]` is the detection row track `i` took (-1: none yet); `det_free[j]` says whether
    detection `j` is still unclaimed. `iou` is every track against every detection, computed once;
    each stage reads its block of it."""

    d: Detections
    meas: np.ndarray
    pred_boxes: np.ndarray
    n_tracks: int
    iou: np.ndarray | None = None
    track_cls: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    track_det: np.ndarray = field(init=False)
    det_free: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.track_det = np.full((self.n_tracks,), -1, np.intp)
        self.det_free = np.ones(len(self.d), bool)

    def pair(self, tracks: np.ndarray, dets: np.ndarray) -> None:
        self.track_det[tracks] = dets
        self.det_free[dets] = False
