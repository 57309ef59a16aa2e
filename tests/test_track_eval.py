"""MOT file I/O, metrics against published reference values, and the offline track/eval CLIs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vap_video.pipeline.tools.mot import MotFormatError, MotSequence, cli_track, read_mot, write_mot
from vap_video.pipeline.tools.track_eval import bench_tracker, cli_eval, evaluate_mot

DATA = Path(__file__).parent / "data" / "mot"


@pytest.mark.parametrize("seq, mota, idf1, hota, fp, fn, idsw", [
    ("TUD-Campus", 52.65, 55.77, 39.1, 13, 150, 7),
    ("TUD-Stadtmitte", 56.40, 64.46, 39.8, 45, 452, 7),
])
def test_reference_sequences(seq: str, mota: float, idf1: float, hota: float, fp: int, fn: int, idsw: int) -> None:
    m = evaluate_mot(DATA / seq / "gt.txt", DATA / seq / "test.txt", iou=0.5)
    assert 100 * m["mota"] == pytest.approx(mota, abs=0.01)
    assert 100 * m["idf1"] == pytest.approx(idf1, abs=0.01)
    assert 100 * m["hota"] == pytest.approx(hota, abs=0.1)
    assert (m["fp"], m["fn"], m["id_switches"]) == (fp, fn, idsw)
    assert m["hota"] == pytest.approx(np.sqrt(m["deta"] * m["assa"]), abs=0.01)


def seq(rows: list[tuple[int, int, float, float, float, float]], score: float = 1.0) -> MotSequence:
    a = np.array(rows, np.float64).reshape(-1, 6)
    return MotSequence(a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 2:6], np.full(len(a), score),
                       np.full(len(a), -1, np.int64))


def write_pair(tmp: Path, gt_rows: list, pr_rows: list) -> tuple[Path, Path]:
    write_mot(tmp / "gt.txt", seq(gt_rows))
    write_mot(tmp / "pr.txt", seq(pr_rows, 0.9))
    return tmp / "gt.txt", tmp / "pr.txt"


def test_perfect_tracking_scores_one(tmp_path: Path) -> None:
    rows = [(f, i, 10 + 5 * f + 100 * i, 50, 40, 80) for f in range(1, 21) for i in (1, 2, 3)]
    m = evaluate_mot(*write_pair(tmp_path, rows, rows))
    assert m["mota"] == m["idf1"] == pytest.approx(1.0)
    assert m["hota"] == pytest.approx(1.0) and m["id_switches"] == 0 and m["mostly_tracked"] == 3


def test_one_identity_switch(tmp_path: Path) -> None:
    gt = [(f, 1, 10 + 5 * f, 50, 40, 80) for f in range(1, 11)]
    pr = [(f, 7 if f <= 5 else 8, 10 + 5 * f, 50, 40, 80) for f in range(1, 11)]
    m = evaluate_mot(*write_pair(tmp_path, gt, pr))
    assert m["id_switches"] == 1
    assert m["mota"] == pytest.approx(0.9)
    assert m["idf1"] == pytest.approx(0.5)  # best single pairing covers 5 of 10 frames
    assert m["deta"] == pytest.approx(1.0) and m["assa"] == pytest.approx(0.5)
    assert m["hota"] == pytest.approx(np.sqrt(0.5))


def test_switch_after_a_missed_frame_follows_the_devkit(tmp_path: Path) -> None:
    """Object 1 is matched to hypothesis 7, missed in frame 2 (7 is elsewhere), and in frame 3
    both 7 and 8 overlap it, 8 better. The MOTChallenge devkit (and TrackEval) keeps a pair only
    from the previous frame, so frame 3 matches 8 by IoU: one switch. motmetrics' rule (keep the
    last pair ever if it still overlaps) counted none."""
    gt = [(f, 1, 100, 100, 40, 80) for f in (1, 2, 3)]
    pr = [(1, 7, 100, 100, 40, 80), (2, 7, 400, 100, 40, 80), (3, 7, 110, 100, 40, 80),
          (3, 8, 102, 100, 40, 80)]
    m = evaluate_mot(*write_pair(tmp_path, gt, pr))
    assert (m["id_switches"], m["tp"], m["fp"], m["fn"]) == (1, 2, 2, 1)
    assert m["mota"] == pytest.approx(1 - (1 + 2 + 1) / 3)


def test_false_positives_misses_and_iou_threshold(tmp_path: Path) -> None:
    gt = [(f, 1, 100, 100, 50, 50) for f in range(1, 11)]
    pr = [(f, 3, 110, 100, 50, 50) for f in range(1, 9)]  # IoU 40/60 = 0.667, last 2 frames missed
    pr += [(f, 4, 500, 500, 20, 20) for f in range(1, 5)]  # 4 false positives
    gp = write_pair(tmp_path, gt, pr)
    m = evaluate_mot(*gp)
    assert (m["tp"], m["fn"], m["fp"]) == (8, 2, 4)
    assert m["mota"] == pytest.approx(1 - 6 / 10)
    strict = evaluate_mot(*gp, iou=0.7)  # 0.667 no longer matches
    assert (strict["tp"], strict["fn"], strict["fp"]) == (0, 10, 12)
    with pytest.raises(ValueError, match="iou threshold"):
        evaluate_mot(*gp, iou=0.0)


def test_ignored_ground_truth_rows(tmp_path: Path) -> None:
    (tmp_path / "gt.txt").write_text("1,1,0,0,10,10,1,1,1\n1,2,50,50,10,10,0,7,1\n")
    (tmp_path / "pr.txt").write_text("1,5,0,0,10,10,0.9,-1,-1,-1\n")
    m = evaluate_mot(tmp_path / "gt.txt", tmp_path / "pr.txt")
    assert m["num_gt"] == 1 and m["mota"] == pytest.approx(1.0)


def test_read_write_roundtrip_and_class_column(tmp_path: Path) -> None:
    s = seq([(2, 1, 1.5, 2.25, 10, 20), (1, 2, 3, 4, 5, 6)], 0.5)
    s.classes = np.array([3, 0])
    write_mot(tmp_path / "a.txt", s)
    back = read_mot(tmp_path / "a.txt")
    assert back.frames.tolist() == [1, 2]  # sorted by frame
    assert back.classes.tolist() == [0, 3] and back.ids.tolist() == [2, 1]
    np.testing.assert_allclose(back.boxes[1], [1.5, 2.25, 10, 20])
    np.testing.assert_allclose(back.boxes_xyxy[0], [3, 4, 8, 10])
    # MOT15 layout (10 columns): column 8 is a world coordinate, not a class
    assert read_mot(DATA / "TUD-Campus" / "gt.txt").classes.max() == -1


@pytest.mark.parametrize("text, message", [
    ("1,2,3\n", "expected at least 6"),
    ("1,2,a,4,5,6\n", "non-numeric"),
    ("0,1,1,1,5,5,1\n", "MOT frames start at 1"),
])
def test_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.txt").write_text(text)
    with pytest.raises(MotFormatError, match=message):
        read_mot(tmp_path / "bad.txt")
    with pytest.raises(MotFormatError, match="no such file"):
        read_mot(tmp_path / "missing.txt")


def test_cli_track_then_eval_on_synthetic_sequence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Noisy detections with a dropped object every few frames -> track -> evaluate."""
    rng = np.random.default_rng(0)
    gt_rows, det_rows = [], []
    for f in range(1, 121):
        for i in range(5):
            x, y = 50 + 150 * i + 2.0 * f, 100 + 60 * i + 1.0 * f
            gt_rows.append((f, i + 1, x, y, 40, 90))
            if rng.random() < 0.9:  # 10 % missed detections
                n = rng.normal(0, 1.0, 4)
                det_rows.append((f, -1, x + n[0], y + n[1], 40 + n[2], 90 + n[3]))
    write_mot(tmp_path / "gt.txt", seq(gt_rows))
    dets = seq(det_rows, 0.8)
    dets.scores = rng.uniform(0.6, 0.95, len(dets))
    write_mot(tmp_path / "det.txt", dets)
    assert cli_track([str(tmp_path / "det.txt"), "--out", str(tmp_path / "out" / "tracks.txt"), "--fps", "25"]) == 0
    assert "5 tracks" in capsys.readouterr().out
    assert cli_eval([str(tmp_path / "gt.txt"), str(tmp_path / "out" / "tracks.txt"), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["id_switches"] == 0 and m["idf1"] > 0.85 and m["mota"] > 0.8
    assert cli_eval(["track", str(tmp_path / "gt.txt"), str(tmp_path / "out" / "tracks.txt")]) == 0
    assert "MOTA" in capsys.readouterr().out


def test_vap_cli_routes_track_and_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the real `vap` entry point: `vap track ...` and `vap eval track GT PRED`."""
    from vap_video.pipeline.cli import main

    rows = [(f, i, 10 + 5 * f + 100 * i, 50, 40, 80) for f in range(1, 31) for i in (1, 2)]
    write_mot(tmp_path / "gt.txt", seq(rows))
    write_mot(tmp_path / "det.txt", seq([(f, -1, x, y, w, h) for f, _, x, y, w, h in rows], 0.9))
    assert main(["track", str(tmp_path / "det.txt"), "--out", str(tmp_path / "tr.txt")]) == 0
    assert main(["eval", "track", str(tmp_path / "gt.txt"), str(tmp_path / "tr.txt"), "--json"]) == 0
    m = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert m["id_switches"] == 0 and m["mota"] > 0.95


def test_cli_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_eval([str(tmp_path / "nope.txt"), str(tmp_path / "nope2.txt")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err
    (tmp_path / "d.txt").write_text("1,-1,0,0,10,10,0.9\n")
    (tmp_path / "t.yaml").write_text("lost_ttl_frames: 30\n")
    assert cli_track([str(tmp_path / "d.txt"), "--out", str(tmp_path / "o.txt"), "--config",
                      str(tmp_path / "t.yaml")]) == 2
    assert "lost_ttl_frames" in capsys.readouterr().err


def test_bench_tracker_smoke() -> None:
    res = bench_tracker(counts=(5, 20), frames=80)
    assert [r["objects"] for r in res] == [5, 20]
    for r in res:
        assert 0 < r["median_ms"] <= r["p99_ms"] and r["frames"] == 80
        assert r["track_ids"] >= r["objects"] * 0.8  # it tracked the crowd, not nothing
        assert r["id_switches"] <= r["objects"]  # ...and mostly kept identities


def test_synthetic_mot_sequence_is_trackable_and_has_occlusions() -> None:
    from vap_video.pipeline.tools.mot import track_sequence
    from vap_video.pipeline.tools.track_eval import evaluate_sequences, synthetic_mot
    from vap_video.pipeline.tracking import TrackerConfig

    gt, det = synthetic_mot(n_objects=6, frames=150, seed=1)
    assert len(gt) == 6 * 150 and set(gt.ids.tolist()) == set(range(1, 7))
    assert 0.5 * len(gt) < len(det) < len(gt)  # pillars and misses hide a part of the objects
    m = evaluate_sequences(gt, track_sequence(det, TrackerConfig(), 30.0))
    assert 0.4 < m["hota"] < 1.0 and m["mota"] > 0.5
    same = evaluate_sequences(gt, gt)
    assert same["hota"] == pytest.approx(1.0) and same["idf1"] == pytest.approx(1.0)


def test_vap_track_treats_missing_scores_as_confident(tmp_path, capsys):
    """MOTChallenge's -1 'no score' must not make every box fall below the thresholds."""
    from vap_video.pipeline.cli import main

    rows = [f"{f},-1,{100 + 5 * f},50,40,80,-1,-1,-1,-1" for f in range(1, 21)]
    dets = tmp_path / "dets.txt"
    dets.write_text("\n".join(rows) + "\n")
    out = tmp_path / "tracks.txt"
    assert main(["track", str(dets), "--out", str(out)]) == 0
    assert "no scores" in capsys.readouterr().err
    ids = {line.split(",")[1] for line in out.read_text().splitlines()}
    assert len(ids) == 1 and len(out.read_text().splitlines()) >= 18  # one track, followed throughout
