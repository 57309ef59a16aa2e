"""The dark channel prior's building blocks (He, Sun, Tang, CVPR 2009 / TPAMI 2011), NumPy/OpenCV.

Pure functions on float32 images in 0..1 (H x W x C with C in {1, 3}, or H x W): the dark
channel, the airlight, the sky and flat masks, the haze score, the fast guided filter's
coefficients, the transmission and the recovery. The stage (`vap_video.pipeline.dehaze.stage`) composes
them per frame; the torch path (`vap_video.pipeline.dehaze.torch_dehazer`) re-implements the same maths on
tensors and is tested against these.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

REFERENCE_SIZE = 600  # the long side the paper's 15 px patch refers to


# ----------------------------------------------------------------------------------------------
# sizes


def work_shape(h: int, w: int, work_size: int) -> tuple[int, int]:
    """(h, w) of the low-resolution working copy: long side `work_size`, never upscaled."""
    long_side = max(h, w)
    if long_side <= work_size:
        return h, w
    r = work_size / long_side
    return max(1, round(h * r)), max(1, round(w * r))


def scaled_size(size_at_600: int, work_long: int, odd: bool = True) -> int:
    """A size given for a 600 px picture, scaled to a picture whose long side is `work_long`."""
    s = max(1, round(size_at_600 * work_long / REFERENCE_SIZE))
    if odd and s % 2 == 0:
        s += 1
    return s


# ----------------------------------------------------------------------------------------------
# building blocks (float32 images in 0..1, H x W x C with C in {1, 3}, or H x W)


def channels_min(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img
    if img.shape[2] == 1:
        return img[:, :, 0]
    # element-wise over channel planes: several times faster than a reduction over a length-3 axis
    return np.minimum(np.minimum(img[:, :, 0], img[:, :, 1]), img[:, :, 2])


def dark_channel(img: np.ndarray, patch: int) -> np.ndarray:
    """Minimum over colour channels, then over a `patch` x `patch` square (grey erosion).

    Erosion with a square kernel is separable inside OpenCV, so cost does not grow with patch**2.
    Border pixels take the minimum over the part of the patch inside the picture.
    """
    m = np.ascontiguousarray(channels_min(img), dtype=np.float32)
    if patch <= 1:
        return m
    k = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))
    return cv2.erode(m, k, borderType=cv2.BORDER_CONSTANT, borderValue=float("inf"))


def estimate_airlight(img: np.ndarray, dark: np.ndarray, fraction: float) -> np.ndarray:
    """A: among the brightest `fraction` of dark-channel pixels, the brightest input pixel.

    Why not the brightest pixel of the picture: headlights and white cars are brighter than the haze
    but have a dark patch nearby, so their dark channel is low and they are never candidates.
    Returns float32 [C] (C = 1 for grey input).
    """
    flat = dark.reshape(-1)
    n = min(flat.size, max(1, int(math.ceil(flat.size * fraction))))
    kth = np.partition(flat, flat.size - n)[flat.size - n]
    # every pixel tied with the n-th brightest joins (deterministic, and the torch path does the same)
    idx = np.flatnonzero(flat >= kth)
    pixels = img.reshape(flat.size, -1)[idx]
    best = int(np.argmax(pixels.sum(axis=1)))  # first of equals: lowest index
    return pixels[best].astype(np.float32)


GROUND_BAND = 0.15  # bottom part of the picture that sky never reaches (bright regions there are fog/ground)
FLAT_FRAME_STD = 0.01  # grey std (0..1) of the working copy below which a frame has no structure at all


def sky_mask(cmin: np.ndarray, flat: np.ndarray, sky_level: float) -> np.ndarray:
    """Sky/white pixels: left out of the haze score (and, where also textureless, given t = 1).

    Bright pixels (`cmin`, the per-pixel minimum over colour channels, >= `sky_level`; not the
    patch-eroded dark channel, whose patch minimum breaks textured cloud cover into pieces) count
    as sky/white when their connected bright region does not reach into the bottom ``GROUND_BAND``
    of the picture and either touches the top edge (sky, clouds with texture included) or is
    textureless (`flat`: white walls, vehicles). Why the bottom test: sky never reaches the bottom
    of a camera picture, but dense even fog makes the *whole* picture bright and textureless;
    without it the fog would be taken for sky, the haze score would drop to 0 and the stage would
    be switched off exactly when it is needed most. Non-bright gaps enclosed by sky (darker patches
    between clouds, a bird) count as sky too.
    """
    bright = np.ascontiguousarray(cmin >= np.float32(sky_level), dtype=np.uint8)
    if not bright.any():
        return np.zeros(cmin.shape, bool)
    n, labels = cv2.connectedComponents(bright, connectivity=8)
    band = labels[int(labels.shape[0] * (1 - GROUND_BAND)):]
    grounded = np.zeros(n, bool)
    grounded[band[band > 0]] = True      # label 0 is the background (not bright)
    at_top = np.zeros(n, bool)
    at_top[labels[0][labels[0] > 0]] = True
    region_sky = at_top & ~grounded
    region_sky[0] = False
    not_grounded = ~grounded
    not_grounded[0] = False
    sky = region_sky[labels] | (flat & not_grounded[labels])
    if not sky.any():
        return sky
    # gaps: anything not connected to the bottom edge through non-sky pixels is enclosed by sky
    # (the ground, and what stands on it, reaches the bottom)
    rest = np.ascontiguousarray(~sky, dtype=np.uint8)
    m, rl = cv2.connectedComponents(rest, connectivity=4)
    enclosed = np.ones(m, bool)
    enclosed[rl[-1]] = False
    enclosed[0] = False                  # label 0 here is the sky itself
    return sky | enclosed[rl]


def haze_score(dark: np.ndarray, sky: np.ndarray, min_scene_fraction: float, grey_std: float | None = None) -> float:
    """Mean dark channel of the non-sky pixels (0 when almost everything is sky/white, or flat).

    `sky` comes from :func:`sky_mask`. Why exclude it: the dark channel of sky and white walls is
    high in clear weather too, so an unmasked mean would switch the stage on for every bright scene.
    With `grey_std` (standard deviation of the grey working copy, 0..1) below ``FLAT_FRAME_STD`` the
    frame has no structure (a uniform grey, white or black frame, a lens cap): there is nothing the
    recovery could bring back, so the score is 0 and the gate stays off.
    """
    if grey_std is not None and grey_std < FLAT_FRAME_STD:
        return 0.0
    scene = ~sky
    frac = float(scene.mean()) if dark.size else 0.0
    if frac < max(min_scene_fraction, 1e-9):
        return 0.0
    return float(dark[scene].mean())


def flat_mask(grey: np.ndarray, radius: int, max_std: float) -> np.ndarray:
    """Pixels whose local grey standard deviation (window 2*radius+1) is below `max_std` (0..1 units)."""
    m = _box(grey, radius)
    var = _box(grey * grey, radius) - m * m
    return var < np.float32(max_std * max_std)


def _box(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, reflected borders (OpenCV's BORDER_REFLECT_101)."""
    return cv2.boxFilter(x, cv2.CV_32F, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT_101)


def guided_coefficients(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed guided-filter coefficients (mean_a, mean_b) such that q = mean_a*guide + mean_b.

    He, Sun, Tang, "Guided Image Filtering" (ECCV 2010), grey guide. Returned at the guide's
    resolution; the fast guided filter upsamples them and applies them to the full-resolution guide.
    """
    r = max(1, min(r, (min(guide.shape[:2]) - 1) // 2)) if min(guide.shape[:2]) > 2 else 1
    mean_i = _box(guide, r)
    mean_p = _box(src, r)
    cov_ip = _box(guide * src, r) - mean_i * mean_p
    var_i = _box(guide * guide, r) - mean_i * mean_i
    a = cov_ip / (var_i + np.float32(eps))
    b = mean_p - a * mean_i
    return _box(a, r), _box(b, r)


def luma(img_u8_or_f: np.ndarray) -> np.ndarray:
    """Luma (BT.601 weights, as cv2.COLOR_RGB2GRAY) as float32 0..1."""
    if img_u8_or_f.ndim == 2:
        g = img_u8_or_f
    elif img_u8_or_f.dtype == np.uint8:
        g = cv2.cvtColor(img_u8_or_f, cv2.COLOR_RGB2GRAY)
    else:
        g = img_u8_or_f[..., 0] * 0.299 + img_u8_or_f[..., 1] * 0.587 + img_u8_or_f[..., 2] * 0.114
    if g.dtype == np.uint8:
        return g.astype(np.float32) * np.float32(1 / 255)
    return g.astype(np.float32, copy=False)




def transmission(low: np.ndarray, airlight: np.ndarray, omega: float, patch: int, t0: float,
                 sky_tolerance: float) -> np.ndarray:
    """Raw (unrefined) transmission at low resolution: 1 - omega*dark(I/A), with sky protection."""
    a = airlight.reshape(1, 1, -1)
    t = 1.0 - np.float32(omega) * dark_channel(low / a, patch)
    np.maximum(t, np.float32(t0), out=t)
    if sky_tolerance > 0:
        dev = np.abs(low - a)
        diff = dev[:, :, 0] if dev.shape[2] == 1 else np.maximum(np.maximum(dev[:, :, 0], dev[:, :, 1]), dev[:, :, 2])
        factor = np.float32(sky_tolerance) / np.maximum(diff, np.float32(1e-6))
        np.maximum(factor, 1.0, out=factor)
        t *= factor
        np.minimum(t, 1.0, out=t)
    return t.astype(np.float32, copy=False)


def recover(img: np.ndarray, t: np.ndarray, airlight: np.ndarray, t0: float) -> np.ndarray:
    """J = (I - A)/max(t, t0) + A on a uint8 frame (grey or RGB), rounded and saturated to uint8.

    Done with OpenCV element-wise calls (per-channel scalars, no broadcast temporaries): this is the
    bulk of the full-resolution cost, and OpenCV's loops are vectorised and release the GIL.
    """
    k = 1.0 / np.maximum(t, np.float32(t0))
    a255 = [float(v) * 255.0 for v in np.asarray(airlight).reshape(-1)]
    f = img.astype(np.float32)
    if img.ndim == 2:
        f -= np.float32(a255[0])
        f *= k
        f += np.float32(a255[0])
    else:
        scalar = (a255[0], a255[1], a255[2], 0.0)
        cv2.subtract(f, scalar, dst=f)  # type: ignore[call-overload]  # the stub lacks the Scalar form add has
        cv2.multiply(f, cv2.merge([k, k, k]), dst=f)
        cv2.add(f, scalar, dst=f)
    cv2.max(f, 0.0, dst=f)
    return cv2.convertScaleAbs(f)  # rounds, saturates at 255 (negatives were clipped above)
