"""The CPU dehazing stage (vap_video.pipeline.dehaze): correctness on known haze, edge cases, gate, A smoothing,
config, and the stage inside the running pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from vap_video.engines.haze import add_haze
from vap_video.engines.synth import render_image
from vap_video.pipeline.config import ConfigError
from vap_video.pipeline.dehaze import (
    DehazeConfig,
    Dehazer,
    DehazeState,
    StreamDehazers,
    dark_channel,
    estimate_airlight,
    fit_to,
    scaled_size,
    source_transform,
    work_shape,
)
from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.settings import parse_settings

FORCED = DehazeConfig(enabled=True, gate=False)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def local_contrast(img: np.ndarray) -> float:
    """Mean absolute Laplacian of the grey image: what CLAHE raises (global std need not grow)."""
    import cv2

    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    return float(np.abs(cv2.Laplacian(grey.astype(np.float32), cv2.CV_32F)).mean())


def scene(i: int, w: int = 480, h: int = 270) -> np.ndarray:
    return render_image((21, i), w, h)[0]


# ---------------------------------------------------------------------------- building blocks

def test_dark_channel_is_patch_minimum_of_channel_minimum():
    rng = np.random.default_rng(0)
    img = rng.random((20, 30, 3), dtype=np.float32)
    d = dark_channel(img, 5)
    m = img.min(axis=2)
    # brute force at an interior pixel and at a corner (border: only pixels inside the picture)
    assert d[10, 10] == pytest.approx(m[8:13, 8:13].min())
    assert d[0, 0] == pytest.approx(m[0:3, 0:3].min())


def test_airlight_ignores_a_small_bright_object_with_dark_surroundings():
    img = np.full((100, 100, 3), 0.2, np.float32)
    img[:30] = (0.8, 0.82, 0.85)              # hazy sky-like region: high dark channel
    img[70:73, 50:53] = (1.0, 1.0, 1.0)       # a headlight: brightest pixel, but its patch is dark
    dark = dark_channel(img, 15)
    a = estimate_airlight(img, dark, 0.001)
    np.testing.assert_allclose(a, (0.8, 0.82, 0.85), atol=1e-6)


def test_patch_scales_with_resolution():
    assert scaled_size(15, 600) == 15
    assert scaled_size(15, 320) == 9       # 8 rounded up to odd
    assert scaled_size(15, 1200) == 31     # 30 rounded up to odd
    assert work_shape(1080, 1920, 320) == (180, 320)
    assert work_shape(100, 200, 320) == (100, 200)  # never upscaled


# ---------------------------------------------------------------------------- correctness on known haze

def test_dehazing_recovers_synthetic_haze_better_than_the_hazy_input():
    gains = []
    for i in range(4):
        clean = scene(i)
        hazy = add_haze(clean, 0.3, 0.85)
        out = Dehazer(FORCED).process(hazy)
        assert out.shape == clean.shape and out.dtype == np.uint8
        gains.append(psnr(out, clean) - psnr(hazy, clean))
    assert np.mean(gains) > 3.0, gains
    assert min(gains) > 0.0, gains


def test_haze_score_rises_with_haze():
    clean = scene(3)
    d = Dehazer(FORCED)
    scores = []
    for t in (1.0, 0.7, 0.4):
        d.reset()
        d.process(clean if t == 1.0 else add_haze(clean, t, 0.85))
        scores.append(d.last.score)
    assert scores[0] < scores[1] < scores[2], scores


# ---------------------------------------------------------------------------- edge cases

def _sky_scene(h: int = 240, w: int = 426) -> np.ndarray:
    rng = np.random.default_rng(1)
    img = np.empty((h, w, 3), np.uint8)
    rows = np.linspace(250, 225, int(h * 0.8))[:, None]
    img[: len(rows)] = np.stack([rows - 15, rows - 5, rows], axis=2).clip(0, 255).astype(np.uint8)
    img[len(rows):] = rng.integers(0, 120, size=(h - len(rows), w, 3), dtype=np.uint8)  # clear, textured ground
    noise = rng.normal(0, 2, size=img.shape)
    return (img + noise).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["sky", "white"])
def test_sky_and_white_scenes_keep_the_gate_off_and_do_not_blow_up(kind):
    img = _sky_scene() if kind == "sky" else np.full((180, 320, 3), 250, np.uint8)
    gated = Dehazer(DehazeConfig(enabled=True))
    for _ in range(5):
        out = gated.process(img)
        assert not gated.last.active
        assert out is img  # gate off: the frame passes through untouched
    assert gated.last.score < DehazeConfig().gate_off
    forced = Dehazer(FORCED).process(img)
    sky = slice(0, int(img.shape[0] * 0.7))
    diff = np.abs(forced[sky].astype(int) - img[sky].astype(int))
    assert diff.mean() < 6 and np.percentile(diff, 99) < 25, (diff.mean(), np.percentile(diff, 99))


def test_black_frame():
    img = np.zeros((120, 160, 3), np.uint8)
    d = Dehazer(DehazeConfig(enabled=True))
    assert d.process(img) is img and not d.last.active and d.last.score == 0.0
    out = Dehazer(FORCED).process(img)
    assert np.array_equal(out, img)


def test_grey_frame_is_left_grey():
    img = np.full((120, 160, 3), 128, np.uint8)
    out = Dehazer(FORCED).process(img)
    assert np.isfinite(out.astype(float)).all()
    assert np.abs(out.astype(int) - 128).max() <= 2


@pytest.mark.parametrize("shape", ["hw", "hw1"])
def test_single_channel_input_keeps_its_shape_and_gains_contrast(shape):
    grey = np.dot(scene(1), [0.299, 0.587, 0.114]).astype(np.uint8)
    hazy = add_haze(np.repeat(grey[:, :, None], 3, axis=2), 0.35, 0.85)[:, :, 0]
    img = hazy if shape == "hw" else hazy[:, :, None]
    out = Dehazer(FORCED).process(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out.std() > img.std() * 1.3
    assert psnr(out.reshape(grey.shape), grey) > psnr(hazy, grey)


def test_bad_input_is_a_clear_error():
    d = Dehazer(FORCED)
    with pytest.raises(ValueError, match="uint8"):
        d.process(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="H x W x 3"):
        d.process(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(TypeError, match="NumPy"):
        d.process([[0, 0]])  # type: ignore[arg-type]


def test_clahe_mode_raises_local_contrast_only_when_gated_on():
    hazy = add_haze(scene(2), 0.35, 0.85)
    out = Dehazer(DehazeConfig(enabled=True, mode="clahe", gate=False)).process(hazy)
    assert out.shape == hazy.shape and local_contrast(out) > 1.2 * local_contrast(hazy)
    clear = scene(2)
    d = Dehazer(DehazeConfig(enabled=True, mode="clahe", gate_on=0.9, gate_off=0.8))
    assert d.process(clear) is clear


# ---------------------------------------------------------------------------- gate

def test_gate_hysteresis():
    st = DehazeState(DehazeConfig(enabled=True, gate_on=0.4, gate_off=0.3))
    seq = [(0.1, False), (0.35, False), (0.4, True), (0.35, True), (0.3, True), (0.29, False), (0.39, False),
           (0.5, True)]
    for score, expected in seq:
        assert st.gate(score) is expected, (score, expected)
    assert DehazeState(DehazeConfig(enabled=True, gate=False)).gate(0.0) is True


def test_gate_on_images_switches_on_haze_and_back_off_on_clear_frames():
    clear = scene(3)
    hazy = add_haze(clear, 0.3, 0.85)
    d = Dehazer(DehazeConfig(enabled=True, scene_change=1.0))
    states = []
    for img in (clear, clear, hazy, hazy, clear):
        d.process(img)
        states.append(d.last.active)
    assert states == [False, False, True, True, False]


# ---------------------------------------------------------------------------- A over time

def test_airlight_ema_and_reestimate_interval():
    cfg = DehazeConfig(enabled=True, airlight_alpha=0.25, airlight_every=3)
    st = DehazeState(cfg)
    st.update_airlight(np.array([0.8, 0.8, 0.8]), scene_change=False)
    np.testing.assert_allclose(st.airlight, 0.8)
    st.update_airlight(np.array([0.4, 0.4, 0.4]), scene_change=False)
    np.testing.assert_allclose(st.airlight, 0.7)          # 0.75*0.8 + 0.25*0.4
    st.update_airlight(np.array([0.4, 0.4, 0.4]), scene_change=True)
    np.testing.assert_allclose(st.airlight, 0.4)          # a cut takes the new estimate as it is
    st.update_airlight(np.array([0.1, 0.1, 0.1]), scene_change=True)
    np.testing.assert_allclose(st.airlight, cfg.airlight_min)  # floor for dark scenes
    assert not st.needs_estimate(False)
    st.since_estimate = 3
    assert st.needs_estimate(False)


def test_airlight_is_smoothed_within_a_scene_and_reset_on_scene_change():
    base = scene(4)
    cfg = DehazeConfig(enabled=True, gate=False, airlight_alpha=0.2, airlight_every=1)
    d = Dehazer(cfg)
    d.process(add_haze(base, 0.3, 0.9))
    a_first = d.last.airlight.copy()
    d.process(add_haze(base, 0.3, 0.6))        # same scene, airlight jumps: A only moves 20 % of the way
    a_second = d.last.airlight.copy()
    raw = Dehazer(cfg)
    raw.process(add_haze(base, 0.3, 0.6))
    a_raw = raw.last.airlight
    assert not d.last.scene_change
    np.testing.assert_allclose(a_second, 0.8 * a_first + 0.2 * a_raw, atol=1e-5)
    other = add_haze(np.ascontiguousarray(scene(9)[::-1]), 0.3, 0.6)  # another view: reset to its raw estimate
    d.process(other)
    assert d.last.scene_change
    fresh = Dehazer(cfg)
    fresh.process(other)
    np.testing.assert_allclose(d.last.airlight, fresh.last.airlight, atol=1e-6)


# ---------------------------------------------------------------------------- config

def test_config_validation():
    with pytest.raises(ValidationError, match="gate_off"):
        DehazeConfig(gate_on=0.2, gate_off=0.3)
    with pytest.raises(ValidationError):
        DehazeConfig(omega=1.5)
    with pytest.raises(ValidationError):
        DehazeConfig(mode="retinex")
    with pytest.raises(ValidationError, match="Extra inputs"):
        DehazeConfig(omgea=0.9)
    assert DehazeConfig().enabled is False


def test_settings_global_default_and_stream_override():
    s = parse_settings({"dehaze": {"enabled": True, "omega": 0.9},
                        "streams": [{"name": "a", "url": "synthetic://?seed=1"},
                                    {"name": "b", "url": "synthetic://?seed=2", "dehaze": {"mode": "clahe"}}]})
    a, b = s.streams
    assert s.stream_dehaze(a).enabled and s.stream_dehaze(a).omega == 0.9
    assert s.stream_dehaze(b).mode == "clahe" and not s.stream_dehaze(b).enabled  # override replaces the section
    assert parse_settings({}).dehaze.enabled is False
    with pytest.raises(ConfigError, match=r"streams\[0\]\.dehaze.*'omgea'"):
        parse_settings({"streams": [{"name": "a", "url": "synthetic://?seed=1", "dehaze": {"omgea": 1}}]})


# ---------------------------------------------------------------------------- runtime

def test_fit_to_and_source_transform_match_letterboxing_the_source():
    from vap_video.pipeline.preprocess import BatchPreprocessor, unletterbox

    frame = scene(6, 1280, 720)
    prep = BatchPreprocessor((320, 320))
    _, (lb_src,) = prep([frame])
    small = fit_to(frame, (320, 320))
    assert small.shape == (180, 320, 3)
    _, (lb_small,) = prep([small])
    lb = source_transform(lb_small, frame, (320, 320))
    assert (lb.scale, lb.pad_x, lb.pad_y, lb.src_h, lb.src_w) == pytest.approx(
        (lb_src.scale, lb_src.pad_x, lb_src.pad_y, lb_src.src_h, lb_src.src_w))
    net_boxes = np.array([[10, 80, 50, 120], [300, 200, 320, 239]], np.float32)
    np.testing.assert_allclose(unletterbox(net_boxes, lb), unletterbox(net_boxes, lb_src), atol=1e-3)
    assert fit_to(small, (320, 320)) is small  # already fits: untouched


def test_stream_dehazers_metrics_passthrough_and_prune():
    m = Metrics()
    sd = StreamDehazers(m)
    hazy = add_haze(scene(5), 0.3, 0.85)
    cfg = DehazeConfig(enabled=True, gate_on=0.3, gate_off=0.2)
    assert sd.apply("off", hazy, DehazeConfig()) is hazy
    out = sd.apply("cam", hazy, cfg)
    assert out is not hazy
    get = m.registry.get_sample_value
    assert get("vap_dehaze_active", {"stream": "cam"}) == 1.0
    assert get("vap_dehaze_haze_score", {"stream": "cam"}) > cfg.gate_on
    assert 0.3 <= get("vap_dehaze_airlight", {"stream": "cam", "channel": "g"}) <= 1.0
    assert get("vap_dehaze_seconds_count", {"stream": "cam"}) == 1
    assert get("vap_dehaze_active", {"stream": "off"}) is None
    sd.prune({"other"})
    assert sd.streams() == []
    m.forget_stream("cam")
    assert get("vap_dehaze_active", {"stream": "cam"}) is None
    assert get("vap_dehaze_airlight", {"stream": "cam", "channel": "g"}) is None


def test_pipeline_feeds_the_engine_dehazed_frames(tmp_path):
    from vap_video.engines.backends import load_backend
    from vap_video.pipeline.runtime import Pipeline
    from tests.onnx_models import constant_detector

    model = constant_detector(tmp_path / "m.onnx", np.array([[10, 10, 30, 40, 0.9, 0]], np.float32), ["person"])
    url = "synthetic://?seed=3&fps=25&width=320&height=192&objects=2&frames=12&haze=0.6"
    settings = parse_settings({
        "streams": [{"name": "fog", "url": url, "live": False, "dehaze": {"enabled": True, "gate": False}},
                    {"name": "plain", "url": url, "live": False}],
        "model": {"path": str(model)}, "batch": {"max_batch": 1},
        "sinks": [{"path": str(tmp_path / "ev.jsonl"), "fsync": "never"}], "server": {"enabled": False}})
    backend = load_backend(model)
    seen: list[np.ndarray] = []
    infer = backend.infer
    backend.infer = lambda images: (seen.append(images.copy()), infer(images))[1]  # type: ignore[method-assign]
    p = Pipeline(settings, backend=backend)
    boxes: dict[tuple[str, int], np.ndarray] = {}
    p.hooks.append(lambda frame, dets, tracks, events: boxes.__setitem__((frame.stream, frame.index), dets.boxes))
    p.start()
    try:
        assert p.wait(60)
    finally:
        assert p.stop()
    get = p.metrics.registry.get_sample_value
    assert get("vap_dehaze_seconds_count", {"stream": "fog"}) == 12
    assert get("vap_dehaze_active", {"stream": "fog"}) == 1.0
    assert get("vap_dehaze_seconds_count", {"stream": "plain"}) is None
    # the same synthetic scene reached the engine twice per frame index: once dehazed (more contrast)
    # dehazed frames are shrunk to the engine size before dehazing; boxes still come back in source pixels
    assert len(boxes) == 24
    for i in range(12):
        np.testing.assert_allclose(boxes[("fog", i)], boxes[("plain", i)], atol=1e-4)
    assert boxes[("fog", 0)][0, 2] > 64  # source pixels (320 px frame), not the 64 px engine input
    stds = sorted(float(b[0, :, 10:-10].std()) for b in seen)
    assert len(seen) == 24
    assert np.median(stds[12:]) > 1.1 * np.median(stds[:12])  # deterministic frames: 1.17 measured


# ---------------------------------------------------------------------------- review findings: sky mask vs fog

@pytest.mark.parametrize("airlight", [0.85, 0.95])
def test_uniform_fog_scores_monotonically_and_is_recovered(airlight):
    """Dense, even fog (no depth gradient) makes the whole picture bright and flat; it must not be
    taken for sky: the score keeps rising with the fog, the gate stays on, and contrast comes back."""
    clean = scene(1)
    scores, active = [], []
    for t in (1.0, 0.6, 0.4, 0.25, 0.15, 0.1):
        d = Dehazer(DehazeConfig(enabled=True))
        d.process(clean if t == 1.0 else add_haze(clean, t, airlight, depth_gradient=False))
        scores.append(d.last.score)
        active.append(d.last.active)
    assert all(a < b for a, b in zip(scores, scores[1:])), scores
    assert all(s >= DehazeConfig().gate_on for s in scores[3:]) and all(active[3:]), (scores, active)
    for t in (0.25, 0.15):
        hazy = add_haze(clean, t, airlight, depth_gradient=False)
        out = Dehazer(FORCED).process(hazy)
        assert psnr(out, clean) > psnr(hazy, clean) + 0.3, (t, psnr(out, clean), psnr(hazy, clean))
        assert out.std() > 1.5 * hazy.std(), (t, out.std(), hazy.std())


def _cloudy(frac: float, amp: float, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    h, w = 270, 480
    img = scene(2).astype(np.float32)
    n = int(h * frac)
    clouds = cv2.GaussianBlur(rng.normal(0, 1, (n, w)).astype(np.float32), (0, 0), 5)
    clouds = clouds / clouds.std() * amp
    img[:n] = np.clip(0.82 + clouds, 0, 1)[:, :, None] * np.array([0.95, 0.98, 1.0]) * 255  # overcast, clear air
    return img.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("frac,amp", [(0.5, 0.06), (0.7, 0.06), (0.7, 0.1)])
def test_textured_cloudy_sky_in_clear_weather_keeps_the_gate_off(frac, amp):
    d = Dehazer(DehazeConfig(enabled=True))
    img = _cloudy(frac, amp)
    assert d.process(img) is img and not d.last.active
    assert d.last.score < DehazeConfig().gate_off, d.last.score


@pytest.mark.parametrize("level", [0, 128, 170, 200, 250, 255])
def test_uniform_frames_score_zero_and_keep_the_gate_off(level):
    """A flat grey/white/black frame has no structure to recover (grey 128 used to score 0.50)."""
    img = np.full((120, 160, 3), level, np.uint8)
    d = Dehazer(DehazeConfig(enabled=True))
    for _ in range(3):
        assert d.process(img) is img
    assert d.last.score == 0.0 and not d.last.active


# ---------------------------------------------------------------------------- review findings: A and its metric

def test_airlight_stays_fresh_while_the_gate_is_off_and_is_taken_fresh_when_it_reopens():
    """A foggy spell, a long clear spell (gate off), then thicker, whiter fog: the A used when the
    gate reopens is that fog's own, not the old spell's smoothed value blended in."""
    clean = scene(1)
    cfg = DehazeConfig(enabled=True, gate_on=0.35, gate_off=0.3)
    d = Dehazer(cfg)
    for _ in range(6):
        d.process(add_haze(clean, 0.3, 0.7))
    assert d.last.active
    a_fog = d.last.airlight.copy()
    clear_ref = Dehazer(cfg)
    clear_ref.process(clean)
    for _ in range(12):
        d.process(clean)
    assert not d.last.active and not d.last.scene_change
    assert not np.allclose(d.last.airlight, a_fog, atol=0.02)  # kept being re-estimated while off
    assert np.abs(d.last.airlight - clear_ref.last.airlight).max() < np.abs(a_fog - clear_ref.last.airlight).max()
    thick = add_haze(clean, 0.3, 0.95)
    out = d.process(thick)
    assert d.last.active and not d.last.scene_change
    fresh = Dehazer(cfg)
    ref = fresh.process(thick)
    np.testing.assert_allclose(d.last.airlight, fresh.last.airlight, atol=1e-6)
    assert np.array_equal(out, ref)


def test_airlight_metric_follows_a_while_gate_off_and_is_dropped_without_a():
    m = Metrics()
    sd = StreamDehazers(m)
    get = m.registry.get_sample_value
    cfg = DehazeConfig(enabled=True, gate_on=0.35, gate_off=0.3, airlight_every=1, airlight_alpha=1.0)
    sd.apply("cam", add_haze(scene(5), 0.3, 0.7), cfg)
    assert get("vap_dehaze_active", {"stream": "cam"}) == 1.0
    sd.apply("cam", scene(5), cfg)
    sd.apply("cam", scene(5), cfg)
    assert get("vap_dehaze_active", {"stream": "cam"}) == 0.0
    ref = Dehazer(cfg)
    ref.process(scene(5))
    assert get("vap_dehaze_airlight", {"stream": "cam", "channel": "b"}) == pytest.approx(float(ref.last.airlight[2]))
    clahe = DehazeConfig(enabled=True, mode="clahe")  # new settings object: the stream's dehazer is rebuilt
    sd.apply("cam", scene(5), clahe)
    assert get("vap_dehaze_airlight", {"stream": "cam", "channel": "b"}) is None


# ---------------------------------------------------------------------------- review findings: config edge values

def test_airlight_min_zero_gives_no_nan_and_no_black_output():
    import warnings

    img = np.zeros((60, 80, 3), np.uint8)
    img[..., 0] = np.random.default_rng(0).integers(0, 256, (60, 80))
    img[..., 1] = 200  # blue channel 0 everywhere: its A estimate is 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "invalid value encountered in divide" fails the test
        d = Dehazer(DehazeConfig(enabled=True, gate=False, airlight_min=0.0))
        out = d.process(img)
        black = Dehazer(DehazeConfig(enabled=True, gate=False, airlight_min=0.0)).process(np.zeros_like(img))
    assert np.isfinite(d.last.airlight).all() and d.last.airlight.min() > 0
    assert abs(float(out[..., 1].mean()) - 200) < 30  # the green plane survives (was all 0)
    assert black.max() == 0


@pytest.mark.parametrize("key", ["omega", "guided_eps", "clahe_clip", "gate_on", "airlight_min"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_and_inf_settings_are_rejected(key, value):
    with pytest.raises(ValidationError, match=key):
        DehazeConfig(**{key: value})


# ---------------------------------------------------------------------------- review findings: runtime wiring

def test_a_stream_removed_and_added_again_starts_with_a_fresh_dehaze_state():
    sd = StreamDehazers()
    cfg = DehazeConfig(enabled=True, gate_on=0.3, gate_off=0.2)
    hazy = add_haze(scene(5), 0.3, 0.85)
    first, second = object(), object()  # the runtime passes the stream's settings object
    for i in range(4):
        sd.apply("cam", hazy, cfg, owner=first, index=i)
    old = sd._by_stream["cam"][1]
    assert old.state.frames == 4 and old.state.active
    sd.apply("cam", hazy, cfg, owner=second, index=0)  # re-added (same name, same dehaze settings)
    assert sd._by_stream["cam"][1] is not old and sd._by_stream["cam"][1].state.frames == 1
    kept = sd._by_stream["cam"][1]
    sd.apply("cam", hazy, cfg, owner=second, index=1)
    assert sd._by_stream["cam"][1] is kept and kept.state.frames == 2
    sd.apply("cam", hazy, cfg, owner=second, index=0)  # frame numbers restarted: a new decoder
    assert sd._by_stream["cam"][1] is not kept


def test_prep_loop_maps_every_dehazed_frame_back_even_if_the_stream_goes_mid_batch(tmp_path):
    """A batch holds a dehazed (shrunk) frame of a stream, then that stream is removed before its
    next frame in the same batch: the first frame's boxes must still map to source pixels."""
    from vap_video.engines.backends import load_backend
    from vap_video.pipeline.frames import Frame
    from vap_video.pipeline.runtime import Pipeline
    from tests.onnx_models import constant_detector

    model = constant_detector(tmp_path / "m.onnx", np.array([[10, 10, 30, 40, 0.9, 0]], np.float32), ["person"])
    settings = parse_settings({
        "streams": [{"name": "fog", "url": "synthetic://?frames=2", "live": False,
                     "dehaze": {"enabled": True, "gate": False}}],
        "model": {"path": str(model)}, "batch": {"max_batch": 2},
        "sinks": [{"path": str(tmp_path / "ev.jsonl"), "fsync": "never"}], "server": {"enabled": False}})
    p = Pipeline(settings, backend=load_backend(model))
    stream_cfg = settings.streams[0]
    img = add_haze(scene(5, 320, 192), 0.3, 0.85)
    frames = [Frame("fog", 0, None, 0.0, img), Frame("fog", 1, None, 0.0, img)]
    answers = iter([stream_cfg, None])  # removed between its two frames of the batch
    p.stream_config = lambda name: next(answers)  # type: ignore[method-assign]
    batches = iter([frames, None])
    p.batcher.next_batch = lambda timeout=0.2: next(batches)  # type: ignore[method-assign]
    got: list = []
    p._put = lambda q, item: (got.append(item), True)[1]  # type: ignore[method-assign]
    p._prep_loop()
    lbs = got[0].transforms
    assert (lbs[0].src_h, lbs[0].src_w) == (192, 320)  # source pixels, not the shrunk copy's
    assert lbs[0].scale == pytest.approx(lbs[1].scale) and lbs[0].pad_y == pytest.approx(lbs[1].pad_y)


def test_plan_shape_never_builds_an_empty_canvas_for_extreme_aspect_ratios():
    """(Review finding 11; in this file because tests/test_preprocess.py belongs to the lead.) A 2x3000
    strip letterboxed at 640 with rect on got a zero-height canvas and NaN boxes."""
    from vap_video.pipeline.preprocess import BatchPreprocessor, plan_shape, unletterbox

    assert plan_shape([(2, 3000)], (640, 640), 32, True) == (32, 640)
    assert plan_shape([(3000, 2)], (640, 640), 32, True) == (640, 32)
    assert plan_shape([(2, 3000), (360, 640)], (640, 640), 32, True) == (384, 640)
    images, (lb,) = BatchPreprocessor((640, 640), 32, True)([np.zeros((2, 3000, 3), np.uint8)])
    assert images.shape[-2:] == (32, 640)
    boxes = unletterbox(np.array([[0, lb.pad_y, 640, lb.pad_y + 1]], np.float32), lb)
    assert np.isfinite(boxes).all()
