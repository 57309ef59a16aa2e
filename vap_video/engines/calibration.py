"""Calibration images for INT8: a folder of images or a YOLO data.yaml, preprocessed like the runtime.

Both INT8 paths (ONNX Runtime Q/DQ on CPU, TensorRT's calibrator) must see exactly what the engine
sees at run time: RGB, letterboxed with pad 114 to the engine's input size, scaled to 0..1, NCHW.
Calibrating on differently prepared pictures picks activation ranges for inputs the engine never
gets, which costs accuracy without any error message. So there is one loader, used by both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vap_video.engines.contract import ModelContractError
from vap_video.engines.dataset import IMAGE_SUFFIXES, DatasetError, letterbox, load_data_yaml, load_image


def calibration_images(source: str | Path, limit: int = 256) -> list[Path]:
    """Image paths from a folder (recursive) or a data.yaml (its train split, else val).

    Spread evenly over the source rather than the first `limit` files, because datasets are often
    sorted by camera or scene and the first few hundred would all show one place.
    """
    source = Path(source)
    if source.suffix.lower() in (".yaml", ".yml"):
        try:
            spec = load_data_yaml(source)
        except DatasetError as exc:
            raise ModelContractError(f"calibration data: {exc}") from None
        paths = list(spec.train) or list(spec.val)
    elif source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise ModelContractError(f"calibration source {source} is neither a folder of images nor a data.yaml")
    if not paths:
        raise ModelContractError(f"calibration source {source} has no images ({', '.join(IMAGE_SUFFIXES)})")
    if limit > 0 and len(paths) > limit:
        idx = np.linspace(0, len(paths) - 1, limit).round().astype(int)
        paths = [paths[i] for i in idx]
    return paths


def preprocess_image(img: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """RGB uint8 H x W x 3 -> float32 [3, h, w] letterboxed, 0..1 (the engine contract's input)."""
    out, _, _ = letterbox(img, input_hw)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)


def calibration_batches(source: str | Path, input_hw: tuple[int, int], batch_size: int = 8,
                        limit: int = 256) -> Iterator[np.ndarray]:
    """Yield float32 [B, 3, h, w] batches (the last may be smaller); unreadable images are skipped."""
    batch: list[np.ndarray] = []
    for path in calibration_images(source, limit):
        try:
            img = load_image(path)
        except DatasetError:
            continue
        batch.append(preprocess_image(img, input_hw))
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)
