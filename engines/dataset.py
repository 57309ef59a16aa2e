"""YOLO-format datasets: reading data.yaml, validating labels, and a training Dataset with augmentation.

Three layers, so each can be used alone:
- :func:`load_data_yaml` / :func:`validate_dataset` need only NumPy and OpenCV: `vap data check`
  and the runtime can use them without torch.
- :func:`letterbox` is the one resize-and-pad convention shared with export and inference: keep
  aspect, resize (area when shrinking, bilinear when enlarging), pad to S x S with grey 114, padding split evenly
  (``pad_x = (S - new_w) // 2`` on the left, the rest on the right; same for y). A box in the
  network input maps back with ``x_src = (x - pad_x) / scale``.
- :class:`YoloDataset` (torch) serves letterboxed tensors with targets in network-input pixels and
  deterministic per-epoch augmentation (mosaic, random affine, flip, HSV, haze).

Label files follow the YOLO convention: ``.../images/.../name.jpg`` -> ``.../labels/.../name.txt``,
one ``cls cx cy w h`` row per object, normalised to 0..1. An empty file is a background image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from engines.haze import add_haze
from engines.letterbox import PAD_VALUE, interpolation, placement

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "IMAGE_SUFFIXES",
    "DatasetError",
    "DataSpec",
    "ValidationReport",
    "AugmentConfig",
    "load_data_yaml",
    "validate_dataset",
    "label_path_for",
    "letterbox",
    "load_image",
    "collate",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset problem the user must fix (message says what and where)."""


# ----------------------------------------------------------------------------------------------
# data.yaml


@dataclass
class DataSpec:
    """A resolved dataset: image paths per split and class names (index = class id)."""

    root: Path
    train: list[Path]
    val: list[Path]
    names: list[str]

    @property
    def nc(self) -> int:
        return len(self.names)


def _parse_names(raw: Any, where: Path) -> list[str]:
    if isinstance(raw, dict):
        try:
            keys = sorted(int(k) for k in raw)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: 'names' keys must be class ids 0..n-1, got {list(raw)}") from None
        if keys != list(range(len(keys))):
            raise DatasetError(
                f"{where}: 'names' ids must be 0..{len(keys) - 1} without gaps, got {keys}"
            )
        names = [raw[k] if k in raw else raw[str(k)] for k in keys]
    elif isinstance(raw, (list, tuple)):
        names = list(raw)
    else:
        raise DatasetError(
            f"{where}: 'names' must be a list [a, b] or a mapping {{0: a, 1: b}}, got {type(raw).__name__}"
        )
    if not names:
        raise DatasetError(f"{where}: 'names' is empty; list the class names")
    bad = [n for n in names if not isinstance(n, (str, int)) or str(n).strip() == ""]
    if bad:
        raise DatasetError(f"{where}: every class name must be a non-empty string, got {bad}")
    names = [str(n) for n in names]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatasetError(f"{where}: duplicate class names {dup}")
    return names


def _images_in_dir(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _resolve_source(entry: Any, root: Path, where: Path, split: str) -> list[Path]:
    """A split entry is a folder of images, a .txt file listing images, an image, or a list of these."""
    if isinstance(entry, (list, tuple)):
        out: list[Path] = []
        for e in entry:
            out.extend(_resolve_source(e, root, where, split))
        return out
    if not isinstance(entry, (str, os.PathLike)):
        raise DatasetError(f"{where}: '{split}' must be a path or a list of paths, got {entry!r}")
    p = Path(entry).expanduser()
    if not p.is_absolute():
        p = root / p
    if p.is_dir():
        return _images_in_dir(p)
    if p.is_file() and p.suffix.lower() == ".txt":
        out = []
        for line in p.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            q = Path(line).expanduser()
            if not q.is_absolute():
                # Listed paths are relative to the list file ("./images/a.jpg") or to the root.
                cand = p.parent / q
                q = cand if cand.exists() else root / q
            out.append(q)
        return out
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
        return [p]
    raise DatasetError(
        f"{where}: '{split}' points to {p}, which does not exist (or is not a folder, .txt list or "
        f"image). Fix the path; relative paths are resolved against {root}"
    )


def load_data_yaml(path: Path) -> DataSpec:
    """Read a YOLO data.yaml: `path` (root), `train`, `val`, `names` (list or {id: name}), optional `nc`.

    `path` defaults to the yaml's folder; a relative `path` is relative to the yaml's folder.
    `val` may be missing (then empty); `train` is required. A split without images is an error.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset config {path} not found; pass the path of a data.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping with train/val/names keys")
    if "names" not in data:
        raise DatasetError(f"{path}: missing 'names' (the list of class names)")
    names = _parse_names(data["names"], path)
    if "nc" in data and int(data["nc"]) != len(names):
        raise DatasetError(f"{path}: nc={data['nc']} but {len(names)} names are given")
    root = Path(data.get("path") or path.parent).expanduser()
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    if not root.is_dir():
        raise DatasetError(f"{path}: dataset root {root} ('path') is not a folder")
    if "train" not in data:
        raise DatasetError(f"{path}: missing 'train' (a folder of images, a .txt list or a list)")
    train = _resolve_source(data["train"], root, path, "train")
    val = _resolve_source(data["val"], root, path, "val") if data.get("val") else []
    if not train and not val:   # an empty train split is fine for evaluation-only sets; training checks it
        raise DatasetError(f"{path}: 'train' has no images ({', '.join(IMAGE_SUFFIXES)})")
    if data.get("val") and not val:
        raise DatasetError(f"{path}: 'val' has no images ({', '.join(IMAGE_SUFFIXES)})")
    return DataSpec(root=root, train=train, val=val, names=names)


def label_path_for(image: Path) -> Path:
    """YOLO convention: the last ``/images/`` folder in the path becomes ``/labels/``, suffix .txt."""
    parts = list(Path(image).parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


# ----------------------------------------------------------------------------------------------
# validation


PROBLEMS = {
    "missing_image": "image file missing",
    "corrupt_image": "image fails to decode",
    "malformed_row": "malformed label row (need cls cx cy w h, or a polygon: cls x1 y1 x2 y2 x3 y3 ...)",
    "out_of_range": "coordinates outside 0..1 or non-positive size (labels must be normalised)",
    "bad_class": "class id not an integer in 0..nc-1",
    "duplicate_row": "duplicate label rows (removed, image kept)",
}


# Not problems: what was read differently from a plain box file, counted so the report says so.
NOTES = {
    "no_label": "images without a label file, used as background images (no objects), as Ultralytics does",
    "segment_row": "polygon (segment) label rows, trained on as their bounding boxes",
}


def _row_box(vals: list[float]) -> tuple[list[float], bool] | None:
    """A label row as (cls, cx, cy, w, h) and whether it was a polygon; None when it is neither.

    Ultralytics segment labels are `cls x1 y1 x2 y2 ... xn yn` (n >= 3 points, normalised); a
    detector trains on their bounding box, exactly as Ultralytics does for a detect task.
    """
    if len(vals) == 5:
        return vals, False
    if len(vals) >= 7 and len(vals) % 2 == 1:
        xs, ys = vals[1::2], vals[2::2]
        x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
        return [vals[0], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], True
    return None


@dataclass
class ValidationReport:
    """What :func:`validate_dataset` found in one split."""

    split: str
    names: list[str]
    n_images: int = 0
    n_background: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in PROBLEMS})
    examples: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in [*PROBLEMS, *NOTES]})
    notes: dict[str, int] = field(default_factory=lambda: {k: 0 for k in NOTES})
    usable: list[tuple[Path, np.ndarray]] = field(default_factory=list)
    instances_per_class: list[int] = field(default_factory=list)
    max_examples: int = 5

    def _add(self, problem: str, path: Path, detail: str = "") -> None:
        (self.notes if problem in NOTES else self.counts)[problem] += 1
        if len(self.examples[problem]) < self.max_examples:
            self.examples[problem].append(f"{path}{': ' + detail if detail else ''}")

    @property
    def n_skipped(self) -> int:
        return self.n_images - len(self.usable)

    def summary(self) -> str:
        """Human-readable report: totals, instances per class, then each problem with examples."""
        lines = [
            f"{self.split}: {self.n_images} images, {len(self.usable)} usable "
            f"({self.n_background} background), {self.n_skipped} skipped",
        ]
        if self.instances_per_class:
            per = ", ".join(f"{n}={c}" for n, c in zip(self.names, self.instances_per_class))
            lines.append(f"  instances: {sum(self.instances_per_class)} ({per})")
        for key, text in PROBLEMS.items():
            if self.counts[key]:
                lines.append(f"  {self.counts[key]} x {text}")
                lines.extend(f"      e.g. {ex}" for ex in self.examples[key])
        for key, text in NOTES.items():
            if self.notes[key]:
                lines.append(f"  note: {self.notes[key]} x {text}")
                lines.extend(f"      e.g. {ex}" for ex in self.examples[key])
        return "\n".join(lines)


def _decodes(path: Path) -> bool:
    """Cheap decode check: reduced-size decode (JPEG decodes at 1/8 scale in libjpeg)."""
    buf = np.fromfile(str(path), dtype=np.uint8)
    if buf.size == 0:
        return False
    return cv2.imdecode(buf, cv2.IMREAD_REDUCED_COLOR_8) is not None


def validate_dataset(
    spec: DataSpec, split: str, max_examples: int = 5, check_images: bool = True
) -> ValidationReport:
    """Check every image and label of a split; bad samples are counted and skipped, not fatal.

    A sample is skipped when its image is missing or does not decode, or any row is malformed,
    out of range or has a bad class id (a partly wrong label file would teach the model wrong
    boxes). Duplicate rows are removed and the image kept. As in Ultralytics, an image without a
    label file is a background image, and a polygon (segment) row counts as its bounding box;
    both are counted in `notes`. Raises
    :class:`DatasetError` (with the summary) only when no usable sample is left.
    """
    if split not in ("train", "val"):
        raise DatasetError(f"split must be 'train' or 'val', got {split!r}")
    images: list[Path] = getattr(spec, split)
    nc = len(spec.names)
    rep = ValidationReport(split=split, names=list(spec.names), max_examples=max_examples,
                           instances_per_class=[0] * nc)
    rep.n_images = len(images)
    for img in images:
        if not img.is_file():
            rep._add("missing_image", img)
            continue
        if check_images and not _decodes(img):
            rep._add("corrupt_image", img)
            continue
        lab = label_path_for(img)
        if not lab.is_file():
            rep._add("no_label", img, f"no {lab}")
        rows: list[list[float]] = []
        problem: tuple[str, str] | None = None
        segments = 0
        text = lab.read_text() if lab.is_file() else ""
        for ln, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            try:
                vals = [float(f) for f in fields]
            except ValueError:
                problem = ("malformed_row", f"{lab.name} line {ln}: {line.strip()!r}")
                break
            box = _row_box(vals) if all(math.isfinite(v) for v in vals) else None
            if box is None:
                problem = ("malformed_row", f"{lab.name} line {ln}: {line.strip()!r}")
                break
            if box[1]:
                points = vals[1:]
                if min(points) < -1e-3 or max(points) > 1 + 1e-3:
                    hint = " (pixel coordinates? YOLO wants 0..1)" if max(points) > 1.5 else ""
                    problem = ("out_of_range", f"{lab.name} line {ln}: polygon outside 0..1{hint}")
                    break
                segments += 1
            vals = box[0]
            c = vals[0]
            if c != int(c) or not 0 <= c < nc:
                problem = ("bad_class", f"{lab.name} line {ln}: class {fields[0]} (nc={nc})")
                break
            cx, cy, w, h = vals[1:]
            tol = 1e-3
            if (
                w <= 0 or h <= 0
                or min(cx, cy, w, h) < -tol or max(cx, cy, w, h) > 1 + tol
                or cx - w / 2 < -tol or cx + w / 2 > 1 + tol
                or cy - h / 2 < -tol or cy + h / 2 > 1 + tol
            ):
                hint = " (pixel coordinates? YOLO wants 0..1)" if max(cx, cy, w, h) > 1.5 else ""
                problem = ("out_of_range", f"{lab.name} line {ln}: {line.strip()!r}{hint}")
                break
            rows.append(vals)
        if problem:
            rep._add(problem[0], img, problem[1])
            continue
        for _ in range(segments):
            rep._add("segment_row", img, lab.name)
        arr = np.asarray(rows, dtype=np.float32).reshape(-1, 5)
        if len(arr):
            uniq, first = np.unique(arr, axis=0, return_index=True)
            if len(uniq) < len(arr):
                rep._add("duplicate_row", img, f"{len(arr) - len(uniq)} duplicate(s)")
                arr = arr[np.sort(first)]
            # clamp the tolerated rounding slack so downstream code sees strictly 0..1 boxes
            xyxy = np.stack([arr[:, 1] - arr[:, 3] / 2, arr[:, 2] - arr[:, 4] / 2,
                             arr[:, 1] + arr[:, 3] / 2, arr[:, 2] + arr[:, 4] / 2], 1).clip(0, 1)
            arr[:, 1:] = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
                                   xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], 1)
            for c in arr[:, 0].astype(int):
                rep.instances_per_class[c] += 1
        else:
            rep.n_background += 1
        rep.usable.append((img, arr))
    if not rep.usable:
        raise DatasetError(f"no usable samples in split '{split}':\n{rep.summary()}")
    return rep


# ----------------------------------------------------------------------------------------------
# image helpers (no torch)


def _interp(scale: float) -> int:
    """The runtime's resampling choice (engines/letterbox.py), so training sees pictures resampled
    the way inference does."""
    return interpolation(scale)


def letterbox(
    img: np.ndarray, size: int | tuple[int, int], pad_value: int = PAD_VALUE
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping aspect ratio and pad to size x size (or (h, w)) with grey, centred.

    Returns (out, scale, (pad_x, pad_y)): a source pixel x maps to x * scale + pad_x. Area
    interpolation when shrinking, bilinear when enlarging; new size is round(w * scale) x round(h * scale);
    pad_x = (S - new_w) // 2 (the odd pixel, if any, goes right/bottom): the rule of engines/letterbox.py,
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


# ----------------------------------------------------------------------------------------------
# augmentation


@dataclass
class AugmentConfig:
    """Training augmentation. Defaults suit small detectors on small datasets (strong mosaic and
    scale jitter, mild rotation/shear: surveillance cameras are upright)."""

    mosaic: float = 1.0  # probability of a 4-image mosaic
    degrees: float = 0.0  # rotation +- degrees
    translate: float = 0.1  # +- fraction of the image size
    scale: tuple[float, float] = (0.5, 1.5)  # zoom range
    shear: float = 0.0  # +- degrees
    fliplr: float = 0.5
    hsv_h: float = 0.015  # hue shift, +- fraction of the hue circle
    hsv_s: float = 0.7  # saturation gain +- fraction
    hsv_v: float = 0.4  # value (brightness) gain +- fraction
    haze: float = 0.0  # probability of adding haze (engines.haze)
    haze_transmission: tuple[float, float] = (0.35, 0.85)
    min_box_px: float = 2.0  # boxes narrower or lower than this after augmentation are dropped
    min_area_ratio: float = 0.1  # ...or keeping less than this fraction of their (scaled) area

    def __post_init__(self) -> None:
        for name in ("mosaic", "fliplr", "haze"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"AugmentConfig.{name} is a probability in 0..1, got {v}")
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"AugmentConfig.scale must be (lo, hi) with 0 < lo <= hi, got {self.scale}")


def _affine_matrix(rng: np.random.Generator, hyp: AugmentConfig, src_center: tuple[float, float],
                   out_size: int) -> np.ndarray:
    """2x3 matrix: move src_center to the origin, rotate+scale, shear, move to the output centre
    plus a random translation."""
    c = np.eye(3)
    c[0, 2], c[1, 2] = -src_center[0], -src_center[1]
    r = np.eye(3)
    a = rng.uniform(-hyp.degrees, hyp.degrees)
    s = rng.uniform(hyp.scale[0], hyp.scale[1])
    r[:2] = cv2.getRotationMatrix2D((0, 0), a, s)
    sh = np.eye(3)
    sh[0, 1] = math.tan(math.radians(rng.uniform(-hyp.shear, hyp.shear)))
    sh[1, 0] = math.tan(math.radians(rng.uniform(-hyp.shear, hyp.shear)))
    t = np.eye(3)
    t[0, 2] = out_size / 2 + rng.uniform(-hyp.translate, hyp.translate) * out_size
    t[1, 2] = out_size / 2 + rng.uniform(-hyp.translate, hyp.translate) * out_size
    return (t @ sh @ r @ c)[:2]


def _transform_boxes(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Map xyxy boxes through a 2x3 affine; the result is the axis-aligned hull of the 4 corners."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4)
    x1, y1, x2, y2 = boxes.T
    corners = np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1),
                        np.stack([x2, y2], 1), np.stack([x1, y2], 1)], 1)  # [n, 4, 2]
    pts = corners @ m[:, :2].T + m[:, 2]
    return np.concatenate([pts.min(1), pts.max(1)], 1)


def _filter_boxes(before: np.ndarray, after: np.ndarray, size: int, hyp: AugmentConfig,
                  area_gain: float) -> tuple[np.ndarray, np.ndarray]:
    """Clip to the image and keep boxes that are still real objects. Returns (clipped, keep mask)."""
    clipped = after.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, size)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, size)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area0 = (before[:, 2] - before[:, 0]) * (before[:, 3] - before[:, 1]) * area_gain
    keep = (w >= hyp.min_box_px) & (h >= hyp.min_box_px) & (w * h > hyp.min_area_ratio * area0 + 1e-9)
    keep &= np.maximum(w / np.maximum(h, 1e-9), h / np.maximum(w, 1e-9)) < 20
    return clipped, keep


def _hsv_jitter(img: np.ndarray, rng: np.random.Generator, hyp: AugmentConfig) -> np.ndarray:
    if hyp.hsv_h == 0 and hyp.hsv_s == 0 and hyp.hsv_v == 0:
        return img
    # hue is an angle: shift it (a gain would move reds and blues by different amounts);
    # saturation and value scale
    r = rng.uniform(-1, 1, 3)
    shift, gains = r[0] * hyp.hsv_h * 180.0, r * np.array([hyp.hsv_h, hyp.hsv_s, hyp.hsv_v]) + 1
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    x = np.arange(256, dtype=np.float32)
    lut_h = np.round(x + shift).astype(np.int32) % 180
    lut_h = np.where(x < 180, lut_h, x).astype(np.uint8)
    lut_s = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    h, s, v = cv2.split(hsv)
    hsv = cv2.merge((cv2.LUT(h, lut_h), cv2.LUT(s, lut_s), cv2.LUT(v, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _norm_to_xyxy(labels: np.ndarray, w: float, h: float, pad_x: float = 0, pad_y: float = 0) -> np.ndarray:
    cx, cy, bw, bh = labels[:, 1] * w, labels[:, 2] * h, labels[:, 3] * w, labels[:, 4] * h
    return np.stack([cx - bw / 2 + pad_x, cy - bh / 2 + pad_y, cx + bw / 2 + pad_x, cy + bh / 2 + pad_y], 1)


# ----------------------------------------------------------------------------------------------
# torch Dataset


def _dataset_base():
    try:
        import torch.utils.data as tud
    except ImportError as e:  # pragma: no cover - the runtime never builds a YoloDataset
        raise ImportError("YoloDataset needs torch: pip install 'vap[train]'") from e
    return tud.Dataset


def __getattr__(name: str):
    """PEP 562: `engines.dataset.YoloDataset` is built (and torch imported) on first access, so
    importing this module for letterbox/validation stays torch-free. (Not in __all__ for the same
    reason: a star import must not pull torch.)"""
    if name == "YoloDataset":
        cls = _make_yolo_dataset()
        globals()["YoloDataset"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _make_yolo_dataset():
    import torch

    Base = _dataset_base()

    class YoloDataset(Base):
        """Letterboxed training/validation samples with targets in network-input pixels.

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
            boxes = _norm_to_xyxy(labels, w, h, px, py)
            return out, np.concatenate([labels[:, :1], boxes], 1).astype(np.float32)

        def _mosaic(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
            """Four images around a random centre on a 2S x 2S grey canvas."""
            S = self.imgsz
            canvas = np.full((2 * S, 2 * S, 3), PAD_VALUE, np.uint8)
            xc, yc = (int(rng.uniform(0.5 * S, 1.5 * S)) for _ in range(2))
            idx = [i] + [int(k) for k in rng.integers(0, len(self), size=3)]
            all_t = []
            for q, k in enumerate(idx):
                img = self._image(k)
                h, w = img.shape[:2]
                if q == 0:  # top-left: image's bottom-right corner at the centre
                    x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                    x1b, y1b = w - (x2a - x1a), h - (y2a - y1a)
                elif q == 1:  # top-right
                    x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * S), yc
                    x1b, y1b = 0, h - (y2a - y1a)
                elif q == 2:  # bottom-left
                    x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * S, yc + h)
                    x1b, y1b = w - (x2a - x1a), 0
                else:  # bottom-right
                    x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * S), min(2 * S, yc + h)
                    x1b, y1b = 0, 0
                canvas[y1a:y2a, x1a:x2a] = img[y1b:y1b + (y2a - y1a), x1b:x1b + (x2a - x1a)]
                labels = self.samples[k][1]
                boxes = _norm_to_xyxy(labels, w, h, x1a - x1b, y1a - y1b)
                # clip to the part of the image actually pasted
                boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(x1a, x2a)
                boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(y1a, y2a)
                all_t.append(np.concatenate([labels[:, :1], boxes], 1))
            t = np.concatenate(all_t, 0).astype(np.float32) if all_t else np.zeros((0, 5), np.float32)
            return canvas, t, (float(S), float(S))

        def load_augmented(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            """Augmented S x S uint8 image and targets [n, 5] cls x1 y1 x2 y2 (deterministic)."""
            rng = self._rng(i)
            S, hyp = self.imgsz, self.hyp
            if self.mosaic_enabled and rng.random() < hyp.mosaic:
                img, t, center = self._mosaic(i, rng)
            else:
                img, t = self.load_letterboxed(i)
                center = (S / 2, S / 2)
            m = _affine_matrix(rng, hyp, center, S)
            img = cv2.warpAffine(img, m, (S, S), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=(PAD_VALUE,) * 3)
            if len(t):
                after = _transform_boxes(t[:, 1:5], m)
                area_gain = abs(float(np.linalg.det(m[:, :2])))
                clipped, keep = _filter_boxes(t[:, 1:5], after, S, hyp, area_gain)
                t = np.concatenate([t[keep, :1], clipped[keep]], 1)
            img = _hsv_jitter(img, rng, hyp)
            if hyp.haze > 0 and rng.random() < hyp.haze:
                img = add_haze(img, rng.uniform(*hyp.haze_transmission), rng.uniform(0.7, 1.0), True, rng)
            if rng.random() < hyp.fliplr:
                img = cv2.flip(img, 1)
                if len(t):
                    x1 = S - t[:, 3]
                    x2 = S - t[:, 1]
                    t[:, 1], t[:, 3] = x1, x2
            return img, t.astype(np.float32)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            img, t = self.load_augmented(i) if self.augment else self.load_letterboxed(i)
            # NumPy does the uint8 -> float scaling: torch's threaded kernels are ~10x slower for
            # one small image (thread start-up) and fight the training loop for the same cores
            x = np.empty((3, img.shape[0], img.shape[1]), np.float32)
            np.multiply(img.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=x)
            return torch.from_numpy(x), torch.from_numpy(t.reshape(-1, 5).astype(np.float32))

    # picklable by name (DataLoader workers under spawn): engines.dataset.YoloDataset
    YoloDataset.__module__ = __name__
    YoloDataset.__qualname__ = "YoloDataset"
    return YoloDataset


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack images to [B, 3, S, S]; concatenate targets to [M, 6] = batch_idx, cls, x1, y1, x2, y2."""
    import torch

    images = torch.stack([b[0] for b in batch], 0)
    targets = [torch.cat([torch.full((len(b[1]), 1), float(i)), b[1]], 1) for i, b in enumerate(batch)]
    return images, torch.cat(targets, 0) if targets else torch.zeros((0, 6))
