"""The dehazing stage on a torch batch tensor (GPU where available), same method as :mod:`vap_video.pipeline.dehaze`.

Why a second implementation: on a GPU node the frames of a batch are already on the device, and
the full-resolution part (upsampling the guided-filter coefficients, the recovery) is a handful of
element-wise kernels there, versus the bulk of the CPU stage's time. The gate, the smoothed A and
scene-change detection are the very same :class:`vap_video.pipeline.dehaze.DehazeState` objects as on the
CPU path (a few numbers per frame are copied to the host), so both paths switch on and off on the
same frames and use the same A.

Same results as the CPU path within tolerance, measured on synthetic hazy frames (benchmarks/dehaze.md,
tests/test_dehaze_torch.py): when the working size divides the frame size (640x360, 1280x720 and
1920x1080 to 320 px all do) the mean absolute difference is below 0.5 of 255 levels and the 99.9th
percentile at most 3 levels; the working copy is quantised to 8 bits with OpenCV's rounding so
thresholds see the same values. At other sizes OpenCV's area resize weights differ from torch's
adaptive pooling (mean difference about 1 level, 99.9th percentile up to about 10). A is picked from a
single pixel, so a one-level difference in the working copy can, rarely, select another candidate.

Import this module only where torch is installed; the runtime never imports it unless asked to.
"""

from __future__ import annotations

import math
import time

import numpy as np

from vap_video.pipeline.dehaze.prior import haze_score, scaled_size, sky_mask, work_shape
from vap_video.pipeline.dehaze.stage import DehazeConfig, DehazeState, FrameInfo, thumbnail

try:
    import torch
    import torch.nn.functional as F
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("vap_video.pipeline.dehaze.torch_dehazer needs torch (pip install 'vap-video[train]'); "
                      "the CPU stage vap_video.pipeline.dehaze works without it") from exc

__all__ = ["TorchDehazer"]

_LUMA = (0.299, 0.587, 0.114)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 1, H, W] BT.601 luma (C = 1 passes through)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _erode(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Min filter over patch x patch; borders use only pixels inside (as cv2.erode with +inf border)."""
    if patch <= 1:
        return x
    p = patch // 2
    return -F.max_pool2d(-x, patch, stride=1, padding=p)


def _reflect101_index(n: int, r: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-n axis padded by r on both sides, OpenCV BORDER_REFLECT_101 style.

    Why not F.pad(mode="reflect"): it refuses a pad as large as the axis, so a thin frame (a 2 px
    high strip, a 1 px column) crashed; OpenCV keeps reflecting (period 2(n - 1)), and so does this.
    """
    i = np.arange(-r, n + r)
    if n == 1:
        i = np.zeros_like(i)
    else:
        period = 2 * (n - 1)
        i = np.abs(i) % period
        i = np.where(i >= n, period - i, i)
    return torch.as_tensor(i, dtype=torch.long, device=device)


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over (2r+1)^2 with reflect-101 borders (as OpenCV's BORDER_REFLECT_101), any frame size."""
    k = 2 * r + 1
    h, w = x.shape[-2:]
    x = x.index_select(-2, _reflect101_index(h, r, x.device)).index_select(-1, _reflect101_index(w, r, x.device))
    return F.avg_pool2d(F.avg_pool2d(x, (k, 1), stride=1), (1, k), stride=1)  # separable: O(k) per pixel


def _dark(x: torch.Tensor, patch: int) -> torch.Tensor:
    return _erode(x.amin(dim=1, keepdim=True), patch)


class TorchDehazer:
    """Dehaze a batch of frames from several streams in one go.

    ``process(images, states)``: ``images`` is float [B, 3, H, W] in 0..1 (RGB, the layout the
    engine takes) or uint8 [B, H, W, 3] (decoded frames stacked); ``states`` gives each item's
    stream state (one :class:`DehazeState` per stream, owned by the caller; its ``cfg`` is the
    settings that item is dehazed with, ``cfg`` here only the default for :meth:`new_state`). Returns float
    [B, 3, H, W] in 0..1 and a :class:`FrameInfo` per item. Items whose gate is off are returned
    unchanged.
    """

    def __init__(self, cfg: DehazeConfig | None = None, device: str | None = None) -> None:
        self.cfg = cfg or DehazeConfig(enabled=True)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)

    def new_state(self) -> DehazeState:
        return DehazeState(self.cfg)

    @torch.no_grad()
    def process(self, images: torch.Tensor, states: list[DehazeState]) -> tuple[torch.Tensor, list[FrameInfo]]:
        """Dehaze a batch; each item with the settings of its own state (``state.cfg``).

        Why per state: the batch mixes streams, and each stream may override the stage's settings
        in the YAML; items are grouped by settings and each group runs with its own.
        """
        t_start = time.perf_counter()
        x = self._as_float(images)
        b, c, h, w = x.shape
        if len(states) != b:
            raise ValueError(f"need one DehazeState per batch item: {b} images, {len(states)} states")
        if c not in (1, 3):
            raise ValueError(f"expected 1 or 3 channels, got {c}")
        for st in states:
            if not isinstance(st, DehazeState):
                raise TypeError("states must be DehazeState objects (TorchDehazer.new_state()), "
                                f"got {type(st).__name__}")
        if b == 0:
            return x, []
        groups: list[tuple[DehazeConfig, list[int]]] = []
        for i, st in enumerate(states):
            for g_cfg, members in groups:
                if g_cfg == st.cfg:
                    members.append(i)
                    break
            else:
                groups.append((st.cfg, [i]))
        for g_cfg, _ in groups:
            if g_cfg.mode != "dcp":
                raise ValueError("TorchDehazer implements mode 'dcp' only; use vap_video.pipeline.dehaze.Dehazer "
                                 "for 'clahe'")
        if len(groups) == 1:
            out, infos = self._process_group(x, states, groups[0][0])
        else:
            out = x.clone()
            infos_by: dict[int, FrameInfo] = {}
            for g_cfg, members in groups:
                idx = torch.tensor(members, device=x.device)
                g_out, g_infos = self._process_group(x[idx], [states[i] for i in members], g_cfg)
                out[idx] = g_out
                infos_by.update(zip(members, g_infos))
            infos = [infos_by[i] for i in range(b)]
        dt = time.perf_counter() - t_start
        for info in infos:
            info.seconds = dt / max(b, 1)
        return out, infos

    def _process_group(self, x: torch.Tensor, states: list[DehazeState],
                       cfg: DehazeConfig) -> tuple[torch.Tensor, list[FrameInfo]]:
        b, c, h, w = x.shape
        lh, lw = work_shape(h, w, cfg.work_size)
        low = x if (lh, lw) == (h, w) else F.interpolate(x, size=(lh, lw), mode="area")
        # quantise like the CPU path (uint8 working copy, 8-bit grey): thresholds (sky, A candidates)
        # then see the same values on both paths
        low = torch.floor(low * 255.0 + 0.5) / 255.0  # OpenCV rounds halves up in its integer-factor area resize
        work_long = max(lh, lw)
        patch = scaled_size(cfg.patch, work_long)
        dark = _dark(low, patch)[:, 0]                                   # [B, h, w]
        grey_low = torch.round(_grey(low) * 255.0) / 255.0               # [B, 1, h, w]
        rf = max(1, patch // 2)
        mg = _box(grey_low, rf)
        flat = (_box(grey_low * grey_low, rf) - mg * mg) < cfg.sky_texture ** 2
        dark_np = dark.float().cpu().numpy()
        grey_np = grey_low[:, 0].float().cpu().numpy()
        flat_np = flat[:, 0].cpu().numpy()
        cmin_np = low.amin(dim=1).float().cpu().numpy()
        sky_np = np.stack([sky_mask(cmin_np[i], flat_np[i], cfg.sky_level) for i in range(b)])
        sky = (torch.from_numpy(sky_np).to(x.device)[:, None] & flat     # [B, 1, h, w]: t = 1 where also flat
               & (dark[:, None] >= cfg.sky_level))                        # and bright in the dark channel
        n_cand = max(1, int(math.ceil(lh * lw * cfg.airlight_fraction)))
        infos: list[FrameInfo] = []
        active_idx: list[int] = []
        airlights: list[np.ndarray] = []
        for i, st in enumerate(states):
            score = haze_score(dark_np[i], sky_np[i], cfg.min_scene_fraction, float(grey_np[i].std()))
            was_active = st.active
            active = st.gate(score)
            change = st.is_scene_change(thumbnail(grey_np[i]))
            st.frames += 1
            st.since_estimate += 1
            fresh = change or (active and not was_active)  # as the CPU path: A kept fresh while off,
            if st.needs_estimate(fresh):                    # raw estimate when the gate opens
                st.update_airlight(self._airlight(low[i], dark[i], n_cand), fresh)
            if active:
                assert st.airlight is not None  # estimated on a stream's first frame (needs_estimate)
                active_idx.append(i)
                airlights.append(st.airlight)
            infos.append(FrameInfo(score, active, None if st.airlight is None else st.airlight.copy(), change))
        out = x
        if active_idx:
            idx = torch.tensor(active_idx, device=x.device)
            a = torch.as_tensor(np.stack(airlights), dtype=x.dtype, device=x.device).view(len(active_idx), c, 1, 1)
            out = x.clone()
            out[idx] = self._recover(x[idx], low[idx], grey_low[idx], a, work_long, sky[idx], cfg)
        return out, infos

    # -- steps
    def _as_float(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"TorchDehazer expects a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError("expected a batch [B, 3, H, W] float or [B, H, W, 3] uint8, "
                             f"got shape {tuple(images.shape)}")
        x = images.to(self.device)
        if x.dtype == torch.uint8:
            return x.permute(0, 3, 1, 2).float().div_(255.0)
        if not x.is_floating_point():
            raise ValueError(f"expected float (0..1) or uint8 images, got {x.dtype}")
        return x.float()

    @staticmethod
    def _airlight(low: torch.Tensor, dark: torch.Tensor, n: int) -> np.ndarray:
        """Brightest input pixel among the n brightest dark-channel pixels (as the CPU path)."""
        flat = dark.reshape(-1)
        kth = torch.topk(flat, min(n, flat.numel())).values[-1]
        idx = torch.nonzero(flat >= kth).reshape(-1)                     # ties included, in index order
        pix = low.reshape(low.shape[0], -1)[:, idx]                      # [C, n]
        best = torch.argmax(pix.sum(dim=0))
        return pix[:, best].float().cpu().numpy()

    @staticmethod
    def _recover(x: torch.Tensor, low: torch.Tensor, grey_low: torch.Tensor, a: torch.Tensor,
                 work_long: int, sky: torch.Tensor, cfg: DehazeConfig) -> torch.Tensor:
        patch = scaled_size(cfg.patch, work_long)
        t = 1.0 - cfg.omega * _dark(low / a, patch)
        t = t.clamp_min(cfg.t0)
        if cfg.sky_tolerance > 0:
            diff = (low - a).abs().amax(dim=1, keepdim=True)
            t = (t * (cfg.sky_tolerance / diff.clamp_min(1e-6)).clamp_min(1.0)).clamp_max(1.0)
        t = torch.where(sky, torch.ones_like(t), t)
        lh, lw = low.shape[-2:]
        r = scaled_size(cfg.guided_radius, work_long, odd=False)
        r = max(1, min(r, (min(lh, lw) - 1) // 2)) if min(lh, lw) > 2 else 1
        mean_i, mean_p = _box(grey_low, r), _box(t, r)
        cov = _box(grey_low * t, r) - mean_i * mean_p
        var = _box(grey_low * grey_low, r) - mean_i * mean_i
        ca = cov / (var + cfg.guided_eps)
        cb = mean_p - ca * mean_i
        ma, mb = _box(ca, r), _box(cb, r)
        h, w = x.shape[-2:]
        if (h, w) != (lh, lw):
            ma = F.interpolate(ma, size=(h, w), mode="bilinear", align_corners=False)
            mb = F.interpolate(mb, size=(h, w), mode="bilinear", align_corners=False)
        t_full = (ma * _grey(x) + mb).clamp_min(cfg.t0)
        return ((x - a) / t_full + a).clamp_(0.0, 1.0)
