"""Atmospheric scattering (haze) model, NumPy only.

The standard single-scattering model (Koschmieder; used by He et al., "Single Image Haze Removal
Using Dark Channel Prior", and most dehazing work) says what a camera sees through haze is

    I(x) = J(x) * t(x) + A * (1 - t(x)),      t(x) = exp(-beta * d(x))

with J the haze-free scene radiance, A the airlight (the colour of the haze, bright grey) and t the
transmission, which falls with scene depth d. Synthetic scenes, training augmentation and the
dehazing stage all share this one module so that what we add and what we remove are the same model:
a dehazer can call :func:`transmission_map` and invert :func:`apply_scattering` with
:func:`remove_scattering`.

Everything works on float 0..1 images; uint8 in gives uint8 out.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "add_haze",
    "apply_scattering",
    "remove_scattering",
    "transmission_map",
    "depth_gradient_map",
]


def depth_gradient_map(height: int, width: int, horizon: float = 0.3) -> np.ndarray:
    """Relative scene depth d in 0..1 for a typical elevated camera: far at the top, near at the bottom.

    Why this shape: fixed surveillance cameras look down at the ground, so rows near the top of
    the picture are far away (thick haze) and rows near the bottom are close (thin haze). Depth is
    1 above `horizon` (fraction of the height, the "sky") and falls linearly to 0 at the bottom.
    Returns float32 [height, 1] (it only varies by row) so it broadcasts over width and channels.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"depth_gradient_map needs a positive size, got {height}x{width}")
    rows = (np.arange(height, dtype=np.float32) + 0.5) / height
    h = float(np.clip(horizon, 0.0, 0.99))
    d = np.where(rows <= h, 1.0, 1.0 - (rows - h) / (1.0 - h))
    return d.astype(np.float32).reshape(height, 1)


def transmission_map(
    height: int,
    width: int,
    transmission: float,
    depth_gradient: bool = True,
    horizon: float = 0.3,
) -> np.ndarray:
    """Transmission t for a picture of the given size.

    `transmission` is t at the farthest point (the top rows when `depth_gradient`), in (0, 1].
    With a depth gradient, t = exp(-beta * d) where beta = -ln(transmission), so the nearest rows
    are nearly clear and the far rows get exactly `transmission`. Without it, t is constant.
    Returns float32 [height, 1] (row-wise) or [1, 1] (constant).
    """
    t_far = float(transmission)
    if not 0.0 < t_far <= 1.0:
        raise ValueError(f"transmission must be in (0, 1], got {transmission!r}")
    if not depth_gradient:
        return np.full((1, 1), t_far, dtype=np.float32)
    beta = -np.log(t_far)
    d = depth_gradient_map(height, width, horizon)
    return np.exp(-beta * d).astype(np.float32)


def _airlight_array(airlight: float | tuple | list | np.ndarray) -> np.ndarray:
    a = np.asarray(airlight, dtype=np.float32).reshape(-1)
    if a.size not in (1, 3):
        raise ValueError(f"airlight must be a scalar or 3 values (R, G, B), got {a.size} values")
    if np.any(a < 0) or np.any(a > 1):
        raise ValueError(f"airlight must be in 0..1 (fraction of white), got {a.tolist()}")
    return a if a.size == 1 else a.reshape(1, 1, 3)


def _to_float(img: np.ndarray) -> tuple[np.ndarray, bool]:
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float32) * (1.0 / 255.0), True
    return img.astype(np.float32, copy=False), False


def _from_float(img: np.ndarray, was_uint8: bool) -> np.ndarray:
    if was_uint8:
        return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.clip(img, 0.0, 1.0)


def apply_scattering(
    img: np.ndarray, t: np.ndarray | float, airlight: float | tuple | np.ndarray = 0.9
) -> np.ndarray:
    """I = J * t + A * (1 - t) for an image J (uint8 or float 0..1) and a transmission t.

    `t` is a scalar or an array broadcastable to [H, W] or [H, W, 1] (e.g. from
    :func:`transmission_map`, or a slice of it for a sub-image). Returns the same dtype as `img`.
    """
    j, was_uint8 = _to_float(img)
    a = _airlight_array(airlight)
    t_arr = np.asarray(t, dtype=np.float32)
    if t_arr.ndim == 2:
        t_arr = t_arr[:, :, None]
    out = j * t_arr + a * (1.0 - t_arr)
    return _from_float(out, was_uint8)


def remove_scattering(
    img: np.ndarray,
    t: np.ndarray | float,
    airlight: float | tuple | np.ndarray = 0.9,
    t_min: float = 0.1,
) -> np.ndarray:
    """Invert the model: J = (I - A) / max(t, t_min) + A. The dehazing stage's last step.

    `t_min` bounds the amplification of noise where haze is thick (He et al. use 0.1).
    """
    i, was_uint8 = _to_float(img)
    a = _airlight_array(airlight)
    t_arr = np.maximum(np.asarray(t, dtype=np.float32), np.float32(t_min))
    if t_arr.ndim == 2:
        t_arr = t_arr[:, :, None]
    out = (i - a) / t_arr + a
    return _from_float(out, was_uint8)


def add_haze(
    img: np.ndarray,
    transmission: float | np.ndarray,
    airlight: float | tuple = 0.9,
    depth_gradient: bool = True,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Add haze to an RGB image (uint8 or float 0..1) with the atmospheric scattering model.

    transmission: a float in (0, 1] (t at the farthest rows; see :func:`transmission_map`) or a
        precomputed transmission array broadcastable to [H, W] (then `depth_gradient` is ignored).
    airlight: haze colour as a grey level or (R, G, B) in 0..1.
    depth_gradient: make t depend on depth (thicker haze towards the top of the frame).
    rng: when given, jitter airlight slightly per channel (+-3 %, a faint colour cast) and the
        horizon height, so augmented images do not all share one haze look.
    """
    h, w = img.shape[:2]
    a = np.asarray(airlight, dtype=np.float32)
    horizon = 0.3
    if rng is not None:
        a = np.clip(np.broadcast_to(a, (3,)) * rng.uniform(0.97, 1.03, size=3), 0.0, 1.0)
        horizon = float(rng.uniform(0.1, 0.5))
    if isinstance(transmission, np.ndarray) and transmission.size > 1:
        t = transmission
    else:
        t = transmission_map(h, w, float(transmission), depth_gradient, horizon)
    return apply_scattering(img, t, a)
