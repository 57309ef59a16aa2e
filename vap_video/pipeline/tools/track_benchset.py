"""The tracker benchmark set: real and synthetic trajectories under a camera-like detector.

Why: a tracker tuned on clean, evenly sampled detections falls over on what cameras produce.
Identities are lost where a detector is weak, and it is weak in the same places every time:
small or half-hidden objects score low and go missing, occlusions hide an object for a burst of
frames rather than one frame at a time, boxes wobble in proportion to their size, clutter
produces short-lived and sometimes persistent false boxes, and cameras run at 10-30 fps. This
module builds such a set from data the project has (nothing is downloaded):

* **TUD**: the real pedestrian trajectories of TUD-Campus and TUD-Stadtmitte (25 fps) that
  `motmetrics` ships, in `tests/data/mot/`;
* **crowds**: `vap_video.engines.synth.SceneVideo` scenes (the generator behind `vap data synth --video`)
  with 10-80 objects at 10, 15, 25 and 30 fps; their ground truth carries each object's visible
  fraction from the generator's occlusion buffer.

Both go through one documented :class:`CameraNoise` model. `write_mot_dir` lays a sequence out the
MOTChallenge way (`gt/gt.txt`, `det/det.txt`, `seqinfo.ini`), which is what `vap track` and
TrackEval read. `benchmarks/tracker_compare.py` runs vap's tracker and the reference ByteTracks on
this set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vap_video.pipeline.tools.mot import MotSequence, hide_in_bursts, read_mot

__all__ = ["CameraNoise", "BenchSequence", "apply_camera_noise", "tud_sequences", "crowd_sequence",
           "benchmark_set", "write_mot_dir", "FAMILIES"]

_TUD_DIR = Path(__file__).resolve().parents[3] / "tests" / "data" / "mot"

#: Family name -> crowd recipes (objects in view, frames per second). TUD is its own family.
FAMILIES: dict[str, tuple[tuple[int, float], ...]] = {
    "sparse": ((10, 10.0), (15, 15.0), (20, 25.0), (20, 30.0)),
    "dense": ((40, 10.0), (60, 15.0), (80, 25.0), (80, 30.0)),
}


@dataclass(frozen=True)
class CameraNoise:
    """A detector's errors as functions of what it sees. Rates are per second, not per frame, so
    the same scene at 10 and 30 fps is equally hard in time.

    For a ground-truth box with visible fraction v and geometric mean side s = sqrt(w*h):

    1. **Quality and score.** q = v^0.8 x min(1, s / `size_ref_px`); the score is
       0.2 + 0.75 q plus Gaussian noise of `score_noise`, clipped to [0.02, 0.98]. Small and
       half-hidden objects score low, as with a real detector.
    2. **Score-dependent misses.** The box is dropped with probability
       `miss_floor` + `miss_low` x (1 - score)^2.
    3. **Occlusion bursts.** Per track, in time order, a burst starts at rate `burst_rate_s` per
       second, times `occluded_boost` while v < 0.5; it lasts a time uniform in `burst_s`
       (converted to frames at the sequence's rate) and hides every box of the track.
    4. **Jitter** proportional to size: centre x and width get Gaussian noise of `jitter` x w,
       centre y and height `jitter` x h.
    5. **False positives.** Poisson(`fp_per_frame`) per frame, sizes drawn from the ground truth,
       placed uniformly, scores uniform in [0.1, 0.75]; a fraction `fp_persist` of them persists
       for a time uniform in `fp_persist_s` at the same place (with jitter), like clutter that
       looks like an object.
    """

    size_ref_px: float = 40.0
    score_noise: float = 0.08
    miss_floor: float = 0.03
    miss_low: float = 0.6
    burst_rate_s: float = 0.2
    occluded_boost: float = 4.0
    burst_s: tuple[float, float] = (0.2, 1.2)
    jitter: float = 0.03
    fp_per_frame: float = 0.4
    fp_persist: float = 0.3
    fp_persist_s: tuple[float, float] = (0.2, 1.5)


@dataclass(slots=True)
class BenchSequence:
    """One benchmark sequence: ground truth, the noisy detections made from it, and its camera."""

    name: str
    family: str
    fps: float
    width: int
    height: int
    frames: int
    gt: MotSequence  # class column 1 (pedestrian, TrackEval's class), score 1
    dets: MotSequence  # id -1, class 0


def _seq(frames: np.ndarray, ids: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
         classes: np.ndarray) -> MotSequence:
    order = np.lexsort((ids, frames))
    return MotSequence(frames[order].astype(np.int64), ids[order].astype(np.int64),
                       boxes[order].astype(np.float64), scores[order].astype(np.float64),
                       classes[order].astype(np.int64))


def apply_camera_noise(gt: MotSequence, visibility: np.ndarray, fps: float, size: tuple[int, int],
                       seed: int, noise: CameraNoise = CameraNoise()) -> MotSequence:
    """Detections (id -1, class 0) from ground truth under `noise`; a pure function of its inputs."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    rng = np.random.default_rng(seed)
    n = len(gt)
    b = gt.boxes.astype(np.float64)
    vis = np.clip(np.asarray(visibility, np.float64).reshape(-1), 0.0, 1.0)
    side = np.sqrt(np.maximum(b[:, 2] * b[:, 3], 0.0))
    quality = vis ** 0.8 * np.minimum(1.0, side / noise.size_ref_px)
    score = np.clip(0.2 + 0.75 * quality + rng.normal(0.0, noise.score_noise, n), 0.02, 0.98)
    keep = rng.random(n) >= noise.miss_floor + noise.miss_low * (1.0 - score) ** 2

    dt = 1.0 / fps
    for tid in np.unique(gt.ids):
        idx = np.flatnonzero(gt.ids == tid)
        idx = idx[np.argsort(gt.frames[idx], kind="stable")]
        rate = noise.burst_rate_s * np.where(vis[idx] < 0.5, noise.occluded_boost, 1.0)
        starts = rng.random(len(idx)) < 1.0 - np.exp(-rate * dt)
        lengths = np.maximum(1, np.round(rng.uniform(*noise.burst_s, len(idx)) * fps)).astype(np.int64)
        keep[idx[hide_in_bursts(gt.frames[idx], starts, lengths)]] = False

    d = b[keep]
    m = len(d)
    w, h = d[:, 2], d[:, 3]
    e = rng.normal(0.0, noise.jitter, (m, 4))
    cx, cy = d[:, 0] + w / 2 + e[:, 0] * w, d[:, 1] + h / 2 + e[:, 1] * h
    nw, nh = np.maximum(w * (1 + e[:, 2]), 1.0), np.maximum(h * (1 + e[:, 3]), 1.0)
    det_boxes = [np.stack([cx - nw / 2, cy - nh / 2, nw, nh], axis=1)]
    det_frames = [gt.frames[keep]]
    det_scores = [score[keep]]

    last = int(gt.frames.max()) if n else 0
    width, height = float(size[0]), float(size[1])
    n_fp = rng.poisson(noise.fp_per_frame, last) if last else np.zeros(0, np.int64)
    for f0 in np.repeat(np.arange(1, last + 1), n_fp):
        wh = np.minimum(b[rng.integers(0, n), 2:], [width, height])
        xy = rng.uniform(0.0, 1.0, 2) * ([width, height] - wh)
        s = rng.uniform(0.1, 0.75)
        span = 1
        if rng.random() < noise.fp_persist:
            span = max(1, int(round(rng.uniform(*noise.fp_persist_s) * fps)))
        fr = np.arange(f0, min(last, int(f0) + span - 1) + 1)
        jit = rng.normal(0.0, noise.jitter, (len(fr), 2)) * wh
        det_boxes.append(np.concatenate([xy + jit, np.tile(wh, (len(fr), 1))], axis=1))
        det_frames.append(fr)
        det_scores.append(np.clip(s + rng.normal(0.0, 0.05, len(fr)), 0.05, 0.95))

    frames = np.concatenate(det_frames)
    return _seq(frames, np.full(len(frames), -1), np.concatenate(det_boxes), np.concatenate(det_scores),
                np.zeros(len(frames)))


def tud_sequences(seed: int = 0, noise: CameraNoise = CameraNoise()) -> list[BenchSequence]:
    """TUD-Campus and TUD-Stadtmitte (640x480, 25 fps): real trajectories, synthetic detections
    (noise seed `seed`, in the name). The ground truth has no visibility column, so every box
    counts as fully visible and occlusion comes from the burst model alone."""
    out = []
    for k, name in enumerate(("TUD-Campus", "TUD-Stadtmitte")):
        raw = read_mot(_TUD_DIR / name / "gt.txt")
        gt = _seq(raw.frames, raw.ids, raw.boxes, np.ones(len(raw)), np.ones(len(raw)))
        dets = apply_camera_noise(gt, np.ones(len(gt)), 25.0, (640, 480), seed * 1000 + k, noise)
        out.append(BenchSequence(f"{name}-n{seed}", "tud", 25.0, 640, 480, int(gt.frames.max()), gt, dets))
    return out


def crowd_sequence(objects: int, fps: float, seconds: float = 16.0, seed: int = 0, width: int = 960,
                   height: int = 540, noise: CameraNoise = CameraNoise(), family: str = "crowd",
                   min_visibility: float = 0.1) -> BenchSequence:
    """A synthetic crowd of `objects` slots (people, cars, bicycles, dogs crossing at different
    depths). Ground-truth boxes less than `min_visibility` visible are left out of both the
    ground truth and the detections: no detector sees a sliver, and no evaluation should ask for it."""
    from vap_video.engines.synth import SceneVideo

    n_frames = max(2, int(round(seconds * fps)))
    scene = SceneVideo(seed, width, height, fps, objects)
    fr, ids, boxes, vis = [], [], [], []
    for i in range(n_frames):
        for g in scene.ground_truth(i):
            if g.visibility < min_visibility:
                continue
            x1, y1, x2, y2 = g.box
            fr.append(i + 1)
            ids.append(g.track_id)
            boxes.append((x1, y1, x2 - x1, y2 - y1))
            vis.append(g.visibility)
    m = len(fr)
    order = np.lexsort((np.asarray(ids), np.asarray(fr)))
    gt = MotSequence(np.asarray(fr, np.int64)[order], np.asarray(ids, np.int64)[order],
                     np.asarray(boxes, np.float64).reshape(m, 4)[order], np.ones(m), np.ones(m, np.int64))
    v = np.asarray(vis, np.float64)[order]
    name = f"{family}-{objects}obj-{fps:g}fps-s{seed}"
    dets = apply_camera_noise(gt, v, fps, (width, height), seed * 7919 + objects, noise)
    return BenchSequence(name, family, fps, width, height, n_frames, gt, dets)


def benchmark_set(seeds: tuple[int, ...] = (0, 1, 2), seconds: float = 16.0) -> list[BenchSequence]:
    """The whole set: for every seed, TUD with that noise seed plus every recipe of `FAMILIES`
    with that scene and noise seed. Several seeds per recipe keep one lucky or unlucky noise draw
    from deciding a family's score."""
    seqs: list[BenchSequence] = []
    for seed in seeds:
        seqs += tud_sequences(seed)
        for family, recipes in FAMILIES.items():
            for objects, fps in recipes:
                seqs.append(crowd_sequence(objects, fps, seconds, seed, family=family))
    return seqs


def _write_rows(path: Path, seq: MotSequence, gt: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(len(seq)):
        x, y, w, h = (float(v) for v in seq.boxes[i])
        head = f"{int(seq.frames[i])},{int(seq.ids[i])},{x:.2f},{y:.2f},{w:.2f},{h:.2f}"
        lines.append(head + (",1,1,1" if gt else f",{float(seq.scores[i]):.4f},-1,-1,-1"))
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def write_mot_dir(root: Path, seq: BenchSequence) -> Path:
    """Write `root/<name>/{gt/gt.txt, det/det.txt, seqinfo.ini}` (MOTChallenge layout)."""
    d = Path(root) / seq.name
    _write_rows(d / "gt" / "gt.txt", seq.gt, gt=True)
    _write_rows(d / "det" / "det.txt", seq.dets, gt=False)
    rate = int(seq.fps) if float(seq.fps).is_integer() else seq.fps
    (d / "seqinfo.ini").write_text(
        f"[Sequence]\nname={seq.name}\nimDir=img1\nframeRate={rate}\nseqLength={seq.frames}\n"
        f"imWidth={seq.width}\nimHeight={seq.height}\nimExt=.jpg\n")
    return d

