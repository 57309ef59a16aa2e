"""The tracker's motion model: box <-> Kalman state conversions and a constant-velocity Kalman
filter run on all tracks at once (stacked (N, 8) means and (N, 8, 8) covariances).

Why batched: one `matmul`/`solve` per frame for every track is what keeps `ByteTracker.update`
fast at hundreds of objects. Velocities are per second and process noise grows with the real time
elapsed, so dropped frames and variable frame rates only change the prediction horizon.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Kalman", "to_boxes", "to_measurement"]


def to_measurement(boxes: np.ndarray, motion: str) -> np.ndarray:
    """x1,y1,x2,y2 -> (cx, cy, a, h) or (cx, cy, w, h), float64."""
    b = boxes.astype(np.float64, copy=False)
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    cx = b[:, 0] + 0.5 * w
    cy = b[:, 1] + 0.5 * h
    third = w / h if motion == "xyah" else w
    return np.stack([cx, cy, third, h], axis=1)


def to_boxes(mean: np.ndarray, motion: str) -> np.ndarray:
    """Kalman means (N, 8) -> x1,y1,x2,y2 (N, 4) float64."""
    cx, cy, third, h = mean[:, 0], mean[:, 1], mean[:, 2], mean[:, 3]
    w = third * h if motion == "xyah" else third
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=1)


class Kalman:
    """Constant-velocity Kalman filter over many tracks at once; velocities in units per second."""

    def __init__(self, motion: str, std_weight_position: float, std_weight_velocity: float,
                 noise_ref_fps: float) -> None:
        self.motion = motion
        self.sp = std_weight_position
        # velocity noise is per reference frame in the paper; our velocities are per second
        self.sv = std_weight_velocity * noise_ref_fps
        self.ref_fps = noise_ref_fps
        self._f_dt = -1.0
        self._f = np.eye(8)

    def _scales(self, mean_or_meas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-track size scales for the 4 measured components: (x, y, third, h)."""
        h = np.maximum(mean_or_meas[:, 3], 1e-3)
        if self.motion == "xyah":
            return h, h  # the aspect component gets fixed small noise, see callers
        return h, np.maximum(mean_or_meas[:, 2], 1e-3)

    def _std(self, mean: np.ndarray, w_pos: float, w_vel: float, aspect_pos: float, aspect_vel: float) -> np.ndarray:
        """(N, 8) standard deviations: position-like columns scaled by box size."""
        h, w = self._scales(mean)
        pos = np.stack([w_pos * h, w_pos * h, w_pos * w, w_pos * h], axis=1)
        vel = np.stack([w_vel * h, w_vel * h, w_vel * w, w_vel * h], axis=1)
        if self.motion == "xyah":
            pos[:, 2] = aspect_pos
            vel[:, 2] = aspect_vel
        return np.concatenate([pos, vel], axis=1)

    def initiate(self, meas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks from (N, 4) measurements: zero velocity, wide velocity uncertainty."""
        n = len(meas)
        mean = np.concatenate([meas, np.zeros((n, 4))], axis=1)
        std = self._std(mean, 2 * self.sp, 10 * self.sv, 1e-2, 1e-5 * self.ref_fps)
        cov = np.zeros((n, 8, 8))
        idx = np.arange(8)
        cov[:, idx, idx] = std ** 2
        return mean, cov

    def predict(self, mean: np.ndarray, cov: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """Advance every track by `dt` seconds (one shared transition matrix)."""
        if len(mean) == 0 or dt <= 0:
            return mean, cov
        if dt != self._f_dt:  # the same interval every frame at a steady rate: build F once
            self._f = np.eye(8)
            self._f[0:4, 4:8] = dt * np.eye(4)
            self._f_dt = dt
        f = self._f
        k = dt * self.ref_fps  # process noise accumulates per (reference) frame elapsed
        std = self._std(mean, self.sp, self.sv, 1e-2, 1e-5 * self.ref_fps)
        mean = mean @ f.T
        cov = f @ cov @ f.T  # batched over tracks by matmul broadcasting
        idx = np.arange(8)
        cov[:, idx, idx] += (std ** 2) * k
        return mean, cov

    def update(self, mean: np.ndarray, cov: np.ndarray, meas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Correct tracks (rows of mean/cov) with their matched measurements (same rows)."""
        if len(mean) == 0:
            return mean, cov
        h, w = self._scales(mean)
        r = np.stack([self.sp * h, self.sp * h, self.sp * w, self.sp * h], axis=1) ** 2
        if self.motion == "xyah":
            r[:, 2] = 1e-1 ** 2
        s = cov[:, :4, :4].copy()
        idx = np.arange(4)
        s[:, idx, idx] += r
        pht = cov[:, :, :4]  # P H^T, (N, 8, 4)
        # K = P H^T S^-1  ->  solve S K^T = (P H^T)^T (S symmetric)
        gain = np.linalg.solve(s, pht.transpose(0, 2, 1)).transpose(0, 2, 1)
        innov = meas - mean[:, :4]
        mean = mean + (gain @ innov[:, :, None])[:, :, 0]
        cov = cov - gain @ pht.transpose(0, 2, 1)
        return mean, cov
