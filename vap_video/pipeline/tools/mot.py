"""MOTChallenge text files: read, write, and run the tracker offline over a detection file.

The format is one CSV row per box, `frame,id,x,y,w,h,score,...` with 1-based frames and
top-left/width/height boxes. The trailing columns differ by edition: MOT15 has `x,y,z` world
coordinates (10 columns, -1 when unknown), MOT16+ ground truth has `class,visibility`
(9 columns). Detection files use id -1. Offline tracking exists so the tracker can be tuned and
scored against labelled sequences without a camera (`vap track`, then `vap eval track`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vap_video.pipeline.frames import Detections
from vap_video.pipeline.tracking import TrackerConfig, make_tracker


class MotFormatError(ValueError):
    """A MOTChallenge file that cannot be read; the message names the file and the line."""


@dataclass(slots=True)
class MotSequence:
    """All rows of one MOT file as parallel arrays (N rows), sorted by frame then id."""

    frames: np.ndarray  # (N,) int64, 1-based
    ids: np.ndarray  # (N,) int64 (-1 in detection files)
    boxes: np.ndarray  # (N, 4) float64 x, y, w, h (top-left, size)
    scores: np.ndarray  # (N,) float64 (conf column; in MOT16+ gt a 0/1 "consider" flag)
    classes: np.ndarray  # (N,) int64, -1 when the file has no class column

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def boxes_xyxy(self) -> np.ndarray:
        """Boxes as x1, y1, x2, y2."""
        b = self.boxes
        return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)

    def select(self, mask: np.ndarray) -> MotSequence:
        return MotSequence(self.frames[mask], self.ids[mask], self.boxes[mask], self.scores[mask],
                           self.classes[mask])

    def frame_slices(self) -> dict[int, slice]:
        """frame -> slice of its rows (rows are sorted by frame)."""
        if len(self) == 0:
            return {}
        uniq, start = np.unique(self.frames, return_index=True)
        ends = list(start[1:]) + [len(self)]
        return {int(f): slice(int(s), int(e)) for f, s, e in zip(uniq, start, ends)}


def read_mot(path: str | Path, class_column: bool | None = None) -> MotSequence:
    """Parse a MOTChallenge file.

    `class_column`: whether column 8 is a class id. None guesses from the width: 9 columns
    (MOT16+ gt: class, visibility) -> yes; 10 (MOT15: world x, y, z) or fewer -> no.
    """
    p = Path(path)
    if not p.is_file():
        raise MotFormatError(f"{p}: no such file (expected a MOTChallenge .txt: frame,id,x,y,w,h,score,...)")
    rows: list[list[float]] = []
    width: int | None = None
    with p.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            text = line.strip()
            if not text:
                continue
            parts = [s for s in text.replace(" ", "").split(",") if s != ""] if "," in text else text.split()
            if len(parts) < 6:
                raise MotFormatError(f"{p}:{lineno}: expected at least 6 comma-separated values "
                                     f"(frame,id,x,y,w,h), got {len(parts)}: {text[:80]!r}")
            try:
                values = [float(s) for s in parts]
            except ValueError:
                raise MotFormatError(f"{p}:{lineno}: non-numeric value in {text[:80]!r}") from None
            width = len(values) if width is None else min(width, len(values))
            rows.append(values)
    if not rows:
        return MotSequence(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0),
                           np.zeros(0, np.int64))
    n_cols = max(len(r) for r in rows)
    arr = np.full((len(rows), n_cols), -1.0)
    for i, r in enumerate(rows):
        arr[i, :len(r)] = r
    if class_column is None:
        class_column = n_cols == 9
    frames = arr[:, 0].astype(np.int64)
    if (frames < 1).any():
        bad = int(np.flatnonzero(frames < 1)[0])
        raise MotFormatError(f"{p}: row {bad + 1} has frame {frames[bad]}; MOT frames start at 1")
    scores = arr[:, 6] if n_cols > 6 else np.ones(len(arr))
    classes = arr[:, 7].astype(np.int64) if class_column and n_cols > 7 else np.full(len(arr), -1, np.int64)
    seq = MotSequence(frames, arr[:, 1].astype(np.int64), arr[:, 2:6].copy(), scores.copy(), classes)
    order = np.lexsort((seq.ids, seq.frames))
    return seq.select(order)


def write_mot(path: str | Path, seq: MotSequence) -> None:
    """Write rows as `frame,id,x,y,w,h,score,...`: 9 columns with the class (MOT16+ style) when
    any class is known, else the 10-column MOT15 layout with -1 world coordinates."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with_class = bool(len(seq)) and bool((seq.classes >= 0).any())
    with p.open("w", encoding="utf-8") as fh:
        for i in range(len(seq)):
            x, y, w, h = (float(v) for v in seq.boxes[i])
            head = f"{int(seq.frames[i])},{int(seq.ids[i])},{x:.2f},{y:.2f},{w:.2f},{h:.2f},{float(seq.scores[i]):.4f}"
            tail = f",{int(seq.classes[i])},-1" if with_class else ",-1,-1,-1"
            fh.write(head + tail + "\n")


def hide_in_bursts(frames: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Which rows of one track (its `frames`, in time order) a burst hides: a burst begins at a row
    where `starts` is true (outside another burst) and hides `lengths` of that row's frames.
    Shared by the detector-noise models of `track_quality` and `track_benchset`."""
    hidden = np.zeros(len(frames), bool)
    hidden_until = -1  # frame number up to which the track is hidden
    for k, f in enumerate(frames.tolist()):
        if f <= hidden_until:
            hidden[k] = True
        elif starts[k]:
            hidden_until = f + int(lengths[k]) - 1
            hidden[k] = True
    return hidden


@dataclass(frozen=True, slots=True)
class SeqInfo:
    """What a MOTChallenge `seqinfo.ini` says about a sequence (the keys `vap track` uses)."""

    path: Path
    frame_rate: float | None
    length: int | None


def find_seqinfo(det_path: str | Path) -> SeqInfo | None:
    """The `seqinfo.ini` of a detection file: beside it, or one folder up (the MOTChallenge layout
    `SEQ/det/det.txt` + `SEQ/seqinfo.ini`). None when there is none."""
    import configparser

    det = Path(det_path).resolve()
    for cand in (det.parent / "seqinfo.ini", det.parent.parent / "seqinfo.ini"):
        if not cand.is_file():
            continue
        ini = configparser.ConfigParser()
        try:
            ini.read(cand, encoding="utf-8")
            sec = ini["Sequence"]
            rate = float(sec["frameRate"]) if "frameRate" in sec else None
            length = int(sec["seqLength"]) if "seqLength" in sec else None
        except (configparser.Error, KeyError, ValueError) as exc:
            raise MotFormatError(f"{cand}: not a readable MOTChallenge seqinfo.ini ([Sequence] with frameRate and "
                                 f"seqLength): {exc}") from None
        if rate is not None and not rate > 0:
            raise MotFormatError(f"{cand}: frameRate must be positive, got {rate}")
        return SeqInfo(cand, rate, length)
    return None


def track_sequence(dets: MotSequence, cfg: TrackerConfig, fps: float, length: int | None = None) -> MotSequence:
    """Run a fresh tracker over every frame from 1 to the last one (`length` when known, else
    the last frame with a detection; empty frames included, so lost tracks age correctly) with
    stream time t = (frame - 1) / fps."""
    tracker = make_tracker(cfg)
    slices = dets.frame_slices()
    last = int(dets.frames.max()) if len(dets) else 0
    if length is not None:
        last = max(last, int(length))
    xyxy = dets.boxes_xyxy.astype(np.float32)
    classes = np.where(dets.classes >= 0, dets.classes, 0).astype(np.int32)
    out_f, out_id, out_box, out_s, out_c = [], [], [], [], []
    empty = Detections()
    for f in range(1, last + 1):
        sl = slices.get(f)
        d = empty if sl is None else Detections(xyxy[sl], dets.scores[sl].astype(np.float32), classes[sl])
        tr = tracker.update(d, (f - 1) / fps)
        if len(tr):
            out_f.append(np.full(len(tr), f, np.int64))
            out_id.append(tr.ids)
            b = tr.boxes.astype(np.float64)
            out_box.append(np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1))
            out_s.append(tr.scores.astype(np.float64))
            out_c.append(tr.class_ids.astype(np.int64))
    if not out_f:
        return MotSequence(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0),
                           np.zeros(0, np.int64))
    has_class = bool((dets.classes >= 0).any())
    cls = np.concatenate(out_c) if has_class else np.full(sum(len(a) for a in out_f), -1, np.int64)
    return MotSequence(np.concatenate(out_f), np.concatenate(out_id), np.concatenate(out_box),
                       np.concatenate(out_s), cls)


def cli_track(argv: list[str]) -> int:
    """`vap track DETS --out TRACKS [--fps 30] [--config tracker.yaml]`: offline tracking.

    `argv` is what follows `vap track`. Returns the process exit code (0 ok, 2 user error).
    """
    import yaml
    from pydantic import ValidationError

    ap = argparse.ArgumentParser(prog="vap track", description="Track a MOTChallenge detection file offline.")
    ap.add_argument("dets", help="detections: MOTChallenge det.txt (frame,-1,x,y,w,h,score[,...])")
    ap.add_argument("--out", required=True, help="where to write the tracks (MOTChallenge format)")
    ap.add_argument("--fps", type=float, default=None,
                    help="frame rate of the sequence (stream time = frame/fps); default: frameRate of the "
                    "seqinfo.ini beside det.txt or one folder up (MOTChallenge layout), else 30")
    ap.add_argument("--config", help="tracker settings YAML (see configs/trackers/); default: built-in defaults")
    args = ap.parse_args(argv)
    if args.fps is not None and args.fps <= 0:
        print(f"vap track: --fps must be positive, got {args.fps}", file=sys.stderr)
        return 2
    try:
        info = find_seqinfo(args.dets)
        cfg = TrackerConfig()
        if args.config:
            cfg_path = Path(args.config)
            if not cfg_path.is_file():
                print(f"vap track: tracker config {cfg_path} not found", file=sys.stderr)
                return 2
            cfg = TrackerConfig.model_validate(yaml.safe_load(cfg_path.read_text()) or {})
        dets = read_mot(args.dets)
    except (MotFormatError, yaml.YAMLError) as exc:
        print(f"vap track: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"vap track: invalid tracker config {args.config}:\n{exc}", file=sys.stderr)
        return 2
    if len(dets) and bool(np.all(dets.scores < 0)):
        # MOTChallenge writes -1 for "no score" (ground truth, other trackers' output): without
        # this every box would fall below the thresholds and nothing would be tracked.
        print(f"vap track: {args.dets} has no scores (all -1); treating every box as score 1.0", file=sys.stderr)
        dets = MotSequence(dets.frames, dets.ids, dets.boxes, np.ones_like(dets.scores), dets.classes)
    if args.fps is not None:
        fps, source = args.fps, "--fps"
    elif info is not None and info.frame_rate is not None:
        fps, source = info.frame_rate, str(info.path)
    else:
        fps, source = 30.0, "default; no seqinfo.ini found, pass --fps"
    print(f"frame rate {fps:g} fps ({source})", file=sys.stderr)
    tracks = track_sequence(dets, cfg, fps, info.length if info is not None else None)
    write_mot(args.out, tracks)
    n_ids = len(np.unique(tracks.ids)) if len(tracks) else 0
    print(f"{len(dets)} detections -> {len(tracks)} track boxes, {n_ids} tracks -> {args.out}")
    return 0
