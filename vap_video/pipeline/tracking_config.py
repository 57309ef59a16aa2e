"""The tracker's settings (`tracker:`), and the mapping from an Ultralytics tracker YAML onto them.

Apart from the tracker itself so the settings read in one place with their defaults and the
measured reasons for them (`benchmarks/tracker.md`).
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, model_validator

from vap_video.pipeline.config import Strict

_log = logging.getLogger("vap_video.pipeline.tracking")  # the name tests and users filter the mapping notes by


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
        0.5, ge=0, le=1, description="Stage 2 gate: minimum plain IoU between a still-unmatched confirmed track "
        "(tracked or lost) and a low-score detection (strict, because low-score boxes are unreliable).")
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
    def _ordered(self) -> TrackerConfig:
        if self.low_thresh > self.high_thresh:
            raise ValueError(f"tracker: low_thresh ({self.low_thresh}) must not exceed high_thresh "
                             f"({self.high_thresh})")
        if self.new_track_thresh < self.high_thresh:
            raise ValueError(f"tracker: new_track_thresh ({self.new_track_thresh}) must be at least high_thresh "
                             f"({self.high_thresh}); only high-score detections can start tracks")
        return self
