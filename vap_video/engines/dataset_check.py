"""Dataset validation (`vap data check`): every label row read, every problem counted and named.

What is skipped and why is reported per problem kind, so a user fixes the data instead of
guessing why an image did not train.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vap_video.engines.dataset_spec import DatasetError, DataSpec, label_path_for


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


def _parse_row(fields: list[str], nc: int, where: str, line: str) -> tuple[list[float], tuple[str, str] | None, bool]:
    """One label row as (cls, cx, cy, w, h), the problem that makes it unusable (kind, detail), and
    whether it was a polygon."""
    malformed = ("malformed_row", f"{where}: {line.strip()!r}")
    try:
        vals = [float(f) for f in fields]
    except ValueError:
        return [], malformed, False
    box = _row_box(vals) if all(math.isfinite(v) for v in vals) else None
    if box is None:
        return [], malformed, False
    if box[1]:
        points = vals[1:]
        if min(points) < -1e-3 or max(points) > 1 + 1e-3:
            hint = " (pixel coordinates? YOLO wants 0..1)" if max(points) > 1.5 else ""
            return [], ("out_of_range", f"{where}: polygon outside 0..1{hint}"), True
    vals = box[0]
    c = vals[0]
    if c != int(c) or not 0 <= c < nc:
        return [], ("bad_class", f"{where}: class {fields[0]} (nc={nc})"), box[1]
    cx, cy, w, h = vals[1:]
    tol = 1e-3
    if (
        w <= 0 or h <= 0
        or min(cx, cy, w, h) < -tol or max(cx, cy, w, h) > 1 + tol
        or cx - w / 2 < -tol or cx + w / 2 > 1 + tol
        or cy - h / 2 < -tol or cy + h / 2 > 1 + tol
    ):
        hint = " (pixel coordinates? YOLO wants 0..1)" if max(cx, cy, w, h) > 1.5 else ""
        return [], ("out_of_range", f"{where}: {line.strip()!r}{hint}"), box[1]
    return vals, None, box[1]


def _read_label(lab: Path, nc: int) -> tuple[list[list[float]], int, tuple[str, str] | None]:
    """The rows of one label file (none when it is missing), how many were polygons, and the first
    problem: one bad row makes the whole file unusable (a partly wrong file teaches wrong boxes)."""
    rows: list[list[float]] = []
    segments = 0
    text = lab.read_text() if lab.is_file() else ""
    for ln, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        row, problem, segment = _parse_row(fields, nc, f"{lab.name} line {ln}", line)
        if problem:
            return rows, segments, problem
        segments += segment
        rows.append(row)
    return rows, segments, None


def _clean_rows(rows: list[list[float]]) -> tuple[np.ndarray, int]:
    """Rows as [n, 5] with exact duplicates removed (first kept, order kept) and the tolerated
    rounding slack clamped, so downstream code sees strictly 0..1 boxes; and the duplicate count."""
    arr = np.asarray(rows, dtype=np.float32).reshape(-1, 5)
    if not len(arr):
        return arr, 0
    uniq, first = np.unique(arr, axis=0, return_index=True)
    duplicates = len(arr) - len(uniq)
    if duplicates:
        arr = arr[np.sort(first)]
    xyxy = np.stack([arr[:, 1] - arr[:, 3] / 2, arr[:, 2] - arr[:, 4] / 2,
                     arr[:, 1] + arr[:, 3] / 2, arr[:, 2] + arr[:, 4] / 2], 1).clip(0, 1)
    arr[:, 1:] = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
                           xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], 1)
    return arr, duplicates


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
        rows, segments, problem = _read_label(lab, nc)
        if problem:
            rep._add(problem[0], img, problem[1])
            continue
        for _ in range(segments):
            rep._add("segment_row", img, lab.name)
        arr, duplicates = _clean_rows(rows)
        if duplicates:
            rep._add("duplicate_row", img, f"{duplicates} duplicate(s)")
        for c in arr[:, 0].astype(int):
            rep.instances_per_class[c] += 1
        if not len(arr):
            rep.n_background += 1
        rep.usable.append((img, arr))
    if not rep.usable:
        raise DatasetError(f"no usable samples in split '{split}':\n{rep.summary()}")
    return rep
