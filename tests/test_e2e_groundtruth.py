"""End to end with the shipped model on generated videos: events against the scene's ground truth.

The scene generator writes each video with its MOTChallenge ground truth. We run the whole
pipeline (decode, the shipped ONNX model, tracker, analytics) with a vertical line through the
middle of the frame, and compare the `line.cross` events with the crossings computed from the
ground-truth trajectories, by class and direction. Crossings are the events operators count, and
unlike raw track counts they are robust to a track fragmenting. Measured with the previous shipped
model (seeds 3,5,7,9): 12 of 13 predicted crossings correct, 12 of 20 true crossings found;
the bounds below (80 % precision, 50 % recall; margin for batch-composition noise) fail for an untrained or
mis-wired model.

Tracks are checked against the ground truth too: each `track.start` must begin on a real object
(IoU >= 0.5 with a ground-truth box in its frame; at most 10 % may not), and there may be at most
two tracks per object tracked. With the model retrained on 2026-12-04: 56 starts, 2 on no object,
54 on 35 objects (1.5 per object; one fast car, about 40 px a frame, split into 7). The earlier bound,
at most 2x the 26 objects seen well for 10 frames, failed for it only because the better model
also tracks the partly hidden and briefly seen objects.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from vap_video.engines.synth import CLASS_NAMES, write_video
from vap_video.pipeline.events import load_schema
from vap_video.pipeline.model_config import SHIPPED_MODEL
from vap_video.pipeline.runtime import Pipeline
from vap_video.pipeline.settings import parse_settings

W, H, FPS, FRAMES = 640, 360, 10, 150
SEEDS = (3, 5, 7, 9)
HYSTERESIS = 8.0


def gt_crossings(gt: np.ndarray) -> collections.Counter:
    """(class, direction) crossings of x = W/2 by the ground-truth box centres, with hysteresis.

    The line is drawn bottom to top, so 'in' (left to right of A->B as drawn) is moving right.
    """
    out: collections.Counter = collections.Counter()
    for tid in np.unique(gt[:, 1]):
        rows = gt[gt[:, 1] == tid]
        rows = rows[np.argsort(rows[:, 0])]
        side = None
        for r in rows:
            if r[8] < 0.5:  # mostly hidden: the detector cannot be asked to see it
                continue
            cx = r[2] + r[4] / 2
            s = -1 if cx < W / 2 - HYSTERESIS else (1 if cx > W / 2 + HYSTERESIS else None)
            if s is None:
                continue
            if side is not None and s != side:
                out[(CLASS_NAMES[int(r[7])], "in" if s > 0 else "out")] += 1
            side = s
    return out


def gt_object_at_start(gt: np.ndarray, start: dict) -> int | None:
    """The ground-truth id whose box at the start's frame overlaps the started track's box at IoU
    >= 0.5, or None when the track starts on nothing real (a false track)."""
    rows = gt[gt[:, 0] == start["frame_index"] + 1]  # MOT frames count from 1
    if not len(rows):
        return None
    x1, y1, x2, y2 = start["box"]
    gx1, gy1, gx2, gy2 = rows[:, 2], rows[:, 3], rows[:, 2] + rows[:, 4], rows[:, 3] + rows[:, 5]
    inter = np.clip(np.minimum(x2, gx2) - np.maximum(x1, gx1), 0, None) * \
        np.clip(np.minimum(y2, gy2) - np.maximum(y1, gy1), 0, None)
    iou = inter / ((x2 - x1) * (y2 - y1) + rows[:, 4] * rows[:, 5] - inter)
    best = int(np.argmax(iou))
    return int(rows[best, 1]) if iou[best] >= 0.5 else None


def visible_tracks(gt: np.ndarray) -> int:
    """Ground-truth tracks seen well (visibility >= 0.6, >= 32 px tall) for at least 10 frames."""
    good = gt[(gt[:, 8] >= 0.6) & (gt[:, 5] >= 32)]
    ids, counts = np.unique(good[:, 1], return_counts=True)
    return int((counts >= 10).sum())


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED_MODEL.exists(),
                    reason="the shipped model vap_video/engines/models/vap-synth-n.onnx is missing")
def test_line_crossings_and_tracks_match_ground_truth(tmp_path: Path):
    line = {"name": "middle", "relative": True, "points": [[0.5, 1.0], [0.5, 0.0]]}
    streams, truth, visible, gts = [], collections.Counter(), 0, {}
    for seed in SEEDS:
        video = write_video(tmp_path / f"s{seed}.mp4", seed=seed, frames=FRAMES, width=W, height=H, fps=FPS,
                            num_objects=5)
        gt = gts[f"s{seed}"] = np.loadtxt(tmp_path / f"s{seed}.gt.txt", delimiter=",", ndmin=2)
        truth += collections.Counter({(f"s{seed}", *k): v for k, v in gt_crossings(gt).items()})
        visible += visible_tracks(gt)
        streams.append({"name": f"s{seed}", "url": str(video), "analytics": {"lines": [line]}})
    settings = parse_settings({"streams": streams, "model": {"path": str(SHIPPED_MODEL)},
                               "sinks": [{"path": str(tmp_path / "events.jsonl")}], "server": {"enabled": False}})
    p = Pipeline(settings)
    p.start()
    try:
        assert p.wait(300), "file streams did not finish"
    finally:
        p.stop()
    for s in streams:  # every frame of every file went through
        assert p.metrics.registry.get_sample_value("vap_frames_processed_total", {"stream": s["name"]}) == FRAMES

    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    schema = load_schema()
    for e in events:
        jsonschema.validate(e, schema)
    predicted = collections.Counter((e["stream"], e["class"], e["direction"])
                                    for e in events if e["type"] == "line.cross")
    matched = sum((predicted & truth).values())
    n_pred, n_true = sum(predicted.values()), sum(truth.values())
    assert n_true >= 10, "the generated scenes should contain crossings to compare"
    assert matched >= 0.8 * n_pred, f"wrong crossings: predicted {dict(predicted)}, truth {dict(truth)}"
    assert matched >= 0.5 * n_true, f"missed crossings: predicted {dict(predicted)}, truth {dict(truth)}"

    starts = [e for e in events if e["type"] == "track.start"]
    ends = {e["track_id"] for e in events if e["type"] == "track.end"}
    assert {e["track_id"] for e in starts} == ends          # every started track is closed
    assert len(starts) >= 0.7 * visible                     # the well-seen objects get tracks
    objects = [gt_object_at_start(gts[e["stream"]], e) for e in starts]
    false = objects.count(None)
    tracked = {(e["stream"], o) for e, o in zip(starts, objects, strict=True) if o is not None}
    assert false <= 0.1 * len(starts), f"{false} of {len(starts)} tracks start on no real object"
    assert len(starts) - false <= 2.0 * len(tracked), \
        f"fragmented: {len(starts) - false} tracks for {len(tracked)} objects"
    assert {e["class"] for e in starts} >= {c for (_, c, _) in truth}  # every class that crossed was seen
