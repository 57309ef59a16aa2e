"""The torch dehazing path matches the CPU path (`dehaze.torch_dehazer` against `dehaze.stage`)."""

from __future__ import annotations

import numpy as np
import pytest

from vap_video.engines.haze import add_haze
from vap_video.engines.synth import render_image
from vap_video.pipeline.dehaze import DehazeConfig, Dehazer, DehazeState

torch = pytest.importorskip("torch", reason="the torch dehazing path needs torch")
from vap_video.pipeline.dehaze.torch_dehazer import TorchDehazer  # noqa: E402

# The tolerance the module docstring promises when the working size divides the frame size.
MEAN_TOL, P999_TOL = 0.5, 3.0  # in 0..255 levels


def _frames(w: int, h: int, n: int = 3) -> list[np.ndarray]:
    return [add_haze(render_image((31, i), w, h)[0], 0.35, 0.85) for i in range(n)]


def _to_u8(x: torch.Tensor) -> np.ndarray:
    return (x.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(640, 360), (1280, 720)])
def test_torch_matches_cpu_within_tolerance(size):
    cfg = DehazeConfig(enabled=True, gate=False)
    frames = _frames(*size, n=2)
    cpu = [Dehazer(cfg).process(f) for f in frames]
    td = TorchDehazer(cfg, "cpu")
    states = [td.new_state() for _ in frames]
    out, infos = td.process(torch.from_numpy(np.stack(frames)), states)
    got = _to_u8(out)
    for i, f in enumerate(frames):
        ref = Dehazer(cfg)
        ref.process(f)
        np.testing.assert_allclose(infos[i].airlight, ref.last.airlight, atol=2 / 255)
        assert infos[i].score == pytest.approx(ref.last.score, abs=0.01)
        d = np.abs(got[i].astype(int) - cpu[i].astype(int))
        assert d.mean() < MEAN_TOL and np.percentile(d, 99.9) <= P999_TOL, (d.mean(), np.percentile(d, 99.9))
        assert np.abs(got[i].astype(int) - f.astype(int)).mean() > 10 * d.mean()  # and it did dehaze


def test_gate_and_airlight_state_follow_the_cpu_path_frame_by_frame():
    cfg = DehazeConfig(enabled=True, airlight_every=2)
    clear = render_image((31, 7), 320, 180)[0]
    seq = [clear, clear, add_haze(clear, 0.3, 0.85), add_haze(clear, 0.3, 0.8), add_haze(clear, 0.3, 0.75), clear]
    cpu = Dehazer(cfg)
    td = TorchDehazer(cfg, "cpu")
    state = td.new_state()
    for img in seq:
        cpu.process(img)
        _, (info,) = td.process(torch.from_numpy(img[None]), [state])
        assert info.active == cpu.last.active
        if cpu.last.airlight is None:
            assert info.airlight is None
        else:
            np.testing.assert_allclose(info.airlight, cpu.last.airlight, atol=2 / 255)
    assert [cpu.last.active] == [False]


def test_float_nchw_and_uint8_nhwc_inputs_agree_and_gated_off_items_pass_through():
    cfg = DehazeConfig(enabled=True, gate_on=0.3, gate_off=0.2)
    hazy = _frames(320, 180, n=1)[0]
    clear = render_image((31, 8), 320, 180)[0]
    batch_u8 = torch.from_numpy(np.stack([hazy, clear]))
    batch_f = batch_u8.permute(0, 3, 1, 2).float() / 255
    td = TorchDehazer(cfg, "cpu")
    a, infos = td.process(batch_u8, [td.new_state(), td.new_state()])
    b, _ = td.process(batch_f, [td.new_state(), td.new_state()])
    assert [i.active for i in infos] == [True, False]
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.equal(a[1], batch_f[1])  # gate off: untouched


def test_bad_input_is_a_clear_error():
    td = TorchDehazer(DehazeConfig(enabled=True), "cpu")
    with pytest.raises(ValueError, match="one DehazeState per batch item"):
        td.process(torch.zeros(2, 3, 32, 32), [td.new_state()])
    with pytest.raises(ValueError, match="batch"):
        td.process(torch.zeros(3, 32, 32), [td.new_state()])
    with pytest.raises(ValueError, match="clahe"):
        clahe = TorchDehazer(DehazeConfig(enabled=True, mode="clahe"), "cpu")
        clahe.process(torch.zeros(1, 3, 32, 32), [clahe.new_state()])
    with pytest.raises(TypeError, match="DehazeState"):
        td.process(torch.zeros(1, 3, 32, 32), [None])


def test_single_channel_batch_matches_cpu():
    cfg = DehazeConfig(enabled=True, gate=False)
    grey = add_haze(render_image((31, 9), 640, 360)[0], 0.3, 0.85)[:, :, 0]
    cpu = Dehazer(cfg).process(grey)
    td = TorchDehazer(cfg, "cpu")
    out, _ = td.process(torch.from_numpy(grey[None, None]).float() / 255, [td.new_state()])
    got = (out[0, 0].numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    d = np.abs(got.astype(int) - cpu.astype(int))
    assert out.shape == (1, 1, 360, 640) and d.mean() < MEAN_TOL and d.max() <= P999_TOL


def test_each_item_uses_its_own_streams_settings():
    """A batch mixes streams; a stream's per-stream override (here omega, and the gate) must apply to
    its items, as on the CPU path, not the settings the TorchDehazer was built with."""
    strong = DehazeConfig(enabled=True, gate=False, omega=0.95)
    weak = DehazeConfig(enabled=True, gate=False, omega=0.5)
    frames = _frames(320, 180, n=3)
    td = TorchDehazer(strong, "cpu")
    states = [DehazeState(strong), DehazeState(weak), DehazeState(strong)]
    out, infos = td.process(torch.from_numpy(np.stack(frames)), states)
    got = _to_u8(out)
    for i, (f, cfg) in enumerate(zip(frames, (strong, weak, strong))):
        ref = Dehazer(cfg).process(f)
        d = np.abs(got[i].astype(int) - ref.astype(int))
        assert d.mean() < MEAN_TOL and np.percentile(d, 99.9) <= P999_TOL, (i, d.mean())
    other = Dehazer(strong).process(frames[1])
    assert np.abs(got[1].astype(int) - other.astype(int)).mean() > 5 * MEAN_TOL


@pytest.mark.parametrize("shape", [(1, 7), (2, 641), (1, 1), (7, 1), (3, 3), (5, 4000)])
def test_thin_frames_do_not_crash_and_match_cpu(shape):
    img = np.random.default_rng(1).integers(0, 256, shape + (3,)).astype(np.uint8)
    cfg = DehazeConfig(enabled=True, gate=False)
    td = TorchDehazer(cfg, "cpu")
    out, _ = td.process(torch.from_numpy(img[None]), [td.new_state()])
    assert out.shape == (1, 3) + shape and torch.isfinite(out).all()
    if max(shape) <= cfg.work_size:  # no resize: same numbers as the CPU path (resized random noise
        ref = Dehazer(cfg).process(img)  # differs more: OpenCV's area weights vs torch's pooling)
        assert np.abs(_to_u8(out)[0].astype(int) - ref.astype(int)).mean() < 2.0
