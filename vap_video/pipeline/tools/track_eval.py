"""`vap eval track` and the tracker benchmarks: speed on synthetic crowds, quality on synthetic
MOT scenes, tracker configs side by side, and the analytics step's cost.

The metrics themselves (CLEAR MOT, IDF1, HOTA) are in `vap_video.pipeline.tools.track_metrics`,
re-exported here with `cli_track` (`vap_video.pipeline.tools.mot`), so existing imports keep working.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from vap_video.pipeline.frames import Detections
from vap_video.pipeline.tools.mot import MotFormatError, MotSequence, cli_track
from vap_video.pipeline.tools.track_metrics import HOTA_ALPHAS, evaluate_mot, evaluate_sequences, format_metrics
from vap_video.pipeline.tracking import TrackerConfig, make_tracker

__all__ = ["evaluate_mot", "evaluate_sequences", "synthetic_mot", "format_metrics", "cli_eval", "cli_track",
           "bench_tracker", "speed_scene", "bench_analytics", "compare_trackers", "HOTA_ALPHAS"]


def cli_eval(argv: list[str]) -> int:
    """`vap eval track GT PRED [--iou 0.5] [--json]`.

    `argv` is what follows `vap eval`, i.e. it starts with `track` (the only kind of evaluation
    here); what follows `vap eval track` is accepted too. Returns the exit code (0 ok, 2 user
    error such as a missing or malformed file).
    """
    if argv[:1] == ["track"]:
        argv = argv[1:]
    ap = argparse.ArgumentParser(prog="vap eval track",
                                 description="Score tracks against ground truth (MOTChallenge files).")
    ap.add_argument("gt", help="ground truth gt.txt")
    ap.add_argument("pred", help="predicted tracks (e.g. from `vap track`)")
    ap.add_argument("--iou", type=float, default=0.5, help="match threshold for CLEAR MOT and IDF1")
    ap.add_argument("--json", action="store_true", help="print all metrics as JSON instead of a table")
    args = ap.parse_args(argv)
    try:
        m = evaluate_mot(args.gt, args.pred, args.iou)
    except (MotFormatError, ValueError) as exc:
        print(f"vap eval track: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
    else:
        print(format_metrics(Path(args.pred).parent.name or Path(args.pred).stem, m))
    return 0


def speed_scene(n: int, frames: int = 600, fps: float = 30.0, seed: int = 0) -> list[tuple[Detections, np.ndarray]]:
    """The timing scene of `bench_tracker`: per frame the detections and, for each of the first
    rows, the object that produced it (the rest are spurious boxes). Shared with
    `benchmarks/tracker_compare.py` so every tracker is timed on identical input."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(30, 90, (n, 2)) * np.array([0.5, 1.0])
    pos = rng.uniform([0, 0], [1920, 1080] - size, (n, 2))
    vel = rng.uniform(30, 150, (n, 2)) * rng.choice([-1, 1], (n, 2))
    scenes: list[tuple[Detections, np.ndarray]] = []
    for _ in range(frames):
        pos += vel / fps
        hit_low = pos < 0
        hit_high = pos + size > [1920, 1080]
        vel[hit_low | hit_high] *= -1
        pos = np.clip(pos, 0, [1920, 1080] - size)
        seen = rng.random(n) > 0.1
        boxes = np.concatenate([pos, pos + size], 1)[seen] + rng.normal(0, 1.0, (int(seen.sum()), 4))
        scores = np.where(rng.random(int(seen.sum())) < 0.1, rng.uniform(0.15, 0.45), rng.uniform(0.6, 0.95))
        n_spur = rng.poisson(0.05 * n)
        spur_xy = rng.uniform([0, 0], [1880, 1000], (n_spur, 2))
        spur = np.concatenate([spur_xy, spur_xy + rng.uniform(20, 80, (n_spur, 2))], 1)
        d = Detections(np.concatenate([boxes, spur]).astype(np.float32),
                       np.concatenate([scores, rng.uniform(0.6, 0.8, n_spur)]).astype(np.float32),
                       np.zeros(int(seen.sum()) + n_spur, np.int32))
        scenes.append((d, np.flatnonzero(seen)))
    return scenes


def bench_tracker(counts: tuple[int, ...] = (10, 50, 200), frames: int = 600, fps: float = 30.0,
                  seed: int = 0, cfg: TrackerConfig | None = None) -> list[dict]:
    """Time the tracker's `update` on synthetic crowds of `counts` objects.

    The scene is built to exercise every path, not just easy matches: objects move at constant
    velocity (30-150 px/s) and bounce off the 1920x1080 frame, 10 % of detections are missed,
    10 % come with a low score (the second association stage), boxes carry 1 px noise, and
    5 % extra spurious boxes appear per frame (tentative tracks that die). Detections are
    generated before timing, so only the tracker is measured. Returns per count: median, p99 and
    mean update time in milliseconds, and the ID switches of the run (a sanity check that the
    timed tracker is also tracking correctly).
    """
    import time

    results = []
    for n in counts:
        scenes = speed_scene(n, frames, fps, seed)
        tracker = make_tracker(cfg or TrackerConfig())
        times = np.zeros(frames)
        last_id: dict[int, int] = {}
        switches = 0
        max_id = 0
        for k, (d, gt_rows) in enumerate(scenes):
            t0 = time.perf_counter()
            out = tracker.update(d, k / fps)
            times[k] = time.perf_counter() - t0
            if len(out) and len(gt_rows):  # map reported boxes back to the object that produced them
                real = d.boxes[: len(gt_rows)]
                hit = np.all(np.abs(out.boxes[:, None, :] - real[None, :, :]) < 1e-3, axis=2)
                for tid, row, any_hit in zip(out.ids.tolist(), hit.argmax(axis=1).tolist(), hit.any(axis=1)):
                    if not any_hit:
                        continue  # a spurious box that became a track
                    obj = int(gt_rows[row])
                    if obj in last_id and last_id[obj] != tid:
                        switches += 1
                    last_id[obj] = tid
            if len(out):
                max_id = max(max_id, int(out.ids.max()))
        warm = times[10:] * 1000.0
        results.append({"objects": n, "frames": frames, "median_ms": float(np.median(warm)),
                        "p99_ms": float(np.percentile(warm, 99)), "mean_ms": float(warm.mean()),
                        "id_switches": switches, "track_ids": max_id})
    return results


def synthetic_mot(n_objects: int = 20, frames: int = 600, fps: float = 30.0, seed: int = 0,
                  occluders: int = 3, turn_s: float = 2.0, size: tuple[int, int] = (1920, 1080)
                  ) -> tuple[MotSequence, MotSequence]:
    """A labelled synthetic sequence for tuning the tracker: (ground truth, detections).

    People-shaped boxes walk at 40-160 px/s and change heading at random (mean every `turn_s`
    seconds), so motion is only piecewise linear. `occluders` vertical pillars (120 px wide) hide
    every object whose centre is behind them: no detection at all, the hard case for ids. Visible
    objects are missed 5 % of the time, 10 % of detections have a low score (0.15-0.45, partly
    occluded), boxes carry 2 px noise, and ~1 spurious box appears every 3 frames.
    """
    rng = np.random.default_rng(seed)
    w_img, h_img = size
    wh = np.stack([rng.uniform(25, 50, n_objects), rng.uniform(60, 130, n_objects)], 1)
    pos = rng.uniform([0, 0], [w_img, h_img] - wh, (n_objects, 2))
    speed = rng.uniform(40, 160, n_objects)
    heading = rng.uniform(0, 2 * np.pi, n_objects)
    pillars = rng.uniform(200, w_img - 320, occluders)
    gt_rows: list[tuple] = []
    det_rows: list[tuple] = []
    for f in range(1, frames + 1):
        turn = rng.random(n_objects) < 1.0 / (turn_s * fps)
        heading[turn] += rng.normal(0, 1.0, int(turn.sum()))
        vel = np.stack([np.cos(heading), np.sin(heading)], 1) * speed[:, None]
        pos += vel / fps
        low, high = pos < 0, pos + wh > [w_img, h_img]
        heading = np.where(low[:, 0] | high[:, 0], np.pi - heading, heading)
        heading = np.where(low[:, 1] | high[:, 1], -heading, heading)
        pos = np.clip(pos, 0, [w_img, h_img] - wh)
        cx = pos[:, 0] + wh[:, 0] / 2
        hidden = np.any((cx[:, None] > pillars[None, :]) & (cx[:, None] < pillars[None, :] + 120), axis=1)
        for i in range(n_objects):
            gt_rows.append((f, i + 1, pos[i, 0], pos[i, 1], wh[i, 0], wh[i, 1], 1.0))
            if hidden[i] or rng.random() < 0.05:
                continue
            nz = rng.normal(0, 2.0, 4)
            score = rng.uniform(0.15, 0.45) if rng.random() < 0.1 else rng.uniform(0.55, 0.95)
            det_rows.append((f, -1, pos[i, 0] + nz[0], pos[i, 1] + nz[1], wh[i, 0] + nz[2], wh[i, 1] + nz[3], score))
        if rng.random() < 1 / 3:
            xy = rng.uniform([0, 0], [w_img - 60, h_img - 120])
            det_rows.append((f, -1, xy[0], xy[1], rng.uniform(20, 60), rng.uniform(40, 120), rng.uniform(0.5, 0.75)))

    def to_seq(rows: list[tuple]) -> MotSequence:
        a = np.array(rows, np.float64).reshape(-1, 7)
        return MotSequence(a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 2:6].copy(), a[:, 6].copy(),
                           np.full(len(a), -1, np.int64))

    return to_seq(gt_rows), to_seq(det_rows)


def compare_trackers(configs: dict[str, TrackerConfig], seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
                     n_objects: int = 20, frames: int = 450, fps: float = 30.0) -> dict[str, dict[str, float]]:
    """Mean HOTA, IDF1, MOTA, AssA and ID switches of each tracker config over the same
    `synthetic_mot` sequences, so options (OC-SORT terms, ttl, motion model) are judged on
    identical data."""
    from vap_video.pipeline.tools.mot import track_sequence

    scenes = [synthetic_mot(n_objects=n_objects, frames=frames, fps=fps, seed=s) for s in seeds]
    out: dict[str, dict[str, float]] = {}
    for name, cfg in configs.items():
        rows = [evaluate_sequences(gt, track_sequence(det, cfg, fps)) for gt, det in scenes]
        out[name] = {k: float(np.mean([r[k] for r in rows])) for k in ("hota", "idf1", "mota", "assa", "id_switches")}
    return out


def bench_analytics(counts: tuple[int, ...] = (10, 50, 200), frames: int = 300, fps: float = 30.0,
                    seed: int = 0) -> list[dict]:
    """Time `StreamAnalytics.update` with 2 zones, 2 lines, stationary detection and periodic
    updates on, for `counts` tracks moving through a 1920x1080 frame (events built and counted).
    Returns per count: median and p99 ms per frame, and events emitted."""
    import time

    from vap_video.pipeline.analytics import AnalyticsConfig, LineConfig, StreamAnalytics, ZoneConfig
    from vap_video.pipeline.tracking import Tracks

    cfg = AnalyticsConfig(
        zones=[ZoneConfig(name="a", relative=True, loiter_s=5,
                          polygon=[(0.1, 0.1), (0.5, 0.1), (0.5, 0.9), (0.1, 0.9)]),
               ZoneConfig(name="b", relative=True, polygon=[(0.5, 0.2), (0.9, 0.2), (0.9, 0.8), (0.5, 0.8)])],
        lines=[LineConfig(name="l1", relative=True, points=((0.3, 0.0), (0.3, 1.0))),
               LineConfig(name="l2", relative=True, points=((0.0, 0.5), (1.0, 0.5)))],
        stationary_s=10, update_interval_s=1.0)
    results = []
    for n in counts:
        an = StreamAnalytics("bench", cfg, ["object"])
        rng = np.random.default_rng(seed)
        pos = rng.uniform(0, 1800, (n, 2))
        vel = rng.uniform(-100, 100, (n, 2))
        times = np.zeros(frames)
        n_events = 0
        for f in range(frames):
            p = np.mod(pos + vel * f / fps, 1800)
            tr = Tracks(ids=np.arange(1, n + 1, dtype=np.int64),
                        boxes=np.concatenate([p, p + [40, 90]], 1).astype(np.float32),
                        scores=np.full(n, 0.9, np.float32), class_ids=np.zeros(n, np.int32))
            t0 = time.perf_counter()
            n_events += len(an.update(tr, f / fps, 1.7e9 + f / fps, (1080, 1920)))
            times[f] = time.perf_counter() - t0
        warm = times[10:] * 1000.0
        results.append({"tracks": n, "median_ms": float(np.median(warm)), "p99_ms": float(np.percentile(warm, 99)),
                        "events": n_events})
    return results
