"""YOLO-format datasets: reading data.yaml, validating labels, and a training Dataset with augmentation.

Three layers, so each can be used alone:
- :func:`load_data_yaml` / :func:`validate_dataset` need only NumPy and OpenCV: `vap data check`
  and the runtime can use them without torch.
- :func:`letterbox` is the one resize-and-pad convention shared with export and inference: keep
  aspect, resize (area when shrinking, bilinear when enlarging), pad to S x S with grey 114, padding split evenly
  (``pad_x = (S - new_w) // 2`` on the left, the rest on the right; same for y). A box in the
  network input maps back with ``x_src = (x - pad_x) / scale``.
- :class:`YoloDataset` serves letterboxed tensors (torch, imported on first use) with targets in
  network-input pixels and deterministic per-epoch augmentation (`vap_video.engines.augment`: mosaic, random
  affine, flip, HSV, haze).

Reading data.yaml lives in `vap_video.engines.dataset_spec`, validation in `vap_video.engines.dataset_check`; their
names are importable from here too.

Label files follow the YOLO convention: ``.../images/.../name.jpg`` -> ``.../labels/.../name.txt``,
one ``cls cx cy w h`` row per object, normalised to 0..1. An empty file is a background image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from vap_video.engines.augment import AugmentConfig, augment_sample, mosaic4, norm_to_xyxy
from vap_video.engines.dataset_check import NOTES, PROBLEMS, ValidationReport, validate_dataset
from vap_video.engines.dataset_spec import IMAGE_SUFFIXES, DatasetError, DataSpec, label_path_for, load_data_yaml
from vap_video.engines.letterbox import PAD_VALUE, interpolation, placement

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "IMAGE_SUFFIXES",
    "NOTES",
    "PROBLEMS",
    "AugmentConfig",
    "DataSpec",
    "DatasetError",
    "ValidationReport",
    "YoloDataset",
    "collate",
    "label_path_for",
    "letterbox",
    "load_data_yaml",
    "load_image",
    "validate_dataset",
]


def _interp(scale: float) -> int:
    """The runtime's resampling choice (vap_video/engines/letterbox.py), so training sees pictures resampled
    the way inference does."""
    return interpolation(scale)


def letterbox(
    img: np.ndarray, size: int | tuple[int, int], pad_value: int = PAD_VALUE
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping aspect ratio and pad to size x size (or (h, w)) with grey, centred.

    Returns (out, scale, (pad_x, pad_y)): a source pixel x maps to x * scale + pad_x. Area
    interpolation when shrinking, bilinear when enlarging; new size is round(w * scale) x round(h * scale);
    pad_x = (S - new_w) // 2 (the odd pixel, if any, goes right/bottom): the rule of vap_video/engines/letterbox.py,
    which the runtime's CPU and GPU preprocessing use too.
    """
    if img.ndim != 3:
        raise ValueError(f"letterbox expects an H x W x C image, got shape {img.shape}")
    th, tw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    h, w = img.shape[:2]
    nh, nw, lb = placement(h, w, th, tw)
    scale = lb.scale
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=_interp(scale))
    pad_x, pad_y = int(lb.pad_x), int(lb.pad_y)
    out = cv2.copyMakeBorder(img, pad_y, th - nh - pad_y, pad_x, tw - nw - pad_x,
                             cv2.BORDER_CONSTANT, value=(pad_value,) * img.shape[2])
    return out, scale, (pad_x, pad_y)


def load_image(path: Path, max_side: int | None = None) -> np.ndarray:
    """Decode an image to RGB uint8; with `max_side`, shrink so the long side is max_side.

    Shrinking at load makes cached datasets small and is exactly the first step of
    :func:`letterbox` (same target size and interpolation), so results do not change.
    """
    buf = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise DatasetError(f"cannot decode image {path}; run `vap data check` to find bad files")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if max_side is not None:
        h, w = img.shape[:2]
        s = max_side / max(h, w)
        if s < 1 or s > 1:
            nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
            img = cv2.resize(img, (nw, nh), interpolation=_interp(s))
    return img


class YoloDataset:
    """Letterboxed training/validation samples with targets in network-input pixels.

    A map-style dataset (`__len__`, `__getitem__`), which is all torch's DataLoader and samplers
    need: no torch base class, so importing it (and this module) never imports torch.

    samples: (image path, labels [n, 5] cls cx cy w h normalised), e.g. ValidationReport.usable.
    Augmentation randomness is a pure function of (seed, epoch, index), so results do not
    depend on worker count or order; call :meth:`set_epoch` before each epoch (with
    persistent DataLoader workers, the workers' copies do not see it: use non-persistent
    workers or recreate the loader). `cache`: decode every image once at construction and keep
    it (shrunk to imgsz) in RAM, where forked workers share it; None = cache when the
    estimate fits in `cache_limit_bytes`.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, np.ndarray]],
        imgsz: int,
        augment: bool,
        hyp: AugmentConfig | None = None,
        seed: int = 0,
        cache: bool | None = None,
        cache_limit_bytes: int = 2 << 30,
    ) -> None:
        if not samples:
            raise DatasetError("YoloDataset needs at least one sample")
        if imgsz < 32 or imgsz % 32:
            raise ValueError(f"imgsz must be a positive multiple of 32, got {imgsz}")
        self.samples = [(Path(p), np.asarray(lab, np.float32).reshape(-1, 5)) for p, lab in samples]
        self.imgsz = int(imgsz)
        self.augment = bool(augment)
        self.hyp = hyp or AugmentConfig()
        self.seed = int(seed)
        self.epoch = 0
        self.mosaic_enabled = self.augment and self.hyp.mosaic > 0
        est = len(self.samples) * self.imgsz * self.imgsz * 3 * 3 // 4
        self._cache_on = est <= cache_limit_bytes if cache is None else bool(cache)
        self._cache: dict[int, np.ndarray] = {}
        if self._cache_on:
            # Decode everything now, in this process: DataLoader workers are forked per epoch
            # (non-persistent, so set_epoch reaches them) and inherit this cache; a cache
            # filled inside a worker would die with it at the end of the epoch.
            for i in range(len(self.samples)):
                self._cache[i] = load_image(self.samples[i][0], self.imgsz)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw for this epoch (deterministic per (seed, epoch, index))."""
        self.epoch = int(epoch)

    def close_mosaic(self) -> None:
        """Turn mosaic off (the last epochs train on whole, undistorted-layout images)."""
        self.mosaic_enabled = False

    def _image(self, i: int) -> np.ndarray:
        img = self._cache.get(i)
        if img is None:
            img = load_image(self.samples[i][0], self.imgsz)
            if self._cache_on:
                self._cache[i] = img
        return img

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, i])

    def load_letterboxed(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image i letterboxed to S x S (uint8 RGB) and its boxes [n, 5] cls x1 y1 x2 y2 there."""
        img = self._image(i)
        out, _, (px, py) = letterbox(img, self.imgsz)
        h, w = img.shape[:2]
        labels = self.samples[i][1]
        boxes = norm_to_xyxy(labels, w, h, px, py)
        return out, np.concatenate([labels[:, :1], boxes], 1).astype(np.float32)

    def load_augmented(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Augmented S x S uint8 image and targets [n, 5] cls x1 y1 x2 y2 (deterministic)."""
        rng = self._rng(i)
        S, hyp = self.imgsz, self.hyp
        if self.mosaic_enabled and rng.random() < hyp.mosaic:
            img, t, center = mosaic4(i, S, len(self), self._image, lambda k: self.samples[k][1], rng)
        else:
            img, t = self.load_letterboxed(i)
            center = (S / 2, S / 2)
        return augment_sample(img, t, center, S, hyp, rng)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        img, t = self.load_augmented(i) if self.augment else self.load_letterboxed(i)
        # NumPy does the uint8 -> float scaling: torch's threaded kernels are ~10x slower for
        # one small image (thread start-up) and fight the training loop for the same cores
        x = np.empty((3, img.shape[0], img.shape[1]), np.float32)
        np.multiply(img.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=x)
        return torch.from_numpy(x), torch.from_numpy(t.reshape(-1, 5).astype(np.float32))


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack images to [B, 3, S, S]; concatenate targets to [M, 6] = batch_idx, cls, x1, y1, x2, y2."""
    import torch

    images = torch.stack([b[0] for b in batch], 0)
    targets = [torch.cat([torch.full((len(b[1]), 1), float(i)), b[1]], 1) for i, b in enumerate(batch)]
    return images, torch.cat(targets, 0) if targets else torch.zeros((0, 6))
