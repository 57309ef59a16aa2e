"""Still images with YOLO labels: `render_image` and `write_yolo_dataset` (train/val splits, haze)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from vap_video.engines.haze import add_haze
from vap_video.engines.synth.objects import CLASS_NAMES, GTObject
from vap_video.engines.synth.sprites import motion_blur, render_sprite
from vap_video.engines.synth.compose import Placed, composite, lighting_lut, render_background, visible_ground_truth


def render_image(
    seed: int | tuple[int, ...],
    width: int,
    height: int,
    haze: float = 0.0,
    max_objects: int = 12,
) -> tuple[np.ndarray, list[GTObject]]:
    """One random still picture and its ground truth; a pure function of the arguments.

    haze is 1 - transmission at the farthest rows (0 = clear). Objects get track ids 1..n in
    drawing order (far to near). Objects less than 20 % visible are left out of the ground truth
    (they are mostly hidden; a label on a few pixels teaches the model noise).
    """
    if width < 16 or height < 16:
        raise ValueError(f"render_image needs at least 16x16 pixels, got {width}x{height}")
    rng = np.random.default_rng(seed)
    frame, horizon = render_background(height, width, rng)
    n = 0 if rng.random() < 0.04 else int(rng.integers(1, max_objects + 1))
    S = max(width, height)
    objs = []
    for _ in range(n):
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        L = math.exp(rng.uniform(math.log(0.02 * S), math.log(0.6 * S)))
        sprite = render_sprite(cls, L, rng)
        h, w = sprite.size
        cx = rng.uniform(-0.05 * width, 1.05 * width)
        yb = rng.uniform(horizon + 0.3 * h, height + 0.25 * h)
        blur = (rng.normal(0, 0.06 * L), rng.normal(0, 0.015 * L)) if rng.random() < 0.3 else (0.0, 0.0)
        objs.append((yb, cls, sprite, int(round(cx - w / 2)), int(round(yb - h)), blur))
    objs.sort(key=lambda o: o[0])
    ids = np.zeros((height, width), np.uint8)
    placed: list[Placed] = []
    for k, (_, cls, sprite, x0, y0, blur) in enumerate(objs):
        solid = sprite.alpha > 0.5
        drawn, pad = motion_blur(sprite, *blur)
        composite(frame, ids, drawn, x0 - pad, y0 - pad, 0)
        # visibility is judged on the solid (unblurred) shape, in the id buffer
        h, w = sprite.size
        fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(width, x0 + w), min(height, y0 + h)
        if fx0 < fx1 and fy0 < fy1:
            ids[fy0:fy1, fx0:fx1][solid[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]] = k + 1
        placed.append(Placed(k + 1, cls, x0, y0, h, w, solid))
    gts = [g for g in visible_ground_truth(placed, ids) if g.visibility >= 0.2]
    frame = cv2.LUT(frame, lighting_lut(rng.uniform(0.7, 1.3), rng.uniform(0.75, 1.35)))
    if haze > 0:
        frame = add_haze(frame, 1.0 - float(haze), airlight=rng.uniform(0.75, 0.95), rng=rng)
    sigma = rng.uniform(0, 6)
    if sigma > 0.5:
        noisy = frame.astype(np.float32) + rng.standard_normal(size=frame.shape, dtype=np.float32) * np.float32(sigma)
        frame = np.clip(noisy, 0, 255).astype(np.uint8)
    return frame, gts


def _yolo_rows(gts: list[GTObject], width: int, height: int) -> str:
    lines = []
    for g in gts:
        x1, y1, x2, y2 = g.box
        lines.append(
            f"{g.class_id} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
            f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}"
        )
    return "\n".join(lines) + ("\n" if lines else "")


_ASPECTS = (1.0, 4 / 3, 16 / 9, 3 / 2, 3 / 4, 9 / 16)


def _write_still(job: tuple[Path, Path, int, int, int, int, float]) -> None:
    """Render and write one dataset image and its label file (a pure function of its job)."""
    img_dir, lab_dir, seed, split_id, i, imgsz, haze_fraction = job
    rng = np.random.default_rng([seed, split_id, i, 7])
    long_side = int(round(imgsz * rng.uniform(0.75, 1.25)))
    aspect = _ASPECTS[int(rng.integers(0, len(_ASPECTS)))]
    if aspect >= 1:
        w, h = long_side, int(round(long_side / aspect))
    else:
        h, w = long_side, int(round(long_side * aspect))
    haze = rng.uniform(0.2, 0.7) if rng.random() < haze_fraction else 0.0
    img, gts = render_image((seed, split_id, i), w, h, haze=haze)
    name = f"{i:06d}"
    ok = cv2.imwrite(str(img_dir / f"{name}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                     [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise OSError(f"could not write {img_dir / (name + '.jpg')}")
    (lab_dir / f"{name}.txt").write_text(_yolo_rows(gts, w, h))


def write_yolo_dataset(
    out_dir: Path,
    n_train: int,
    n_val: int,
    imgsz: int = 320,
    seed: int = 0,
    haze_fraction: float = 0.0,
    workers: int = 1,
) -> Path:
    """Write a YOLO-format dataset of synthetic stills and return its data.yaml path.

    Layout: images/{train,val}/NNNNNN.jpg, labels/{train,val}/NNNNNN.txt (``cls cx cy w h``,
    normalised), data.yaml with path/train/val/names. Picture sizes vary around `imgsz` (long side
    0.75..1.25 x imgsz, several aspect ratios) so letterboxing and scale augmentation get exercised.
    `haze_fraction` of the pictures get haze of random thickness. Train and val never share a seed.
    Every image is a pure function of (seed, split, index), so `workers` > 1 (processes) writes
    the same files faster on a machine with free cores.
    """
    import yaml

    if n_train < 0 or n_val < 0 or (n_train + n_val) == 0:
        raise ValueError(f"need a positive number of images, got train={n_train} val={n_val}")
    if imgsz < 32:
        raise ValueError(f"imgsz must be at least 32, got {imgsz}")
    if not 0.0 <= haze_fraction <= 1.0:
        raise ValueError(f"haze_fraction must be in 0..1, got {haze_fraction}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)
    jobs: list[tuple[Path, Path, int, int, int, int, float]] = []
    for split, n, split_id in (("train", n_train, 0), ("val", n_val, 1)):
        img_dir, lab_dir = out_dir / "images" / split, out_dir / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        jobs.extend((img_dir, lab_dir, int(seed), split_id, i, int(imgsz), float(haze_fraction)) for i in range(n))
    if workers == 1:
        for job in jobs:
            _write_still(job)
    else:
        import multiprocessing as mp

        # fork: workers inherit this module as loaded (spawn would re-run the caller's __main__)
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_still, jobs, chunksize=16):
                pass
    data = {
        "path": str(out_dir.resolve()),
        "train": "images/train",
        "val": "images/val",
        "nc": len(CLASS_NAMES),
        "names": list(CLASS_NAMES),
    }
    yaml_path = out_dir / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return yaml_path
