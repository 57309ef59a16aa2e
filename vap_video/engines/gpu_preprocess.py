"""Letterbox and normalise on the GPU with torch: uint8 frames in, float [B, 3, H, W] out.

Why: at 1080p, a float32 network input is 4x the bytes of the uint8 frame, and the CPU resize +
convert is the biggest per-frame cost in the pipeline. Doing both on the GPU means only uint8
crosses PCIe and the CPU only decodes.

It reproduces `vap_video/pipeline/preprocess.py` (the CPU path the engine contract is defined by): the same
geometry (scale = min(h / src_h, w / src_w), size round(src * scale), centred, the odd pixel
right/bottom, pad 114), area averaging when shrinking and bilinear (half-pixel centres) when
enlarging, rounding to uint8 levels after the resize as the CPU path does, then 0..1. Area
averaging is done with explicit coverage weights (OpenCV's definition) because torch's 'area'
mode is a different filter for non-integer factors. OpenCV's bilinear kernel uses fixed-point
weights, so values agree within a grey level or two, not bit for bit;
tests/test_tensorrt_gpu_preprocess.py measures the difference on CPU torch. The geometry (and so
the inverse letterbox) is identical.

`engines` must not import `pipeline`, so the batch-shape rule lives here and `vap_video.pipeline.preprocess`
imports it. torch is imported when a preprocessor is created.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vap_video.engines.letterbox import PAD_VALUE, Letterbox, batch_hw, placement

# The letterbox rule itself (placement, batch shape, pad value) is vap_video/engines/letterbox.py's; this module
# only does the same arithmetic on the GPU.
LetterboxParams = Letterbox  # the name this module's callers and tests know


def area_weights(src: int, dst: int) -> np.ndarray:
    """[dst, src] matrix of area-averaging weights: output pixel i averages source span
    [i * s, (i + 1) * s) with s = src / dst, partial pixels weighted by their covered fraction.
    This is what OpenCV's INTER_AREA computes when shrinking, as two small matrix products."""
    s = src / dst
    starts = np.arange(dst)[:, None] * s
    left = np.arange(src)[None, :]
    overlap = np.clip(np.minimum(left + 1, starts + s) - np.maximum(left, starts), 0, None)
    return (overlap / s).astype(np.float64)


class GpuPreprocessor:
    """Callable: list of RGB uint8 frames (H x W x 3 NumPy arrays or torch tensors, any device) ->
    (float tensor [B, 3, H, W] on `device`, list of LetterboxParams).

    Frames of the same size (one camera's) are resized together in one call. `dtype` torch.float16
    halves the input for FP16 engines. The output tensor is contiguous, so its `data_ptr()` can be
    handed to TensorRT as the input address.
    """

    def __init__(self, max_hw: tuple[int, int], stride: int = 32, rect: bool = False, device: str = "cuda",
                 dtype: Any = None) -> None:
        import torch

        self.torch = torch
        self.max_hw = (int(max_hw[0]), int(max_hw[1]))
        self.stride = stride
        self.rect = rect
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self._weights: dict[tuple[int, int, int, int], tuple[Any, Any]] = {}

    def _area(self, x: Any, nh: int, nw: int) -> Any:
        """Area-averaging resize (N, C, H, W) -> (N, C, nh, nw) as Wy @ x @ Wx^T, cached per size.
        torch's own 'area' mode uses whole-pixel windows and differs from OpenCV by up to ~35
        grey levels at edges for non-integer factors; these weights match OpenCV's."""
        torch = self.torch
        key = (x.shape[2], x.shape[3], nh, nw)
        if key not in self._weights:
            wy = torch.as_tensor(area_weights(x.shape[2], nh), dtype=torch.float32, device=self.device)
            wx = torch.as_tensor(area_weights(x.shape[3], nw), dtype=torch.float32, device=self.device)
            self._weights[key] = (wy, wx.T.contiguous())
        wy, wxt = self._weights[key]
        return torch.matmul(torch.matmul(wy, x), wxt)

    def _upload(self, frame: Any) -> Any:
        torch = self.torch
        t = frame if isinstance(frame, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frame))
        if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[2] != 3:
            raise ValueError(f"GPU preprocessing takes RGB uint8 H x W x 3 frames, got {tuple(t.shape)} {t.dtype}")
        return t.to(self.device, non_blocking=True)

    def __call__(self, frames: Sequence[Any]) -> tuple[Any, list[LetterboxParams]]:
        torch = self.torch
        F = torch.nn.functional
        if not frames:
            raise ValueError("GPU preprocessing needs at least one frame")
        sizes = [(int(f.shape[0]), int(f.shape[1])) for f in frames]
        h, w = batch_hw(sizes, self.max_hw, self.stride, self.rect)
        canvas = torch.full((len(frames), 3, h, w), float(PAD_VALUE), dtype=torch.float32, device=self.device)
        params: list[LetterboxParams | None] = [None] * len(frames)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):
            groups.setdefault(size, []).append(i)
        for (src_h, src_w), idx in groups.items():
            nh, nw, lb = placement(src_h, src_w, h, w)
            x = torch.stack([self._upload(frames[i]) for i in idx]).permute(0, 3, 1, 2).float()
            if (nh, nw) != (src_h, src_w):
                if lb.scale < 1:
                    x = self._area(x, nh, nw)
                else:
                    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
                x = x.round_().clamp_(0, 255)  # the CPU path resizes in uint8
            py, px = int(lb.pad_y), int(lb.pad_x)
            canvas[idx, :, py:py + nh, px:px + nw] = x
            for i in idx:
                params[i] = LetterboxParams(lb.scale, lb.pad_x, lb.pad_y, src_h, src_w)
        out = canvas.mul_(1 / 255).to(self.dtype).contiguous()
        return out, [p for p in params if p is not None]
