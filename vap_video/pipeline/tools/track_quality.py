"""Tracker quality on the scene generator's videos: real detector output vs a known noise model.

`benchmarks/tracker.md` scores the tracker on `synthetic_mot`, where detections are made up from
the ground truth. That says how the association behaves, not how the whole chain does on pixels.
Here every sequence is a real H.264 video from `vap_video.engines.synth.write_video` with its ground truth,
and the tracker is fed from two sources:

* **model**: the shipped detector run on the decoded frames (`detect_video`), exactly as the
  runtime does it (same backend, letterbox, threshold and inverse letterbox), and
* **perturbed GT**: the ground truth passed through a documented noise model (`perturb_gt`), so
  a drop in HOTA can be split into "the detector misses/misplaces boxes" (DetA) and "the tracker
  loses identities" (AssA) by comparing the two sources on identical scenes.

Runs without torch (ONNX Runtime). `python -m vap_video.pipeline.tools.track_quality --help` for the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vap_video.engines.contract import ModelContractError
from vap_video.pipeline.tools.mot import MotFormatError, MotSequence, hide_in_bursts, read_mot, track_sequence
from vap_video.pipeline.tracking import TrackerConfig

__all__ = ["detect_video", "perturb_gt", "evaluate_on_synthetic", "format_table", "main",
           "JITTER_REF_PX", "METRIC_KEYS"]

#: `perturb_gt`'s `jitter_px` is the standard deviation for a box whose geometric mean side
#: sqrt(w*h) is this many pixels; other boxes scale linearly (detector error grows with size).
JITTER_REF_PX = 100.0

#: Columns of a result row, in table order (fractions except the count of ID switches).
METRIC_KEYS = ("hota", "deta", "assa", "idf1", "mota", "id_switches")


def _empty_seq() -> MotSequence:
    return MotSequence(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0),
                       np.zeros(0, np.int64))


def _rows_to_seq(frames: list[np.ndarray], boxes: list[np.ndarray], scores: list[np.ndarray],
                 classes: list[np.ndarray]) -> MotSequence:
    """Concatenate per-frame pieces into a detection MotSequence (id -1), sorted by frame."""
    if not frames or sum(len(f) for f in frames) == 0:
        return _empty_seq()
    f = np.concatenate(frames).astype(np.int64)
    seq = MotSequence(f, np.full(len(f), -1, np.int64), np.concatenate(boxes).astype(np.float64),
                      np.concatenate(scores).astype(np.float64), np.concatenate(classes).astype(np.int64))
    return seq.select(np.argsort(seq.frames, kind="stable"))


def detect_video(video: Path, model: Path, conf: float = 0.1, batch: int = 8) -> MotSequence:
    """Run a vap engine over every frame of a video file and return MOTChallenge detection rows.

    The rows are `frame,-1,x,y,w,h,score,class` as a `MotSequence` (1-based frames in decode
    order, boxes top-left/size in source pixels), ready for `track_sequence` or `write_mot`. The
    path is the runtime's own (`load_backend`, `BatchPreprocessor`, `Postprocessor`) so the
    numbers describe what the pipeline would see. `conf` defaults low (0.1) because ByteTrack's
    second stage lives on the 0.1-0.5 band; a higher cut would hide that stage from the benchmark.
    """
    import av

    from vap_video.engines.backends import load_backend
    from vap_video.pipeline.postprocess import Postprocessor
    from vap_video.pipeline.preprocess import BatchPreprocessor

    video, model = Path(video), Path(model)
    if not video.is_file():
        raise FileNotFoundError(f"video {video} does not exist; write one with vap_video.engines.synth.write_video "
                                "or pass the path of an existing file")
    if not 0.0 <= conf <= 1.0:
        raise ValueError(f"conf must be in [0, 1], got {conf}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    backend = load_backend(model)
    try:
        info = backend.info
        pre = BatchPreprocessor(info.input_hw, info.stride, rect=info.dynamic_hw)
        post = Postprocessor(list(info.names), conf)
        out_f: list[np.ndarray] = []
        out_b: list[np.ndarray] = []
        out_s: list[np.ndarray] = []
        out_c: list[np.ndarray] = []
        pending: list[np.ndarray] = []
        first_frame = 1

        def flush() -> None:
            nonlocal first_frame
            images, transforms = pre(pending)
            for k, det in enumerate(post(backend.infer(images), transforms)):
                xyxy = det.boxes.astype(np.float64)
                out_f.append(np.full(len(det), first_frame + k, np.int64))
                out_b.append(np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1))
                out_s.append(det.scores.astype(np.float64))
                out_c.append(det.class_ids.astype(np.int64))
            first_frame += len(pending)
            pending.clear()

        try:
            container = av.open(str(video), mode="r")
        except av.error.FFmpegError as exc:
            raise ValueError(f"cannot open video {video}: {exc}") from None
        try:
            if not container.streams.video:
                raise ValueError(f"{video} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for vf in container.decode(stream):
                pending.append(vf.to_ndarray(format="rgb24"))
                if len(pending) == batch:
                    flush()
            if pending:
                flush()
        finally:
            container.close()
    finally:
        backend.close()
    return _rows_to_seq(out_f, out_b, out_s, out_c)


def perturb_gt(gt_rows: MotSequence, seed: int, miss: float = 0.1, jitter_px: float = 2.0,
               fp_per_frame: float = 0.3, gap_frames: tuple[int, int] = (3, 12), gap_rate: float = 0.05,
               low_score_frac: float = 0.15, frame_size: tuple[int, int] | None = None) -> MotSequence:
    """Turn ground truth into detector-like rows with a known, documented noise model.

    Why: with real detections a low HOTA does not say whether the detector or the tracker is to
    blame. Feeding the tracker ground truth damaged in controlled ways gives a reference whose
    detection quality is known, on the very same scenes.

    The model, applied per ground-truth track (rows with score 0, the MOT "ignore" flag, are
    dropped first), all draws from one `numpy.random.default_rng(seed)`, so the output is a pure
    function of the inputs:

    1. **Occlusion gaps.** Walking a track's frames in order, outside a gap a gap starts with
       probability p per frame and lasts L frames, L uniform in `gap_frames` (inclusive). p is set
       so the long-run fraction of hidden frames is `gap_rate`: p = r / (E[L] (1 - r)). Hidden
       frames produce no box at all (the hard case for identities).
    2. **Misses.** Every remaining box is dropped independently with probability `miss`.
    3. **Jitter.** Centre, width and height each get Gaussian noise with standard deviation
       `jitter_px * sqrt(w*h) / JITTER_REF_PX` (so `jitter_px` is the sigma in pixels of a
       100x100 box); widths and heights are kept at least 1 px.
    4. **Scores.** A fraction `low_score_frac` of the true boxes score uniformly in [0.1, 0.5)
       (the band ByteTrack's second stage uses, like partly occluded objects); the rest score
       uniformly in [0.5, 0.95].
    5. **False positives.** Each frame from 1 to the last ground-truth frame gets
       Poisson(`fp_per_frame`) boxes whose size is that of a random ground-truth box, placed
       uniformly inside the frame (`frame_size` (width, height), default the extent of the
       ground truth), class drawn from the ground-truth classes, score uniform in [0.1, 0.7]
       (mostly low, some high enough to start tentative tracks).

    Returns detection rows (id -1, class kept) sorted by frame.
    """
    lo, hi = (int(v) for v in gap_frames)
    _check_noise_model(miss, jitter_px, fp_per_frame, (lo, hi), gap_rate, low_score_frac)
    rng = np.random.default_rng(seed)
    gt = gt_rows.select(gt_rows.scores != 0)
    if len(gt) == 0:
        return _empty_seq()
    # The steps draw from `rng` in this order; changing it changes every perturbed benchmark.
    keep = _occlusion_keep(gt, rng, (lo, hi), gap_rate)                # 1. occlusion gaps
    keep &= rng.random(len(gt)) >= miss                                 # 2. independent misses
    det = gt.select(keep)
    boxes = _jitter_boxes(det.boxes, rng, jitter_px)                    # 3. jitter, scaled by box size
    low = rng.random(len(det)) < low_score_frac                         # 4. scores with a low-score band
    scores = np.where(low, rng.uniform(0.1, 0.5, len(det)), rng.uniform(0.5, 0.95, len(det)))
    fp = _false_positives(gt, rng, fp_per_frame, frame_size)            # 5. false positives
    return _rows_to_seq([det.frames, fp.frames], [boxes, fp.boxes], [scores, fp.scores], [det.classes, fp.classes])


def _check_noise_model(miss: float, jitter_px: float, fp_per_frame: float, gap_frames: tuple[int, int],
                       gap_rate: float, low_score_frac: float) -> None:
    """ValueError naming the first parameter of `perturb_gt` outside its range."""
    lo, hi = gap_frames
    for name, value in (("miss", miss), ("low_score_frac", low_score_frac)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    if not 0.0 <= gap_rate < 1.0:
        raise ValueError(f"gap_rate is the fraction of frames hidden by gaps and must be in [0, 1), got {gap_rate}")
    if jitter_px < 0 or fp_per_frame < 0:
        raise ValueError(f"jitter_px and fp_per_frame must be non-negative, got {jitter_px}, {fp_per_frame}")
    if not 1 <= lo <= hi:
        raise ValueError(f"gap_frames must be (min, max) with 1 <= min <= max, got {gap_frames}")


def _occlusion_keep(gt: MotSequence, rng: np.random.Generator, gap_frames: tuple[int, int],
                    gap_rate: float) -> np.ndarray:
    """Step 1 of `perturb_gt`: False for the rows hidden by occlusion gaps, track by track in frame order."""
    lo, hi = gap_frames
    keep = np.ones(len(gt), bool)
    p_start = gap_rate / (0.5 * (lo + hi) * (1.0 - gap_rate)) if gap_rate > 0 else 0.0
    for tid in np.unique(gt.ids):
        idx = np.flatnonzero(gt.ids == tid)
        idx = idx[np.argsort(gt.frames[idx], kind="stable")]
        starts = rng.random(len(idx)) < p_start
        lengths = rng.integers(lo, hi + 1, len(idx))
        keep[idx[hide_in_bursts(gt.frames[idx], starts, lengths)]] = False
    return keep


def _jitter_boxes(xywh: np.ndarray, rng: np.random.Generator, jitter_px: float) -> np.ndarray:
    """Step 3 of `perturb_gt`: Gaussian noise on centre and size, sigma growing with sqrt(w*h)."""
    b = xywh.astype(np.float64)
    sigma = jitter_px * np.sqrt(np.maximum(b[:, 2] * b[:, 3], 0.0)) / JITTER_REF_PX
    noise = rng.normal(0.0, 1.0, (len(b), 4)) * sigma[:, None]
    cx, cy = b[:, 0] + b[:, 2] / 2 + noise[:, 0], b[:, 1] + b[:, 3] / 2 + noise[:, 1]
    w, h = np.maximum(b[:, 2] + noise[:, 2], 1.0), np.maximum(b[:, 3] + noise[:, 3], 1.0)
    return np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)


def _false_positives(gt: MotSequence, rng: np.random.Generator, fp_per_frame: float,
                     frame_size: tuple[int, int] | None) -> MotSequence:
    """Step 5 of `perturb_gt`: Poisson(`fp_per_frame`) boxes per frame, sized like ground-truth boxes."""
    last = int(gt.frames.max())
    if frame_size is None:
        xyxy = gt.boxes_xyxy
        frame_w, frame_h = float(max(xyxy[:, 2].max(), 1.0)), float(max(xyxy[:, 3].max(), 1.0))
    else:
        frame_w, frame_h = float(frame_size[0]), float(frame_size[1])
    n_fp = rng.poisson(fp_per_frame, last) if fp_per_frame > 0 else np.zeros(last, np.int64)
    total_fp = int(n_fp.sum())
    fp_frames = np.repeat(np.arange(1, last + 1), n_fp)
    sizes = gt.boxes[rng.integers(0, len(gt), total_fp), 2:]
    sizes = np.minimum(sizes, [frame_w, frame_h])
    xy = rng.uniform(0.0, 1.0, (total_fp, 2)) * ([frame_w, frame_h] - sizes)
    classes_pool = np.unique(gt.classes)
    fp_cls = rng.choice(classes_pool, total_fp) if total_fp else np.zeros(0, np.int64)
    fp_scores = rng.uniform(0.1, 0.7, total_fp)
    return MotSequence(fp_frames, np.full(total_fp, -1, np.int64), np.concatenate([xy, sizes], axis=1),
                       fp_scores, fp_cls)


def _score(gt: MotSequence, dets: MotSequence, cfg: TrackerConfig, fps: float) -> dict[str, float]:
    from vap_video.pipeline.tools.track_metrics import evaluate_sequences

    m = evaluate_sequences(gt, track_sequence(dets, cfg, fps))
    return {k: float(m[k]) for k in METRIC_KEYS}


def _detection_quality(gt: MotSequence, dets: MotSequence, min_score: float) -> dict[str, float]:
    """Recall and precision (IoU 0.5) of the detections at or above `min_score`, before tracking:
    every box gets its own id so only the detection half of the metrics means anything."""
    from vap_video.pipeline.tools.track_metrics import evaluate_sequences

    d = dets.select(dets.scores >= min_score)
    d = MotSequence(d.frames, np.arange(1, len(d) + 1, dtype=np.int64), d.boxes, d.scores, d.classes)
    m = evaluate_sequences(gt, d)
    return {"det_recall": float(m["recall"]), "det_precision": float(m["precision"])}


def evaluate_on_synthetic(seeds: Sequence[int], model: Path, frames: int = 300, width: int = 640,
                          height: int = 360, fps: float = 10.0,
                          tracker_cfg: TrackerConfig | Mapping[str, TrackerConfig] | None = None,
                          num_objects: int = 6, conf: float = 0.1, workdir: Path | None = None,
                          perturb: Mapping[str, Any] | None = None) -> list[dict]:
    """Score tracking on generated videos, fed by the model and by perturbed ground truth.

    For each seed a video and its ground truth are written (to `workdir`, default a temporary
    folder removed afterwards), the model is run once, the ground truth is perturbed once (same
    seed), and every tracker config tracks both sources. Returns one row per (source, tracker,
    seed) and a mean row per (source, tracker) with `seed` = "mean": keys `source` ("model" or
    "perturbed_gt"), `tracker`, `seed`, the `METRIC_KEYS` and the pre-tracking `det_recall` /
    `det_precision` of the boxes at or above the tracker's `high_thresh`. `perturb` passes keyword
    arguments to `perturb_gt` (its defaults otherwise; `frame_size` is always the video's).
    """
    from vap_video.engines.synth import write_video

    if not seeds:
        raise ValueError("seeds is empty; give at least one seed")
    if tracker_cfg is None:
        tracker_cfg = TrackerConfig()
    configs = {"default": tracker_cfg} if isinstance(tracker_cfg, TrackerConfig) else dict(tracker_cfg)
    if not configs:
        raise ValueError("tracker_cfg is an empty mapping; give at least one TrackerConfig")
    model = Path(model)
    if not model.is_file():
        raise FileNotFoundError(f"model {model} does not exist; the shipped detector is "
                                "vap_video/engines/models/vap-synth-n.onnx (or export one with `vap export CKPT`)")
    tmp = tempfile.TemporaryDirectory(prefix="vap-trackq-") if workdir is None else None
    root = Path(tmp.name) if tmp is not None else Path(workdir)  # type: ignore[arg-type]
    rows: list[dict] = []
    try:
        for seed in seeds:
            video = write_video(root / f"seed{seed}.mp4", int(seed), frames, width, height, fps,
                                num_objects=num_objects)
            gt = read_mot(video.with_name(video.stem + ".gt.txt"), class_column=True)
            sources = {"model": detect_video(video, model, conf=conf),
                       "perturbed_gt": perturb_gt(gt, int(seed), frame_size=(width, height), **(perturb or {}))}
            for source, dets in sources.items():
                for name, cfg in configs.items():
                    row: dict = {"source": source, "tracker": name, "seed": int(seed)}
                    row.update(_score(gt, dets, cfg, fps))
                    row.update(_detection_quality(gt, dets, cfg.high_thresh))
                    rows.append(row)
    finally:
        if tmp is not None:
            tmp.cleanup()
    means = []
    for source in ("model", "perturbed_gt"):
        for name in configs:
            group = [r for r in rows if r["source"] == source and r["tracker"] == name]
            mean: dict = {"source": source, "tracker": name, "seed": "mean"}
            for key in group[0]:
                if key not in ("source", "tracker", "seed"):
                    mean[key] = float(np.mean([r[key] for r in group]))
            means.append(mean)
    return rows + means


def format_table(rows: list[dict]) -> str:
    """Markdown table of `evaluate_on_synthetic` rows (percentages with one decimal)."""
    head = ("| source | tracker | seed | HOTA | DetA | AssA | IDF1 | MOTA | IDsw | det recall | det precision |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        idsw = f"{r['id_switches']:.0f}" if r["seed"] != "mean" else f"{r['id_switches']:.1f}"
        seed = f"**{r['seed']}**" if r["seed"] == "mean" else str(r["seed"])
        pct = " | ".join(f"{100 * r[k]:.1f}" for k in ("hota", "deta", "assa", "idf1", "mota"))
        lines.append(f"| {r['source']} | {r['tracker']} | {seed} | {pct} | {idsw} | "
                     f"{100 * r['det_recall']:.1f} | {100 * r['det_precision']:.1f} |")
    return "\n".join(lines)


def _load_tracker_yaml(path: Path) -> TrackerConfig:
    """A tracker YAML (the `tracker:` section format of configs/trackers/) -> TrackerConfig, with
    user errors as ValueError naming the file."""
    import yaml
    from pydantic import ValidationError

    if not path.is_file():
        raise ValueError(f"tracker config {path} not found (see configs/trackers/ for examples)")
    try:
        return TrackerConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except yaml.YAMLError as exc:
        raise ValueError(f"tracker config {path} is not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise ValueError(f"invalid tracker config {path}:\n{exc}") from None


def main(argv: list[str] | None = None) -> int:
    """`python -m vap_video.pipeline.tools.track_quality`: the benchmark from the command line.

    Exit 0 ok, 2 user error."""
    ap = argparse.ArgumentParser(prog="python -m vap_video.pipeline.tools.track_quality",
                                 description="Tracker quality on generated videos: model detections vs "
                                             "perturbed ground truth.")
    ap.add_argument("--model", default="vap_video/engines/models/vap-synth-n.onnx", help="vap engine (.onnx)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="scene seeds")
    ap.add_argument("--frames", type=int, default=300, help="frames per video")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--objects", type=int, default=6, help="object slots per scene")
    ap.add_argument("--conf", type=float, default=0.1, help="detector score cut before tracking")
    ap.add_argument("--lost-ttl", type=float, nargs="*", default=[2.0],
                    help="extra tracker configs: the default with lost_ttl_s set to each value")
    ap.add_argument("--config", action="append", default=[], metavar="YAML",
                    help="extra tracker config file (e.g. configs/trackers/bytetrack_lowfps.yaml), named by its "
                         "stem; repeatable")
    ap.add_argument("--json", action="store_true", help="print rows as JSON instead of a Markdown table")
    args = ap.parse_args(argv)
    if args.frames <= 0 or args.fps <= 0:
        print("track_quality: --frames and --fps must be positive", file=sys.stderr)
        return 2
    configs = {"default": TrackerConfig()}
    for ttl in args.lost_ttl:
        if ttl <= 0:
            print(f"track_quality: --lost-ttl values must be positive, got {ttl}", file=sys.stderr)
            return 2
        configs[f"lost_ttl_s={ttl:g}"] = TrackerConfig(lost_ttl_s=ttl)
    for path in map(Path, args.config):
        try:
            configs[path.stem] = _load_tracker_yaml(path)
        except ValueError as exc:
            print(f"track_quality: {exc}", file=sys.stderr)
            return 2
    try:
        rows = evaluate_on_synthetic(args.seeds, Path(args.model), args.frames, args.width, args.height,
                                     args.fps, configs, num_objects=args.objects, conf=args.conf)
    except (FileNotFoundError, ValueError, MotFormatError, ModelContractError) as exc:
        print(f"track_quality: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
