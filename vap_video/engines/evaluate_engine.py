"""COCO mAP of a *deployed* engine (any backend) on a YOLO dataset split.

`vap val` scores a training checkpoint in PyTorch; this scores the file the pipeline runs (an ONNX
model, its INT8 variant, a TensorRT engine) through the same `Backend` interface the runtime uses,
so precision changes (fp16, INT8) are measured on exactly what is deployed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import numpy as np

from vap_video.engines.backends.base import Backend
from vap_video.engines.calibration import preprocess_image
from vap_video.engines.contract import ModelContractError
from vap_video.engines.dataset import DatasetError, load_data_yaml, load_image, validate_dataset
from vap_video.engines.evaluate import EvalResult, evaluate_detections
from vap_video.engines.letterbox import placement


@dataclass
class EngineEval:
    result: EvalResult
    images: int
    ms_per_image: float

    def summary(self) -> dict[str, Any]:
        return {"map50": self.result.map50, "map50_95": self.result.map50_95, "images": self.images,
                "ms_per_image": self.ms_per_image}


def val_samples(data: str | Path, split: str = "val", limit: int = 0) -> tuple[list[tuple[Path, np.ndarray]],
                                                                               list[str]]:
    """Usable (image, labels [n, 5] normalised) pairs of a split, and the class names."""
    try:
        spec = load_data_yaml(Path(data))
    except DatasetError as exc:
        raise ModelContractError(f"validation data: {exc}") from None
    report = validate_dataset(spec, split)
    samples = list(report.usable)
    if not samples:
        raise ModelContractError(f"validation data {data}: no usable images in the {split!r} split "
                                 f"({report.summary()})")
    return (samples[:limit] if limit else samples), list(spec.names)


def _batches(samples: list[tuple[Path, np.ndarray]], hw: tuple[int, int],
             batch: int) -> Iterator[tuple[np.ndarray, list[np.ndarray], list[float]]]:
    """(images, ground truth in letterboxed pixels, letterbox scale per image) per batch.

    Normalised labels are placed on the image as resized (round(w * scale) x round(h * scale)
    pixels), exactly as the training/validation dataset does, so an engine and its checkpoint are
    scored against the same boxes.
    """
    for i in range(0, len(samples), batch):
        images, gts, scales = [], [], []
        for path, labels in samples[i:i + batch]:
            img = load_image(path)
            nh, nw, lb = placement(img.shape[0], img.shape[1], *hw)
            scales.append(float(lb.scale))
            images.append(preprocess_image(img, hw))
            lab = np.asarray(labels, np.float32).reshape(-1, 5)
            cx, cy, bw, bh = lab[:, 1] * nw, lab[:, 2] * nh, lab[:, 3] * nw, lab[:, 4] * nh
            xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
            xyxy[:, 0::2] += lb.pad_x
            xyxy[:, 1::2] += lb.pad_y
            gts.append(np.concatenate([lab[:, :1], xyxy], 1))
        yield np.stack(images), gts, scales


def evaluate_backend(backend: Backend, samples: list[tuple[Path, np.ndarray]], names: list[str],
                     batch: int = 8, conf: float = 0.25, area_ranges: bool = False) -> EngineEval:
    """Run `backend` over `samples` and score it.

    Boxes are compared in letterboxed pixels (IoU does not change under the letterbox's uniform
    scale and shift, so the mAP is the source image's); with `area_ranges` the COCO size ranges are
    applied to areas in source pixels.
    """
    if len(names) != backend.info.num_classes:
        raise ModelContractError(f"the dataset has {len(names)} classes but the engine {backend.info.source} has "
                                 f"{backend.info.num_classes}; evaluate on the dataset the model was trained for")
    preds: list[np.ndarray] = []
    gts: list[np.ndarray] = []
    area_scale: list[float] = []
    t_inf = 0.0
    for images, g, scales in _batches(samples, backend.info.input_hw, batch):
        t0 = time.perf_counter()
        out = backend.infer(images)
        t_inf += time.perf_counter() - t0
        for det in out:
            preds.append(det[det[:, 4] > 0.001])
        gts.extend(g)
        area_scale.extend(1.0 / s ** 2 for s in scales)
    result = evaluate_detections(preds, gts, len(names), names, conf=conf, area_ranges=area_ranges,
                                 area_scale=area_scale)
    return EngineEval(result=result, images=len(preds), ms_per_image=1000 * t_inf / max(len(preds), 1))
