"""A YOLO `data.yaml` resolved to image paths per split and class names; where each image's label is.

NumPy-free and torch-free, so `vap data check`, `vap val` and the runtime can read datasets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any




IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset problem the user must fix (message says what and where)."""


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
