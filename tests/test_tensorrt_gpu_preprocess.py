"""GPU letterbox (`engines/gpu_preprocess.py`) against the CPU path (`pipeline/preprocess.py`), on CPU torch.

Geometry must be identical (the inverse letterbox uses it); pixel values may differ by the rounding of
OpenCV's fixed-point kernels vs torch's float ones, so they are compared with measured tolerances.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (GPU preprocessing needs it)")

from vap_video.engines.gpu_preprocess import GpuPreprocessor  # noqa: E402
from vap_video.pipeline.preprocess import BatchPreprocessor, unletterbox  # noqa: E402


def scene(h: int, w: int, seed: int) -> np.ndarray:
    """A frame with smooth gradients, flat blocks and sharp edges (what resizes disagree on most)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) % 256)], axis=-1)
    img = img.astype(np.uint8)
    for _ in range(6):
        y0, x0 = rng.integers(0, h - h // 6), rng.integers(0, w - w // 6)
        img[y0:y0 + h // 8, x0:x0 + w // 8] = rng.integers(0, 256, 3)
    return img


def compare(frames: list[np.ndarray], max_hw: tuple[int, int], rect: bool) -> tuple[float, float]:
    cpu_batch, cpu_lb = BatchPreprocessor(max_hw, 32, rect)(frames)
    gpu_batch, gpu_lb = GpuPreprocessor(max_hw, 32, rect, device="cpu")(frames)
    assert tuple(gpu_batch.shape) == cpu_batch.shape and gpu_batch.dtype == torch.float32
    assert gpu_batch.is_contiguous()
    for a, b in zip(cpu_lb, gpu_lb):
        assert (a.scale, a.pad_x, a.pad_y, a.src_h, a.src_w) == (b.scale, b.pad_x, b.pad_y, b.src_h, b.src_w)
    diff = np.abs(gpu_batch.numpy() - cpu_batch) * 255
    return float(diff.mean()), float(diff.max())


@pytest.mark.parametrize("size, max_hw, rect", [
    ((1080, 1920), (640, 640), False),   # downscale by exactly 3 (area)
    ((1080, 1920), (640, 640), True),    # rectangular batch 384x640
    ((1080, 1920), (416, 416), True),    # non-integer factor 4.6 (area with partial pixels)
    ((500, 700), (320, 320), True),      # non-integer factor 2.19
    ((240, 320), (640, 640), False),     # upscale (bilinear)
    ((640, 640), (640, 640), False),     # no resize: must be exact
])
def test_matches_cpu_preprocess(size: tuple[int, int], max_hw: tuple[int, int], rect: bool):
    frames = [scene(*size, seed=i) for i in range(2)]
    mean, worst = compare(frames, max_hw, rect)
    if size == max_hw:
        assert mean == 0 and worst == 0
    else:
        # Measured: area resizes agree exactly but for rare rounding ties; bilinear differs by
        # OpenCV's fixed-point weights (mean 0.09 grey levels at 240x320 -> 640).
        assert mean < 0.15, f"mean |diff| {mean:.3f} grey levels"
        assert worst <= 1.0 + 1e-4, f"max |diff| {worst:.2f} grey levels"


def test_mixed_sizes_in_one_batch_keep_their_own_placement():
    frames = [scene(1080, 1920, 0), scene(480, 640, 1), scene(1080, 1920, 2), scene(600, 400, 3)]
    mean, worst = compare(frames, (640, 640), rect=True)
    assert mean < 0.15 and worst <= 1.0 + 1e-4
    _, lbs = GpuPreprocessor((640, 640), 32, True, device="cpu")(frames)
    assert [(lb.src_h, lb.src_w) for lb in lbs] == [f.shape[:2] for f in frames]


def test_boxes_map_back_through_the_same_inverse_letterbox():
    frame = scene(1080, 1920, 5)
    batch, (lb,) = GpuPreprocessor((640, 640), device="cpu")([frame])
    box = np.array([[100.0, 200.0, 300.0, 400.0]])  # source pixels
    net = box * lb.scale + np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y])
    np.testing.assert_allclose(unletterbox(net, lb), box, atol=1e-9)


def test_half_precision_output_and_torch_input():
    frames = [torch.from_numpy(scene(360, 640, 7))]
    out, _ = GpuPreprocessor((320, 320), device="cpu", dtype=torch.float16)(frames)
    ref, _ = BatchPreprocessor((320, 320))([frames[0].numpy()])
    assert out.dtype == torch.float16
    assert float(np.abs(out.float().numpy() - ref).max()) * 255 < 1.2  # a rounding tie + fp16 (0.13 level at 1.0)


def test_bad_frames_are_refused():
    pre = GpuPreprocessor((320, 320), device="cpu")
    with pytest.raises(ValueError, match="RGB uint8 H x W x 3"):
        pre([np.zeros((10, 10), dtype=np.uint8)])
    with pytest.raises(ValueError, match="RGB uint8"):
        pre([np.zeros((10, 10, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match="at least one frame"):
        pre([])


def test_on_cuda_matches_cpu_torch():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    frames = [scene(1080, 1920, i) for i in range(3)]
    cpu, _ = GpuPreprocessor((640, 640), device="cpu")(frames)
    gpu, _ = GpuPreprocessor((640, 640), device="cuda")(frames)
    assert float((gpu.cpu() - cpu).abs().max()) * 255 < 1.01


def test_extreme_aspect_ratio_gets_a_canvas_of_at_least_one_stride():
    """One batch-shape rule for the CPU and GPU paths: a 2x3000 strip must not get a zero-height canvas."""
    from vap_video.engines.gpu_preprocess import batch_hw
    from vap_video.pipeline.preprocess import plan_shape

    assert batch_hw([(2, 3000)], (384, 640), 32, True) == (32, 640)
    assert plan_shape([(2, 3000)], (384, 640), 32, True) == (32, 640)
