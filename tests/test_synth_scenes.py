"""Synthetic scenes: determinism, ground truth matching the pixels, tracks, video files, datasets, haze."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from vap_video.engines.haze import add_haze, apply_scattering, remove_scattering, transmission_map
from vap_video.engines.synth import CLASS_NAMES, SceneVideo, cli, render_image, write_video, write_yolo_dataset


def _changed(img: np.ndarray, bg: np.ndarray, thr: int = 12) -> np.ndarray:
    return np.abs(img.astype(np.int16) - bg.astype(np.int16)).max(axis=2) > thr


def test_scene_video_is_a_pure_function_of_seed_and_index() -> None:
    a, b = SceneVideo(7, 320, 192), SceneVideo(7, 320, 192)
    # b renders out of order first: random access must not change what a frame looks like
    fb40, gb40 = b.frame(40)
    fb3, gb3 = b.frame(3)
    fa3, ga3 = a.frame(3)
    fa40, ga40 = a.frame(40)
    assert np.array_equal(fa3, fb3) and ga3 == gb3
    assert np.array_equal(fa40, fb40) and ga40 == gb40
    assert fa3.dtype == np.uint8 and fa3.shape == (192, 320, 3)
    other, _ = SceneVideo(8, 320, 192).frame(3)
    assert not np.array_equal(fa3, other)


def test_gt_boxes_lie_in_the_frame_and_cover_the_drawn_pixels() -> None:
    scene = SceneVideo(3, 640, 360, num_objects=6)
    checked = 0
    for index in (0, 17, 60, 133, 250):
        img, gts = scene.frame(index)
        bg = scene.background_frame(index)
        changed = _changed(img, bg)
        union = np.zeros(changed.shape, bool)
        for g in gts:
            x1, y1, x2, y2 = g.box
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 360
            assert 0 < g.visibility <= 1 and 0 <= g.class_id < len(CLASS_NAMES)
            xi1, yi1, xi2, yi2 = int(x1), int(y1), int(np.ceil(x2)), int(np.ceil(y2))
            union[max(0, yi1 - 12):yi2 + 12, max(0, xi1 - 12):xi2 + 12] = True  # blur margin
            if g.visibility > 0.6 and (x2 - x1) * (y2 - y1) >= 100:
                frac = changed[yi1:yi2, xi1:xi2].mean()
                assert frac > 0.1, f"frame {index} track {g.track_id}: box shows no object ({frac:.3f})"
                checked += 1
        # almost everything the objects changed lies inside some GT box
        if changed.sum() > 50:
            outside = (changed & ~union).sum() / changed.sum()
            assert outside < 0.05, f"frame {index}: {outside:.2%} of object pixels outside GT boxes"
    assert checked >= 5


def test_tracks_persist_move_smoothly_and_cross_the_middle_line() -> None:
    fps = 25.0
    scene = SceneVideo(11, 640, 360, fps=fps, num_objects=5)
    history: dict[int, list[tuple[int, tuple[float, float, float, float]]]] = {}
    for i in range(0, int(40 * fps), 2):
        for g in scene.frame(i)[1]:
            history.setdefault(g.track_id, []).append((i, g.box))
    assert len(history) > 5, "objects must leave and new ones enter"
    crossed = False
    for tid, rows in history.items():
        for (i0, b0), (i1, b1) in zip(rows, rows[1:]):
            if i1 - i0 == 2 and (b1[2] - b1[0]) > 10 and (b0[2] - b0[0]) > 10:
                # smooth paths: a box centre moves a bounded distance between nearby frames
                c0 = np.array([(b0[0] + b0[2]) / 2, (b0[1] + b0[3]) / 2])
                c1 = np.array([(b1[0] + b1[2]) / 2, (b1[1] + b1[3]) / 2])
                assert np.linalg.norm(c1 - c0) < 60, f"track {tid} jumps at frame {i1}"
        ys = [(b[1] + b[3]) / 2 for _, b in rows]
        if min(ys) < 180 < max(ys):
            crossed = True
    assert crossed, "some object must cross the horizontal middle line"
    x1, y1, x2, y2 = scene.zone_hint
    visitors = {
        tid for tid, rows in history.items()
        for _, b in rows if x1 <= (b[0] + b[2]) / 2 <= x2 and y1 <= b[3] <= y2
    }
    assert len(visitors) >= 3


def test_haze_video_is_lighter_at_the_top() -> None:
    clear, _ = SceneVideo(5, 320, 192).frame(10)
    hazy, _ = SceneVideo(5, 320, 192, haze=0.6).frame(10)
    top_diff = np.abs(hazy[:40].astype(float) - clear[:40]).mean()
    bottom_diff = np.abs(hazy[-20:].astype(float) - clear[-20:]).mean()
    assert top_diff > 2 * bottom_diff and top_diff > 10


def test_render_image_ground_truth_and_sizes() -> None:
    img, gts = render_image((1, 2, 3), 400, 300)
    assert img.shape == (300, 400, 3)
    again, gts2 = render_image((1, 2, 3), 400, 300)
    assert np.array_equal(img, again) and gts == gts2
    sizes = []
    for k in range(30):
        _, gts = render_image((0, k), 640, 480)
        for g in gts:
            x1, y1, x2, y2 = g.box
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480 and g.visibility >= 0.2
            sizes.append(max(x2 - x1, y2 - y1))
    assert min(sizes) <= 16 and max(sizes) >= 200, "need small and large objects"


def test_write_yolo_dataset_layout(tmp_path: Path) -> None:
    yaml_path = write_yolo_dataset(tmp_path / "ds", n_train=12, n_val=4, imgsz=160, seed=3, haze_fraction=0.5)
    import yaml

    data = yaml.safe_load(yaml_path.read_text())
    assert data["names"] == CLASS_NAMES and data["train"] == "images/train"
    imgs = sorted((tmp_path / "ds/images/train").glob("*.jpg"))
    assert len(imgs) == 12 and len(list((tmp_path / "ds/images/val").glob("*.jpg"))) == 4
    shapes = set()
    rows = 0
    for p in imgs:
        im = cv2.imread(str(p))
        shapes.add(im.shape[:2])
        assert 100 <= max(im.shape[:2]) <= 220
        lab = (tmp_path / "ds/labels/train" / (p.stem + ".txt")).read_text().split("\n")
        for line in filter(None, lab):
            c, cx, cy, w, h = line.split()
            assert int(c) in range(4)
            v = np.array([cx, cy, w, h], float)
            assert (v >= 0).all() and (v <= 1).all()
            rows += 1
    assert len(shapes) > 2 and rows > 12
    # deterministic: same seed, same bytes, also when written by several processes
    again = write_yolo_dataset(tmp_path / "ds2", n_train=4, n_val=0, imgsz=160, seed=3, haze_fraction=0.5,
                               workers=2)
    for k in range(4):
        for rel in (f"labels/train/{k:06d}.txt", f"images/train/{k:06d}.jpg"):
            assert (again.parent / rel).read_bytes() == (tmp_path / "ds" / rel).read_bytes()


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_write_video_decodes_with_ground_truth(tmp_path: Path, suffix: str) -> None:
    out = write_video(tmp_path / f"clip{suffix}", seed=2, frames=30, width=192, height=108, fps=25.0,
                      num_objects=4)
    assert out.exists()
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    assert len(frames) == 30 and frames[0].shape == (108, 192, 3)
    # the decoded picture matches the rendered one (lossy, so on average)
    ref, _ = SceneVideo(2, 192, 108, 25.0, 4).frame(12)
    assert np.abs(frames[12].astype(float) - ref).mean() < 8
    gt = (tmp_path / "clip.gt.txt").read_text().strip().splitlines()
    assert gt
    frame_ids = set()
    for line in gt:
        f, tid, x, y, w, h, one, cls, vis = line.split(",")
        frame_ids.add(int(f))
        assert 1 <= int(f) <= 30 and int(tid) > 0 and one == "1" and int(cls) in range(4)
        assert float(x) >= 0 and float(y) >= 0 and float(x) + float(w) <= 192.01
        assert float(y) + float(h) <= 108.01 and 0 < float(vis) <= 1
    assert len(frame_ids) > 20


def test_cli_writes_and_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--dataset", str(tmp_path / "d"), "--train", "3", "--val", "1", "--imgsz", "96"]) == 0
    assert "data.yaml" in capsys.readouterr().out
    assert cli(["--video", str(tmp_path / "v.mp4"), "--frames", "3", "--width", "97", "--height", "64"]) == 2
    err = capsys.readouterr().err
    assert "even width and height" in err and "Traceback" not in err
    assert cli(["--video", str(tmp_path / "v.ts"), "--frames", "3", "--width", "96", "--height", "64"]) == 0
    assert (tmp_path / "v.gt.txt").exists()


def test_cli_check_reports_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    yaml_path = write_yolo_dataset(tmp_path / "d", n_train=3, n_val=1, imgsz=64, seed=2)
    (tmp_path / "d/labels/train/000000.txt").write_text("5 0.5 0.5 0.1 0.1\n")
    assert cli(["check", str(yaml_path)]) == 0
    out = capsys.readouterr().out
    assert "train: 3 images, 2 usable" in out and "class id not an integer" in out
    assert cli(["check", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli(["--video", "x.mp4", "--codec", "nonsense", "--width", "64", "--height", "64"]) == 2
    assert "unknown or unavailable video encoder" in capsys.readouterr().err


def test_long_random_access_jumps_are_consistent() -> None:
    a, b = SceneVideo(4, 96, 64, num_objects=3), SceneVideo(4, 96, 64, num_objects=3)
    a._max_lives = 4  # force the kept window of the timeline to slide and replay
    for i in (0, 5000, 20000, 3, 12000, 40000, 100):
        fa, ga = a.frame(i)
        fb, gb = b.frame(i)
        assert np.array_equal(fa, fb) and ga == gb, i
    assert max(len(x) for x in a._lives) <= 4


def test_haze_model() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    assert np.array_equal(add_haze(img, 1.0), img)  # t = 1 everywhere: no haze
    flat = add_haze(img, 0.2, airlight=0.9, depth_gradient=False)
    # I = J t + A (1 - t), checked on floats
    expect = img / 255.0 * 0.2 + 0.9 * 0.8
    assert np.abs(flat / 255.0 - expect).max() < 1 / 255 + 1e-6
    graded = add_haze(img.astype(np.float32) / 255, 0.3, airlight=(0.9, 0.9, 0.95))
    assert graded.dtype == np.float32
    t = transmission_map(60, 80, 0.3)
    assert t.shape == (60, 1) and abs(t[0, 0] - 0.3) < 1e-6 and t[-1, 0] > 0.95
    back = remove_scattering(apply_scattering(img, t, 0.9), t, 0.9)
    assert np.abs(back.astype(int) - img).max() <= 4
    with pytest.raises(ValueError, match="transmission"):
        add_haze(img, 0.0)
