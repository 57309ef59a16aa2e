"""The tracker benchmark set: the detector-noise model does what its docstring says, and vap's
HOTA agrees with TrackEval's on it (the benchmark reports TrackEval's numbers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vap_video.pipeline.tools.mot import MotSequence, read_mot
from vap_video.pipeline.tools.track_benchset import (CameraNoise, apply_camera_noise, crowd_sequence, tud_sequences,
                                                     write_mot_dir)


def _line_gt(n_frames: int, n_tracks: int = 20, size: float = 60.0) -> MotSequence:
    f = np.repeat(np.arange(1, n_frames + 1), n_tracks)
    ids = np.tile(np.arange(1, n_tracks + 1), n_frames)
    x = 20.0 + 30.0 * (ids - 1)
    boxes = np.stack([x, np.full_like(x, 50.0), np.full_like(x, size), np.full_like(x, 2 * size)], 1)
    return MotSequence(f, ids, boxes, np.ones(len(f)), np.ones(len(f), np.int64))


def test_noise_is_a_pure_function_of_the_seed() -> None:
    gt = _line_gt(50)
    a = apply_camera_noise(gt, np.ones(len(gt)), 25.0, (800, 400), seed=3)
    b = apply_camera_noise(gt, np.ones(len(gt)), 25.0, (800, 400), seed=3)
    c = apply_camera_noise(gt, np.ones(len(gt)), 25.0, (800, 400), seed=4)
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
    assert not (len(a) == len(c) and np.array_equal(a.boxes, c.boxes))


def test_hidden_and_small_objects_score_lower_and_are_missed_more() -> None:
    gt = _line_gt(200)
    quiet = CameraNoise(fp_per_frame=0.0, burst_rate_s=0.0)
    seen = apply_camera_noise(gt, np.ones(len(gt)), 25.0, (800, 400), 0, quiet)
    half = apply_camera_noise(gt, np.full(len(gt), 0.3), 25.0, (800, 400), 0, quiet)
    assert np.median(half.scores) < np.median(seen.scores) - 0.2
    assert len(half) < 0.9 * len(seen)  # 3187 vs 3877 with these settings


def test_bursts_are_measured_in_time_not_frames() -> None:
    """The same burst settings hide about the same share of boxes at 10 and 30 fps, in runs."""
    noise = CameraNoise(fp_per_frame=0.0, miss_floor=0.0, miss_low=0.0, burst_rate_s=0.5)
    shares, runs = [], []
    for fps in (10.0, 30.0):
        gt = _line_gt(int(60 * fps))
        det = apply_camera_noise(gt, np.ones(len(gt)), fps, (800, 400), 1, noise)
        shares.append(1 - len(det) / len(gt))
        # mean length (seconds) of a gap in track 1
        frames = np.sort(det.frames[np.abs(det.boxes[:, 0] - 20.0) < 10])
        gaps = np.diff(frames) - 1
        runs.append(gaps[gaps > 0].mean() / fps)
    assert shares[0] == pytest.approx(shares[1], abs=0.08)
    assert runs[0] == pytest.approx(runs[1], rel=0.4) and min(runs) > 0.2


def test_false_positives_include_persistent_clutter() -> None:
    gt = _line_gt(100, n_tracks=1)
    det = apply_camera_noise(gt, np.ones(len(gt)), 25.0, (800, 400), 0,
                             CameraNoise(fp_per_frame=1.0, fp_persist=1.0, fp_persist_s=(0.4, 0.4)))
    far = det.select(np.abs(det.boxes[:, 0] - 20.0) > 30)  # not the one real object
    assert len(far) > 5 * 100 * 0.5  # each FP lives about 10 frames


def test_crowd_and_tud_sequences_write_the_motchallenge_layout(tmp_path: Path) -> None:
    seq = crowd_sequence(12, 15.0, seconds=2.0, seed=0)
    assert seq.frames == 30 and len(np.unique(seq.gt.ids)) >= 8
    d = write_mot_dir(tmp_path, seq)
    assert "frameRate=15" in (d / "seqinfo.ini").read_text()
    assert len(read_mot(d / "gt" / "gt.txt")) == len(seq.gt)
    assert len(read_mot(d / "det" / "det.txt")) == len(seq.dets)
    tud = tud_sequences(0)
    assert [s.name for s in tud] == ["TUD-Campus-n0", "TUD-Stadtmitte-n0"] and tud[1].frames == 179


def test_vap_hota_matches_trackeval_on_the_benchmark_sequences(tmp_path: Path) -> None:
    pytest.importorskip("trackeval", reason="trackeval is installed by tests/run.sh (dev extra)")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import tracker_compare as tc

    from vap_video.pipeline.tools.track_eval import evaluate_sequences
    from vap_video.pipeline.tracking import TrackerConfig

    seqs = tud_sequences(1) + [crowd_sequence(30, 10.0, seconds=4.0, seed=2, family="dense")]
    build = tc.make_vap(TrackerConfig())
    gt_root, trk_root = tmp_path / "gt", tmp_path / "trk"
    ours = {}
    for s in seqs:
        write_mot_dir(gt_root, s)
        tracks, _ = tc.run_sequence(build, s)
        tc.write_tracks(trk_root / "vap" / "data" / f"{s.name}.txt", tracks)
        ours[s.name] = evaluate_sequences(s.gt, read_mot(trk_root / "vap" / "data" / f"{s.name}.txt"))
    ref = tc.trackeval_metrics(gt_root, trk_root, seqs, ["vap"])["vap"]
    for s in seqs:
        assert ours[s.name]["hota"] == pytest.approx(ref[s.name]["HOTA"], abs=1e-3), s.name
        assert ours[s.name]["assa"] == pytest.approx(ref[s.name]["AssA"], abs=1e-3), s.name
        assert ours[s.name]["idf1"] == pytest.approx(ref[s.name]["IDF1"], abs=1e-3), s.name
        assert ours[s.name]["mota"] == pytest.approx(ref[s.name]["MOTA"], abs=1e-3), s.name


def test_scene_ground_truth_without_painting_matches_the_rendered_frames() -> None:
    from vap_video.engines.synth import SceneVideo

    painted, labels_only = SceneVideo(5, 320, 192, 25.0, 12), SceneVideo(5, 320, 192, 25.0, 12)
    for i in (0, 7, 30, 61):
        a, b = painted.frame(i)[1], labels_only.ground_truth(i)
        assert [(g.track_id, g.class_id, g.box) for g in a] == [(g.track_id, g.class_id, g.box) for g in b]
        assert all(abs(x.visibility - y.visibility) < 0.05 for x, y in zip(a, b))
