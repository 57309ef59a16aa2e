"""Decoding straight to the engine size, the max_fps cap before conversion, keyframe-only decoding."""

from __future__ import annotations

import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import vap_video.pipeline.sources as sources_mod
from vap_video.engines.letterbox import PAD_VALUE, Letterbox, placement
from vap_video.pipeline.config import StreamConfig
from vap_video.pipeline.decode_plan import DecodePlan, FrameStride
from vap_video.pipeline.frames import Frame
from vap_video.pipeline.preprocess import BatchPreprocessor
from vap_video.pipeline.sources import AVSource, SyntheticSource
from tests.videos import write_video


def _frames(cfg: StreamConfig, plan: DecodePlan | None = None, stride: FrameStride | None = None) -> list[Frame]:
    src = AVSource(cfg)
    src.plan, src.stride = plan, stride
    src.open()
    try:
        return list(src.frames())
    finally:
        src.close()


def _old_batch(images: list[np.ndarray], max_hw: tuple[int, int]) -> tuple[np.ndarray, list[Letterbox]]:
    """The letterbox as it was done before batches were written in place: uint8 canvas, one multiply."""
    h, w = max_hw
    canvas = np.full((len(images), h, w, 3), PAD_VALUE, np.uint8)
    lbs = []
    for i, img in enumerate(images):
        nh, nw, lb = placement(img.shape[0], img.shape[1], h, w)
        small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if lb.scale < 1 else cv2.INTER_LINEAR)
        canvas[i, int(lb.pad_y):int(lb.pad_y) + nh, int(lb.pad_x):int(lb.pad_x) + nw] = small
        lbs.append(lb)
    batch = np.empty((len(images), 3, h, w), np.float32)
    np.multiply(canvas.transpose(0, 3, 1, 2), np.float32(1 / 255), out=batch)
    return batch, lbs


def test_in_place_batch_equals_the_canvas_letterbox_exactly() -> None:
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (120, 200, 3), np.uint8), rng.integers(0, 256, (90, 60, 3), np.uint8)]
    new, new_lbs = BatchPreprocessor((64, 64))(images)
    old, old_lbs = _old_batch(images, (64, 64))
    assert np.array_equal(new, old) and new_lbs == old_lbs


def test_uint8_batch_is_the_float_batch_times_255() -> None:
    img = np.random.default_rng(4).integers(0, 256, (100, 160, 3), np.uint8)
    f32, _ = BatchPreprocessor((64, 64))([img])
    u8, _ = BatchPreprocessor((64, 64), dtype=np.uint8)([img])
    assert u8.dtype == np.uint8 and np.array_equal(u8.astype(np.float32) * np.float32(1 / 255), f32)
    with pytest.raises(ValueError, match="float32 or uint8"):
        BatchPreprocessor((64, 64), dtype=np.float16)


def test_one_pass_reformat_matches_full_rgb_then_resize(tmp_path: Path) -> None:
    path = write_video(tmp_path / "a.mp4", width=320, height=180, frames=6)
    cfg = StreamConfig(name="a", url=str(path))
    full = _frames(cfg)
    scaled = _frames(cfg, DecodePlan((96, 96)))
    assert len(full) == len(scaled) == 6
    nh, nw, _ = placement(180, 320, 96, 96)
    for f, s in zip(full, scaled):
        assert f.src_hw is None and not f.scaled and f.shape == (180, 320)
        assert s.image.shape == (nh, nw, 3) and s.src_hw == (180, 320) and s.shape == (180, 320) and s.scaled
        ref = cv2.resize(f.image, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.int16)
        diff = np.abs(s.image.astype(np.int16) - ref)
        assert diff.mean() < 3.0 and np.percentile(diff, 99) < 40
    # the batch assembler places the scaled frame without resizing and maps boxes to source pixels
    b_scaled, (lb_s,) = BatchPreprocessor((96, 96))([scaled[3].image], [scaled[3].src_hw])
    b_full, (lb_f,) = BatchPreprocessor((96, 96))([full[3].image])
    assert lb_s == lb_f and (lb_s.src_h, lb_s.src_w) == (180, 320)
    assert np.abs(b_scaled - b_full).mean() < 0.012


def test_plan_keeps_full_frames_where_asked() -> None:
    plan = DecodePlan((320, 320))
    assert plan.target("a", 720, 1280) == (180, 320)
    assert plan.target("a", 100, 100) is None           # enlarging is not the decoder's job
    plan.keep_full("a", True)
    assert plan.target("a", 720, 1280) is None and plan.target("b", 720, 1280) == (180, 320)
    plan.keep_full("a", False)
    plan.want_full("b", seconds=0.2)
    assert plan.target("b", 720, 1280) is None
    time.sleep(0.25)
    assert plan.target("b", 720, 1280) == (180, 320)
    assert DecodePlan((320, 320), full_res=True).target("x", 720, 1280) is None
    assert DecodePlan(None).target("x", 720, 1280) is None


def test_frames_dropped_by_max_fps_are_never_converted(tmp_path: Path, monkeypatch) -> None:
    path = write_video(tmp_path / "a.mkv", frames=50, fps=25)
    calls = []
    real = sources_mod.convert
    monkeypatch.setattr(sources_mod, "convert", lambda vf, target, r=None: calls.append(vf.time) or real(vf, target, r))
    stride = FrameStride(10)
    kept = _frames(StreamConfig(name="a", url=str(path)), stride=stride)
    assert 19 <= len(kept) <= 21 and stride.dropped == 50 - len(kept)
    assert len(calls) == len(kept)                       # only kept frames reached the RGB conversion
    assert np.diff([f.pts for f in kept]).min() >= 0.08 - 1e-6


def test_synthetic_frames_dropped_by_max_fps_are_never_rendered(monkeypatch) -> None:
    src = SyntheticSource(StreamConfig(name="s", url="synthetic://?fps=20&frames=20&width=64&height=48"))
    src.stride = FrameStride(5)
    src.open()
    rendered = []
    real = src._scene.frame
    src._scene.frame = lambda i: rendered.append(i) or real(i)
    frames = list(src.frames())
    assert len(frames) == len(rendered) == 5 and rendered == [0, 4, 8, 12, 16]


def test_keyframes_only_yields_exactly_the_keyframes(tmp_path: Path) -> None:
    path = write_video(tmp_path / "k.mp4", frames=40, gop=8)
    with av.open(str(path)) as c:
        keys = [round(f.time, 4) for f in c.decode(video=0) if f.key_frame]
    assert 4 <= len(keys) < 40
    got = _frames(StreamConfig(name="k", url=str(path), keyframes_only=True))
    assert [round(f.pts, 4) for f in got] == keys


def test_keyframes_only_is_refused_for_synthetic_scenes() -> None:
    with pytest.raises(ValueError, match="keyframes_only needs a video decoder"):
        StreamConfig(name="s", url="synthetic://?fps=5", keyframes_only=True)


def test_threading_per_source_kind(tmp_path: Path) -> None:
    path = write_video(tmp_path / "a.mp4", frames=5)
    for live in (None, True, False):  # a local file always ends: throughput wins
        src = AVSource(StreamConfig(name="a", url=str(path), live=live))
        src.open()
        assert src.thread_type == src._stream.thread_type.name == "AUTO"
        src.close()
    assert AVSource(StreamConfig(name="c", url="rtsp://cam/s")).thread_type == "SLICE"  # no frames held back
    assert AVSource(StreamConfig(name="h", url="http://cam/s.m3u8", live=False)).thread_type == "AUTO"


def test_console_draws_a_scaled_frame_in_source_coordinates_and_asks_for_full_frames() -> None:
    from types import SimpleNamespace

    from vap_video.pipeline.console import ConsoleFeed
    from vap_video.pipeline.tracking import Tracks

    plan = DecodePlan((96, 96))
    pipeline = SimpleNamespace(decode_plan=plan, names=["person"], stream_config=lambda name: object(),
                               settings=SimpleNamespace(stream_analytics=lambda cfg: None), hooks=[], listeners=[])
    feed = ConsoleFeed(pipeline)  # type: ignore[arg-type]
    small = np.zeros((54, 96, 3), np.uint8)                       # 720p scaled to the engine size
    tracks = Tracks(ids=np.array([1]), boxes=np.array([[640.0, 360.0, 1280.0, 720.0]], np.float32),
                    scores=np.array([0.9], np.float32), class_ids=np.array([0]))
    feed(Frame("cam", 0, 0.0, time.time(), small, (720, 1280)), None, tracks, [])  # type: ignore[arg-type]
    assert feed.frame_size("cam") == (1280, 720)                  # the editor works in source pixels
    assert plan.target("cam", 720, 1280) == (54, 96)
    data, _ = feed.jpeg("cam")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[:2] == (54, 96)
    # the box (source 640..1280 x 360..720) is drawn at the image's scale: its edge near x = 48, not off-image
    assert img[30:54, 46:50].max() > 100 and img[5:20, 10:40].max() < 40
    assert plan.target("cam", 720, 1280) is None                  # a viewer looks: full frames for a while


def test_stage_budget_and_pipeline_run_measure_every_stage(tmp_path: Path) -> None:
    """`vap bench --stages` building blocks on a tiny clip: every stage timed, every frame processed
    in both decoding modes (numbers are not checked: they are the benchmark's, not the test's)."""
    from vap_video.engines.synth import write_video as write_scene
    from vap_video.pipeline.tools.bench_stages import pipeline_run, stage_budget
    from vap_video.pipeline.model_config import SHIPPED_MODEL

    clip = write_scene(tmp_path / "c.mp4", seed=1, frames=12, width=320, height=192, fps=25, num_objects=2)
    budget = stage_budget(SHIPPED_MODEL, clip, batch=4)
    assert budget["frames"] == 12
    for key in ("demux", "decode", "colour_conversion", "resize_letterbox", "one_pass_convert_scale",
                "batch_normalise", "engine", "post", "tracker", "analytics", "sinks"):
        assert budget[key] >= 0, key
    assert budget["engine"] > 0 and budget["decode"] > 0
    for full in (False, True):
        row = pipeline_run(SHIPPED_MODEL, [clip], 2, 4, 1, tmp_path, full_frames=full, thread_type="SLICE")
        assert row["frames"] == 24 and row["fps"] > 0 and row["thread_type"] == "SLICE"
    assert AVSource(StreamConfig(name="x", url=str(clip))).thread_type == "AUTO"   # the override was undone


@pytest.mark.parametrize("consumer", [None, "snapshots", "annotate", "dehaze"])
def test_runtime_keeps_full_frames_only_for_consumers_of_the_pixels(tmp_path: Path, consumer: str | None) -> None:
    from vap_video.pipeline.runtime import Pipeline
    from vap_video.pipeline.settings import parse_settings
    from tests.onnx_models import constant_detector

    # one box fixed in the 64x64 input (16..48 both ways); the engine never sees the source size
    model = constant_detector(tmp_path / "m.onnx", np.array([[16, 16, 48, 48, 0.9, 0]], np.float32), ["person"])
    clip = write_video(tmp_path / "a.mp4", width=320, height=180, frames=8)
    cfg: dict = {"streams": [{"name": "a", "url": str(clip)}], "model": {"path": str(model)},
                 "sinks": [{"path": str(tmp_path / "ev.jsonl"), "fsync": "never"}], "server": {"enabled": False}}
    if consumer == "snapshots":
        cfg["snapshots"] = {"enabled": True, "dir": str(tmp_path / "snaps")}
    elif consumer == "annotate":
        cfg["annotate"] = {"enabled": True, "dir": str(tmp_path / "ann")}
    elif consumer == "dehaze":
        cfg["dehaze"] = {"enabled": True}
    p = Pipeline(parse_settings(cfg, "test"))
    seen: list[tuple[tuple[int, int], tuple[int, int], np.ndarray]] = []
    p.hooks.append(lambda frame, dets, tracks, events: seen.append((frame.image.shape[:2], frame.shape, dets.boxes)))
    p.start()
    assert p.wait(60)
    p.stop()
    assert len(seen) == 8 and all(shape == (180, 320) for _, shape, _ in seen)
    images = {img for img, _, _ in seen}
    assert images == ({(36, 64)} if consumer is None else {(180, 320)})
    # boxes in source pixels either way: net (16..48) at scale 0.2, pad_y 14 -> x 80..240, y 10..170
    for _, _, boxes in seen:
        np.testing.assert_allclose(boxes, [[80, 10, 240, 170]], atol=0.6)
