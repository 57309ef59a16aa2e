"""Dehazing stage for video: dark channel prior (He, Sun, Tang, CVPR 2009 / TPAMI 2011), CPU.

The scattering model (see :mod:`vap_video.engines.haze`) says a hazy picture is I = J*t + A*(1 - t). The dark
channel prior says that in haze-free outdoor patches some colour channel is nearly black, so the
per-patch minimum of I/A measures the haze: t = 1 - omega*dark(I/A). Recovery inverts the model:
J = (I - A)/max(t, t0) + A.

Made fast and stable for live video:
- Everything that needs a neighbourhood (dark channel, A, t, the guided filter's coefficients) runs
  on a low-resolution copy (long side ``work_size``); only the final linear model t = a*grey + b and
  the recovery run at full resolution ("fast guided filter", He & Sun 2015). Patch size and filter
  radius are given for a 600 px picture (the paper's 15) and scaled to the working resolution, so
  they cover the same part of the scene at any camera resolution.
- A is kept per stream as an exponential moving average, re-estimated every ``airlight_every``
  frames and reset on a scene change. Full-resolution t is never averaged over time (moving objects
  would leave ghosts); it is cheap to recompute.
- A gate with hysteresis turns the stage on only when the haze score (mean low-res dark channel of
  the non-sky part of the picture) rises above ``gate_on`` and off when it falls below ``gate_off``.
  Sky and white areas are excluded from the score, so they do not switch the stage on: bright
  regions connected to the top edge (sky, textured clouds too) or textureless (white walls), but
  never a bright region reaching the bottom of the picture (that is fog, not sky: dense even fog
  makes the whole picture bright and flat, and must raise the score, not hide it). A frame with no
  structure at all (uniform grey, white, black) scores 0.
- Sky protection: on the textureless part of that sky mask t = 1, and where I is within ``sky_tolerance`` of A
  t is raised towards 1 (Jiang et al.'s tolerance trick), so the recovery does not amplify noise there.
- A cheap alternative mode: CLAHE on the luminance channel (Lab L), gated the same way.
- In the runtime (:class:`StreamDehazers`) frames are first shrunk to the engine's letterbox size,
  so "full resolution" there is the resolution the detector sees.

Measured quality, detection effect, flicker and speed: benchmarks/dehaze.md; user guide: docs/dehaze.md.

The per-stream state (:class:`DehazeState`) is plain Python so the CPU path here and the torch path
(:mod:`vap_video.pipeline.dehaze.torch_dehazer`) share it and make identical decisions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
from pydantic import ConfigDict, Field, model_validator

from vap_video.engines.letterbox import Letterbox, placement
from vap_video.pipeline.config import Strict
from vap_video.pipeline.dehaze.prior import (
    channels_min,
    dark_channel,
    estimate_airlight,
    flat_mask,
    guided_coefficients,
    haze_score,
    luma,
    recover,
    scaled_size,
    sky_mask,
    transmission,
    work_shape,
)

if TYPE_CHECKING:   # for the annotation only: the runtime hands its Metrics in
    from vap_video.pipeline.metrics import Metrics

AIRLIGHT_FLOOR = 1 / 255  # A is never below one grey level per channel (airlight_min: 0 allowed)


class DehazeConfig(Strict):
    """Dehazing stage settings (global default and per-stream override)."""

    # inf/nan would pass every bound check (nan compares false) and turn the output black or NaN
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    enabled: bool = Field(False, description="Run the dehazing stage on this stream's frames before letterboxing")
    mode: Literal["dcp", "clahe"] = Field(
        "dcp", description="dcp: dark channel prior dehazing; clahe: contrast-limited histogram equalisation of "
        "the luminance only (cheaper, no haze model)")
    gate: bool = Field(
        True, description="Switch the stage on and off by the measured haze score (hysteresis); false keeps it "
        "on for every frame")
    gate_on: float = Field(0.45, ge=0, le=1, description="Haze score at or above which the gate turns the stage on")
    gate_off: float = Field(0.38, ge=0, le=1, description="Haze score below which the gate turns the stage off "
                            "(below gate_on, so a score near the threshold does not flicker)")
    omega: float = Field(0.8, gt=0, le=1, description="Fraction of the haze removed (the paper uses 0.95; 0.8 "
                         "gave better detection mAP on hazy synthetic sets, see benchmarks/dehaze.md)")
    t0: float = Field(0.1, gt=0, lt=1, description="Lower bound of the transmission; bounds noise amplification "
                      "in thick haze")
    patch: int = Field(15, ge=1, le=99, description="Dark-channel patch side in pixels for a 600 px picture; "
                       "scaled with the working resolution")
    work_size: int = Field(320, ge=32, le=4096, description="Long side (px) of the low-resolution copy on which "
                           "the dark channel, A and the guided-filter coefficients are computed")
    guided_radius: int = Field(30, ge=1, le=300, description="Guided-filter radius in pixels for a 600 px "
                               "picture; scaled like patch")
    guided_eps: float = Field(1e-3, gt=0, description="Guided-filter regularisation (larger: smoother t)")
    airlight_fraction: float = Field(0.001, gt=0, le=0.1, description="Fraction of brightest dark-channel "
                                     "pixels among which A is taken (the brightest input pixel of them)")
    airlight_every: int = Field(5, ge=1, description="Re-estimate A every N frames (in between, the smoothed A "
                                "is reused)")
    airlight_alpha: float = Field(0.1, gt=0, le=1, description="Weight of a new A estimate in the moving "
                                  "average (1 = no smoothing)")
    airlight_min: float = Field(0.3, ge=0, le=1, description="Floor of every channel of A; keeps dark scenes "
                                "(night, black frames) from being stretched as if they were haze")
    scene_change: float = Field(0.3, gt=0, le=2, description="1 - correlation of consecutive 32 px grey "
                                "thumbnails above which the frame counts as a new scene (resets the smoothed A)")
    sky_level: float = Field(0.7, gt=0, le=1, description="Low-res dark-channel value above which a textureless "
                             "pixel counts as sky/white and is left out of the haze score")
    sky_texture: float = Field(0.03, ge=0, le=1, description="Local grey standard deviation (0..1) below which a "
                               "bright pixel counts as textureless (sky, white wall) for the haze score")
    min_scene_fraction: float = Field(0.2, ge=0, le=1, description="If less than this fraction of the picture "
                                      "is not sky/white, the haze score is 0 (nothing to dehaze)")
    sky_tolerance: float = Field(0.15, ge=0, le=1, description="Where max|I - A| is below this, t is raised "
                                 "towards 1 (sky protection; 0 disables)")
    clahe_clip: float = Field(2.0, gt=0, description="CLAHE clip limit (mode clahe)")
    clahe_grid: int = Field(8, ge=1, le=64, description="CLAHE tiles per side (mode clahe)")

    @model_validator(mode="after")
    def _gate_order(self) -> DehazeConfig:
        if self.gate_off > self.gate_on:
            raise ValueError(f"gate_off ({self.gate_off}) must not be above gate_on ({self.gate_on}); "
                             "the gate switches on at gate_on and off below gate_off")
        return self



# ----------------------------------------------------------------------------------------------
# per-stream state (shared with the torch path)


@dataclass
class FrameInfo:
    """What the stage measured and decided for one frame (for metrics, the CLI and tests)."""

    score: float
    active: bool
    airlight: np.ndarray | None
    scene_change: bool
    seconds: float = 0.0


@dataclass
class DehazeState:
    """Gate, smoothed A and scene-change detector of one stream.

    Kept free of image arrays beyond a 32 px thumbnail, so a removed stream costs nothing to drop
    and the CPU and torch paths can share it.
    """

    cfg: DehazeConfig
    active: bool = False
    airlight: np.ndarray | None = None
    frames: int = 0
    since_estimate: int = 0
    thumb: np.ndarray | None = field(default=None, repr=False)

    def gate(self, score: float) -> bool:
        """Hysteresis: on at >= gate_on, off below gate_off, unchanged in between."""
        if not self.cfg.gate:
            self.active = True
        elif self.active:
            self.active = score >= self.cfg.gate_off
        else:
            self.active = score >= self.cfg.gate_on
        return self.active

    def is_scene_change(self, thumb: np.ndarray) -> bool:
        """Compare the grey thumbnail with the last one; True on a cut or a camera move.

        Compares structure (1 - correlation of the thumbnails), not brightness: haze thickening or
        the sun going behind a cloud changes every pixel but is not a new scene, and must not reset A.
        Flat thumbnails (black, white, grey frames) have no structure: their mean level decides.
        """
        prev, self.thumb = self.thumb, thumb
        if prev is None or prev.shape != thumb.shape:
            return prev is not None
        sp, st = float(prev.std()), float(thumb.std())
        if sp < 0.01 or st < 0.01:
            return abs(float(prev.mean()) - float(thumb.mean())) > 0.1 or (sp < 0.01) != (st < 0.01)
        corr = float(((prev - prev.mean()) * (thumb - thumb.mean())).mean()) / (sp * st)
        return 1.0 - corr > self.cfg.scene_change

    def needs_estimate(self, scene_change: bool) -> bool:
        return self.airlight is None or scene_change or self.since_estimate >= self.cfg.airlight_every

    def update_airlight(self, estimate: np.ndarray, scene_change: bool) -> np.ndarray:
        """EMA of A; a scene change (or the first frame) takes the new estimate as it is."""
        # never below AIRLIGHT_FLOOR, whatever airlight_min says: A = 0 in a channel makes I/A 0/0 (NaN)
        est = np.maximum(np.asarray(estimate, dtype=np.float32), np.float32(max(self.cfg.airlight_min, AIRLIGHT_FLOOR)))
        if self.airlight is None or scene_change or self.airlight.shape != est.shape:
            self.airlight = est
        else:
            a = np.float32(self.cfg.airlight_alpha)
            self.airlight = (1 - a) * self.airlight + a * est
        self.since_estimate = 0
        return self.airlight


def thumbnail(grey_low: np.ndarray) -> np.ndarray:
    """32 px (long side) grey thumbnail for scene-change detection."""
    h, w = work_shape(grey_low.shape[0], grey_low.shape[1], 32)
    return cv2.resize(grey_low, (w, h), interpolation=cv2.INTER_AREA)


# ----------------------------------------------------------------------------------------------
# the stage


class Dehazer:
    """Dehazes the frames of one stream (keeps that stream's gate and A). Not thread-safe: one owner.

    ``process`` takes RGB (or grey) uint8 frames, H x W x 3, H x W x 1 or H x W, and returns a frame
    of the same shape and dtype: the input object itself when the gate is off.
    """

    def __init__(self, cfg: DehazeConfig | None = None) -> None:
        self.cfg = cfg or DehazeConfig(enabled=True)
        self.state = DehazeState(self.cfg)
        self.last = FrameInfo(0.0, False, None, False)
        self._clahe = cv2.createCLAHE(clipLimit=self.cfg.clahe_clip,
                                      tileGridSize=(self.cfg.clahe_grid, self.cfg.clahe_grid))

    def reset(self) -> None:
        """Forget the stream's history (gate, A, thumbnail)."""
        self.state = DehazeState(self.cfg)

    def process(self, image: np.ndarray) -> np.ndarray:
        t_start = time.perf_counter()
        img, squeeze = _check_image(image)
        cfg, st = self.cfg, self.state
        h, w = img.shape[:2]
        lh, lw = work_shape(h, w, cfg.work_size)
        low_u8 = img if (lh, lw) == (h, w) else cv2.resize(img, (lw, lh), interpolation=cv2.INTER_AREA)
        if low_u8.ndim == 2:
            low_u8 = low_u8[:, :, None]
        low = low_u8.astype(np.float32) * np.float32(1 / 255)
        patch = scaled_size(cfg.patch, max(lh, lw))
        cmin = np.ascontiguousarray(channels_min(low), dtype=np.float32)  # once: dark channel and sky mask
        dark = dark_channel(cmin, patch)
        grey_low = luma(low_u8[:, :, 0] if low_u8.shape[2] == 1 else low_u8)
        flat = flat_mask(grey_low, max(1, patch // 2), cfg.sky_texture)
        sky = sky_mask(cmin, flat, cfg.sky_level)
        score = haze_score(dark, sky, cfg.min_scene_fraction, float(cv2.meanStdDev(grey_low)[1][0, 0]))
        was_active = st.active
        active = st.gate(score)
        change = st.is_scene_change(thumbnail(grey_low))
        st.frames += 1
        st.since_estimate += 1
        out = image
        fresh = change or (active and not was_active)
        if cfg.mode == "dcp" and st.needs_estimate(fresh):
            # also while the gate is off (the dark channel is already there, the estimate costs little),
            # and the gate opening takes a fresh A: the haze that opened it is not the air A was
            # smoothed over (an A from the last foggy spell, or from clear air, would be blended in)
            st.update_airlight(estimate_airlight(low, dark, cfg.airlight_fraction), fresh)
        if active and cfg.mode == "clahe":
            out = self._apply_clahe(img)
        elif active:
            assert st.airlight is not None
            # t = 1 only where the sky is also textureless: textured bright regions at the top may
            # be hazy buildings as well as clouds, and recovering clouds costs nothing but contrast
            out = self._apply_dcp(img, low, grey_low, st.airlight, max(lh, lw),
                                  sky & flat & (dark >= np.float32(cfg.sky_level)))
        if out is not image and squeeze:
            out = out.reshape(image.shape)
        self.last = FrameInfo(score, active, None if st.airlight is None else st.airlight.copy(), change,
                              time.perf_counter() - t_start)
        return out

    # -- modes
    def _apply_dcp(self, img: np.ndarray, low: np.ndarray, grey_low: np.ndarray, airlight: np.ndarray,
                   work_long: int, sky: np.ndarray | None = None) -> np.ndarray:
        cfg = self.cfg
        t_low = transmission(low, airlight, cfg.omega, scaled_size(cfg.patch, work_long), cfg.t0, cfg.sky_tolerance)
        if sky is not None:
            t_low[sky] = 1.0  # textureless sky/white: nothing to recover, only noise to amplify
        mean_a, mean_b = guided_coefficients(grey_low, t_low, scaled_size(cfg.guided_radius, work_long, odd=False),
                                             cfg.guided_eps)
        h, w = img.shape[:2]
        if mean_a.shape != (h, w):
            mean_a = cv2.resize(mean_a, (w, h), interpolation=cv2.INTER_LINEAR)
            mean_b = cv2.resize(mean_b, (w, h), interpolation=cv2.INTER_LINEAR)
        t = mean_a * luma(img) + mean_b
        return recover(img, t, airlight, cfg.t0)

    def _apply_clahe(self, img: np.ndarray) -> np.ndarray:
        if img.ndim == 2:
            return self._clahe.apply(img)
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
        lab[:, :, 0] = self._clahe.apply(np.ascontiguousarray(lab[:, :, 0]))
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)




def _check_image(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """Validate a frame; returns it as H x W (grey) or H x W x 3, and whether an H x W x 1 was squeezed."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"dehaze expects a NumPy image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"dehaze expects uint8 frames (0..255), got {image.dtype}; convert with "
                         "(img * 255).clip(0, 255).astype(np.uint8)")
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0], True
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3):
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"dehaze got an empty image of shape {image.shape}")
        return image, False
    raise ValueError(f"dehaze expects H x W, H x W x 1 or H x W x 3 images, got shape {image.shape}")


class StreamDehazers:
    """The runtime's dehazers, one per stream, owned by the prep thread (no locks needed).

    Why a class of its own: the runtime only has to call :meth:`apply` per frame; this keeps the
    per-stream state, rebuilds a stream's dehazer when its settings object changes (a stream removed
    and added again with new settings) and drops the state of streams that are gone.

    With `max_hw` (the engine input size) a frame larger than the engine input is first shrunk to
    the size letterboxing would give it (same scale, same INTER_AREA resize), and dehazed there: the
    detector never sees more pixels than that, so recovering them at camera resolution would be work
    thrown away (a 1080p frame has 36x the pixels of its 320 px letterboxed copy). Letterboxing then
    has nothing left to resize; :func:`source_transform` gives the letterbox transform back in
    source-frame pixels.
    """

    def __init__(self, metrics: Metrics | None = None, max_hw: tuple[int, int] | None = None) -> None:
        self.metrics = metrics
        self.max_hw = max_hw
        self._by_stream: dict[str, tuple[DehazeConfig, Dehazer, object, int]] = {}

    def apply(self, stream: str, image: np.ndarray, cfg: DehazeConfig | None, owner: object = None,
              index: int | None = None) -> np.ndarray:
        """The frame to letterbox: dehazed when the stream's stage is enabled and its gate is on.

        `owner` (the runtime passes the stream's settings object) and `index` (the frame number)
        tell a stream removed and added again under the same name from the same stream: a new
        owner object, or a frame number that went backwards (a new decoder), starts a fresh state,
        so no gate or A leaks across, even when no batch ran in between to prune it.
        """
        if cfg is None or not cfg.enabled:
            if self._by_stream.pop(stream, None) is not None:
                self._forget_metrics(stream)
            return image
        entry = self._by_stream.get(stream)
        restarted = entry is not None and index is not None and index < entry[3]
        if entry is None or entry[0] is not cfg or entry[2] is not owner or restarted:
            entry = (cfg, Dehazer(cfg), owner, -1)
        self._by_stream[stream] = entry = (entry[0], entry[1], owner, -1 if index is None else index)
        dehazer = entry[1]
        if self.max_hw is not None:
            image = fit_to(image, self.max_hw)
        out = dehazer.process(image)
        m = self.metrics
        if m is not None:
            info = dehazer.last
            m.dehaze_score.labels(stream).set(info.score)
            m.dehaze_active.labels(stream).set(1.0 if info.active else 0.0)
            m.dehaze_seconds.labels(stream).observe(info.seconds)
            if info.airlight is not None and info.airlight.size == 3:
                for ch, v in zip(("r", "g", "b"), info.airlight.tolist()):
                    m.dehaze_airlight.labels(stream, ch).set(v)
            else:  # no current A (clahe mode, grey stream): no series, rather than a stale value
                self._forget_metrics(stream, airlight_only=True)
        return out

    def prune(self, live: set[str]) -> None:
        """Drop the state of streams not in `live` (removed streams)."""
        for name in [n for n in self._by_stream if n not in live]:
            del self._by_stream[name]

    def streams(self) -> list[str]:
        return list(self._by_stream)

    def _forget_metrics(self, stream: str, airlight_only: bool = False) -> None:
        m = self.metrics
        if m is None:
            return
        series: list[tuple[Any, tuple[str, ...]]] = [] if airlight_only else [
            (m.dehaze_score, (stream,)), (m.dehaze_active, (stream,)), (m.dehaze_seconds, (stream,))]
        series += [(m.dehaze_airlight, (stream, c)) for c in ("r", "g", "b")]
        for metric, labels in series:
            try:
                metric.remove(*labels)
            except KeyError:
                pass


def fit_to(image: np.ndarray, max_hw: tuple[int, int]) -> np.ndarray:
    """Shrink `image` to the size letterboxing into `max_hw` would give it (never enlarges).

    Same scale and interpolation as :func:`vap_video.pipeline.preprocess.letterbox_into`, so letterboxing the
    result places it exactly where the original would have gone.
    """
    h, w = image.shape[:2]
    nh, nw, lb = placement(h, w, max_hw[0], max_hw[1])
    if lb.scale >= 1:
        return image
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)


def source_transform(lb: Letterbox, source: np.ndarray, max_hw: tuple[int, int]) -> Letterbox:
    """The letterbox transform of `source` when what was letterboxed was its ``fit_to(source, max_hw)``.

    Unchanged when the sizes match (stage off, or a frame that needed no shrinking). Otherwise the
    scale is the one letterboxing would have used on the source frame (the fitted copy fills the
    canvas in its binding dimension, so its own scale is 1 and its padding is the source's), and
    boxes map back to source-frame pixels exactly as without the stage.
    """
    h, w = source.shape[:2]
    if (lb.src_h, lb.src_w) == (h, w):
        return lb
    r = min(max_hw[0] / h, max_hw[1] / w) * lb.scale
    return Letterbox(scale=r, pad_x=lb.pad_x, pad_y=lb.pad_y, src_h=h, src_w=w)
