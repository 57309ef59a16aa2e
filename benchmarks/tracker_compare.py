"""vap's tracker against the free ByteTracks, side by side, on the same detections.

Runs in one process, on identical input, every tracker with its defaults:

* ``vap``: ``vap_video.pipeline.tracking.ByteTracker`` with ``TrackerConfig()`` (or ``--config``),
* ``roboflow``: roboflow ``trackers`` ``ByteTrackTracker`` (``frame_rate`` = the sequence's),
* ``ultralytics``: Ultralytics' ``BYTETracker`` with its shipped ``bytetrack.yaml``.

The peers are benchmark dependencies only: ``benchmarks/tracker_compare.sh`` installs them into
their own virtual environment; vap's code never imports them. The set is
``vap_video.pipeline.tools.track_benchset.benchmark_set`` (real TUD trajectories and synthetic crowds through a
camera-like detector-noise model). HOTA, DetA, AssA, MOTA, IDF1 and IDSW come from TrackEval, per
sequence, per family and combined; vap's own evaluator is cross-checked against TrackEval's HOTA on
every sequence. Update time: median and p99 over every frame of the set, and on the speed scenes
of ``vap_video.pipeline.tools.track_eval.speed_scene`` at 10, 50 and 200 objects.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vap_video.pipeline.frames import Detections  # noqa: E402
from vap_video.pipeline.tools.mot import MotSequence  # noqa: E402
from vap_video.pipeline.tools.track_benchset import BenchSequence, benchmark_set, write_mot_dir  # noqa: E402
from vap_video.pipeline.tools.track_eval import evaluate_sequences, speed_scene  # noqa: E402
from vap_video.pipeline.tracking import TrackerConfig, make_tracker  # noqa: E402

# A tracker under test: built fresh per sequence from the frame rate, then fed frame by frame.
# step(boxes xyxy float32 (N,4), scores (N,), t seconds) -> (ids (M,), boxes xyxy (M,4), scores (M,))
Step = Callable[[np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray, np.ndarray]]


def make_vap(cfg: TrackerConfig) -> Callable[[float], Step]:
    def build(fps: float) -> Step:
        tr = make_tracker(cfg)

        def step(boxes: np.ndarray, scores: np.ndarray, t: float):
            out = tr.update(Detections(boxes, scores, np.zeros(len(boxes), np.int32)), t)
            return out.ids, out.boxes, out.scores
        return step
    return build


def make_roboflow() -> Callable[[float], Step]:
    import supervision as sv
    from trackers import ByteTrackTracker

    def build(fps: float) -> Step:
        tr = ByteTrackTracker(frame_rate=fps)

        def step(boxes: np.ndarray, scores: np.ndarray, t: float):
            det = sv.Detections(xyxy=boxes.astype(np.float32), confidence=scores.astype(np.float32),
                                class_id=np.zeros(len(boxes), int))
            out = tr.update(det)
            ok = out.tracker_id >= 0
            return out.tracker_id[ok], out.xyxy[ok], out.confidence[ok]
        return step
    return build


class _UltraBoxes:
    """The slice of Ultralytics' `Boxes` interface that its trackers read (NumPy-backed)."""

    def __init__(self, xyxy: np.ndarray, conf: np.ndarray) -> None:
        self.xyxy = xyxy
        self.conf = conf
        self.cls = np.zeros(len(conf), np.float32)
        wh = xyxy[:, 2:] - xyxy[:, :2]
        self.xywh = np.concatenate([xyxy[:, :2] + wh / 2, wh], axis=1)

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, idx):
        return _UltraBoxes(self.xyxy[idx], self.conf[idx])


def make_ultralytics() -> Callable[[float], Step]:
    from ultralytics.trackers.byte_tracker import BYTETracker
    from ultralytics.utils import YAML, IterableSimpleNamespace
    from ultralytics.utils.checks import check_yaml

    args = IterableSimpleNamespace(**YAML.load(check_yaml("bytetrack.yaml")))

    def build(fps: float) -> Step:
        tr = BYTETracker(args)

        def step(boxes: np.ndarray, scores: np.ndarray, t: float):
            out = tr.update(_UltraBoxes(boxes.astype(np.float32), scores.astype(np.float32)))
            if len(out) == 0:
                return np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
            return out[:, 4].astype(np.int64), out[:, :4].astype(np.float32), out[:, 5].astype(np.float32)
        return step
    return build


def run_sequence(build: Callable[[float], Step], seq: BenchSequence) -> tuple[MotSequence, np.ndarray]:
    """Feed every frame (empty ones too, so lost tracks age) and time each update."""
    step = build(seq.fps)
    slices = seq.dets.frame_slices()
    xyxy = seq.dets.boxes_xyxy.astype(np.float32)
    scores = seq.dets.scores.astype(np.float32)
    times = np.zeros(seq.frames)
    rows: list[tuple[np.ndarray, ...]] = []
    empty_b, empty_s = np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    for f in range(1, seq.frames + 1):
        sl = slices.get(f)
        b, s = (empty_b, empty_s) if sl is None else (xyxy[sl], scores[sl])
        t0 = time.perf_counter()
        ids, boxes, sc = step(b, s, (f - 1) / seq.fps)
        times[f - 1] = time.perf_counter() - t0
        if len(ids):
            boxes = np.asarray(boxes, np.float64)
            rows.append((np.full(len(ids), f), np.asarray(ids, np.int64),
                         np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1), np.asarray(sc)))
    if not rows:
        return MotSequence(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0),
                           np.zeros(0, np.int64)), times
    fr, ids, bx, sc = (np.concatenate(c) for c in zip(*rows))
    order = np.lexsort((ids, fr))
    return MotSequence(fr[order], ids[order], bx[order], sc[order], np.full(len(fr), -1)), times


def write_tracks(path: Path, seq: MotSequence) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{int(seq.frames[i])},{int(seq.ids[i])},{seq.boxes[i, 0]:.3f},{seq.boxes[i, 1]:.3f},"
             f"{seq.boxes[i, 2]:.3f},{seq.boxes[i, 3]:.3f},{float(seq.scores[i]):.4f},-1,-1,-1"
             for i in range(len(seq))]
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def trackeval_metrics(gt_root: Path, trk_root: Path, seqs: list[BenchSequence], trackers: Iterable[str]) -> dict:
    """TrackEval (MotChallenge2DBox, no preprocessing: every ground-truth box counts) on `seqs`.
    Returns {tracker: {seq or 'COMBINED': {metric: value}}}."""
    import trackeval

    seqmap = gt_root / f"seqmap-{abs(hash(tuple(s.name for s in seqs)))}.txt"
    seqmap.write_text("name\n" + "".join(s.name + "\n" for s in seqs))
    eval_cfg = {"USE_PARALLEL": False, "PRINT_RESULTS": False, "PRINT_ONLY_COMBINED": False,
                "PRINT_CONFIG": False, "TIME_PROGRESS": False, "DISPLAY_LESS_PROGRESS": True,
                "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False,
                "BREAK_ON_ERROR": True, "LOG_ON_ERROR": None}
    ds_cfg = {"GT_FOLDER": str(gt_root), "TRACKERS_FOLDER": str(trk_root), "OUTPUT_FOLDER": str(trk_root / "_out"),
              "TRACKERS_TO_EVAL": list(trackers), "BENCHMARK": "VAP", "SPLIT_TO_EVAL": "all",
              "SKIP_SPLIT_FOL": True, "SEQMAP_FILE": str(seqmap), "DO_PREPROC": False, "PRINT_CONFIG": False,
              "SEQ_INFO": {s.name: s.frames for s in seqs}}
    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR({"PRINT_CONFIG": False, "THRESHOLD": 0.5}),
               trackeval.metrics.Identity({"PRINT_CONFIG": False, "THRESHOLD": 0.5})]
    with contextlib.redirect_stdout(io.StringIO()):  # TrackEval prints progress whatever its config says
        res, _ = trackeval.Evaluator(eval_cfg).evaluate([trackeval.datasets.MotChallenge2DBox(ds_cfg)], metrics)
    out: dict = {}
    for trk, per_seq in res["MotChallenge2DBox"].items():
        out[trk] = {}
        for name, cls in per_seq.items():
            m = cls["pedestrian"]
            out[trk]["COMBINED" if name == "COMBINED_SEQ" else name] = {
                "HOTA": float(np.mean(m["HOTA"]["HOTA"])), "DetA": float(np.mean(m["HOTA"]["DetA"])),
                "AssA": float(np.mean(m["HOTA"]["AssA"])), "MOTA": float(m["CLEAR"]["MOTA"]),
                "IDF1": float(m["Identity"]["IDF1"]), "IDSW": int(m["CLEAR"]["IDSW"])}
    return out


def speed(builders: dict[str, Callable[[float], Step]], counts=(10, 50, 200), frames: int = 300) -> dict:
    """Median and p99 update time on identical speed scenes, trackers interleaved per count."""
    out: dict = {}
    for n in counts:
        scene = speed_scene(n, frames, 30.0, seed=0)
        out[n] = {}
        for name, build in builders.items():
            step = build(30.0)
            times = np.zeros(frames)
            for k, (d, _) in enumerate(scene):
                t0 = time.perf_counter()
                step(d.boxes, d.scores, k / 30.0)
                times[k] = time.perf_counter() - t0
            warm = times[10:] * 1e3
            out[n][name] = {"median_ms": float(np.median(warm)), "p99_ms": float(np.percentile(warm, 99))}
    return out


def _fmt(x: float) -> str:
    return f"{100 * x:.1f}"


def report(metrics: dict, timings: dict, seqs: list[BenchSequence], families: dict[str, list[str]],
           crosscheck: float, speed_res: dict, names: list[str]) -> str:
    lines = ["| set | tracker | HOTA | DetA | AssA | MOTA | IDF1 | IDSW | update median ms | p99 ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    groups = [(s.name, [s.name]) for s in seqs] + [(f"**{f}**", m) for f, m in families.items()]
    for label, members in groups:
        key = members[0] if len(members) == 1 else label
        for trk in names:
            m = metrics[trk][key]
            tt = np.concatenate([timings[trk][s] for s in members]) * 1e3
            lines.append(f"| {label} | {trk} | {_fmt(m['HOTA'])} | {_fmt(m['DetA'])} | {_fmt(m['AssA'])} | "
                         f"{_fmt(m['MOTA'])} | {_fmt(m['IDF1'])} | {m['IDSW']} | {np.median(tt):.3f} | "
                         f"{np.percentile(tt, 99):.3f} |")
    lines += ["", f"vap's own HOTA vs TrackEval, largest difference over all sequences and trackers: {crosscheck:.2e}",
              "", "| objects | " + " | ".join(f"{n} median ms | {n} p99 ms" for n in names) + " |",
              "|---:|" + "---:|---:|" * len(names)]
    for n, per in speed_res.items():
        lines.append(f"| {n} | " + " | ".join(f"{per[t]['median_ms']:.3f} | {per[t]['p99_ms']:.3f}" for t in names)
                     + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, help="vap tracker YAML (default: TrackerConfig defaults)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="scene and noise seeds")
    ap.add_argument("--seconds", type=float, default=16.0, help="length of each crowd sequence")
    ap.add_argument("--write-set", type=Path, help="also write the set in MOTChallenge layout here")
    ap.add_argument("--json", type=Path, help="write every number as JSON here")
    ap.add_argument("--only", nargs="*", default=["vap", "roboflow", "ultralytics"])
    ap.add_argument("--speed-only", type=int, metavar="ROUNDS", default=0,
                    help="only the update-time scenes, ROUNDS interleaved rounds (median of the rounds' medians)")
    args = ap.parse_args(argv)

    cfg = TrackerConfig()
    if args.config:
        import yaml
        cfg = TrackerConfig.model_validate(yaml.safe_load(args.config.read_text()) or {})
    makers = {"vap": lambda: make_vap(cfg), "roboflow": make_roboflow, "ultralytics": make_ultralytics}
    builders = {n: makers[n]() for n in args.only}
    names = list(builders)

    t0 = time.time()
    if args.speed_only:
        rounds = [speed(builders) for _ in range(args.speed_only)]
        print("| objects | " + " | ".join(f"{n} median ms" for n in names) + " | vap / roboflow |")
        print("|---:|" + "---:|" * len(names) + "---:|")
        for count in rounds[0]:
            med = {n: float(np.median([r[count][n]["median_ms"] for r in rounds])) for n in names}
            ratio = f"{med['vap'] / med['roboflow']:.2f}" if "vap" in med and "roboflow" in med else "-"
            print(f"| {count} | " + " | ".join(f"{med[n]:.3f}" for n in names) + f" | {ratio} |")
        print(f"\n{args.speed_only} rounds; load average {os.getloadavg()[0]:.2f}")
        return 0
    seqs = benchmark_set(tuple(args.seeds), args.seconds)
    families: dict[str, list[str]] = {}
    for s in seqs:
        families.setdefault(s.family, []).append(s.name)
    families["all"] = [s.name for s in seqs]
    with tempfile.TemporaryDirectory() as tmp:
        gt_root, trk_root = Path(tmp) / "gt", Path(tmp) / "trackers"
        for s in seqs:
            write_mot_dir(gt_root, s)
            if args.write_set:
                write_mot_dir(args.write_set, s)
        timings: dict[str, dict[str, np.ndarray]] = {n: {} for n in names}
        outputs: dict[str, dict[str, MotSequence]] = {n: {} for n in names}
        for s in seqs:
            for n in names:  # interleaved per sequence: a noisy neighbour hits every tracker alike
                tracks, times = run_sequence(builders[n], s)
                outputs[n][s.name], timings[n][s.name] = tracks, times
                write_tracks(trk_root / n / "data" / f"{s.name}.txt", tracks)
        metrics: dict = {n: {} for n in names}
        for fam, members in families.items():
            sub = [s for s in seqs if s.name in members]
            res = trackeval_metrics(gt_root, trk_root, sub, names)
            for n in names:
                metrics[n].update({k: v for k, v in res[n].items() if k != "COMBINED"})
                metrics[n][f"**{fam}**"] = res[n]["COMBINED"]
    diff = 0.0
    for s in seqs:
        for n in names:
            own = evaluate_sequences(s.gt, outputs[n][s.name])["hota"]
            diff = max(diff, abs(own - metrics[n][s.name]["HOTA"]))
    speed_res = speed(builders)
    text = report(metrics, timings, seqs, families, diff, speed_res, names)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}, NumPy {np.__version__}, load average "
               f"{os.getloadavg()[0]:.2f}, {time.time() - t0:.0f} s")
    print(text)
    print(f"\nmachine: {machine}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "metrics": metrics, "crosscheck_hota": diff,
                                         "speed": {str(k): v for k, v in speed_res.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
