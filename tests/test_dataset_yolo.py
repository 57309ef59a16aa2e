"""YOLO datasets: data.yaml parsing, validation of broken datasets, letterbox, augmentation consistency."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="YoloDataset is the training side (torch)")

from vap_video.engines.dataset import (  # noqa: E402 (after the torch skip above: these modules need torch)
    AugmentConfig,
    DatasetError,
    YoloDataset,
    collate,
    label_path_for,
    letterbox,
    load_data_yaml,
    validate_dataset,
)
from vap_video.engines.synth import CLASS_NAMES, write_yolo_dataset  # noqa: E402


@pytest.fixture(scope="module")
def synth_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_yolo_dataset(tmp_path_factory.mktemp("synth"), n_train=16, n_val=4, imgsz=128, seed=1)


def test_load_data_yaml_resolves_splits(synth_yaml: Path) -> None:
    spec = load_data_yaml(synth_yaml)
    assert spec.names == CLASS_NAMES and spec.nc == 4
    assert len(spec.train) == 16 and len(spec.val) == 4
    assert label_path_for(spec.train[0]) == synth_yaml.parent / "labels/train" / (spec.train[0].stem + ".txt")


def test_load_data_yaml_variants(synth_yaml: Path, tmp_path: Path) -> None:
    root = synth_yaml.parent
    (root / "train_list.txt").write_text("./images/train/000000.jpg\n./images/train/000001.jpg\n\n")
    y = tmp_path / "d.yaml"
    y.write_text(
        f"path: {root}\ntrain: train_list.txt\nval: [images/val, images/train/000002.jpg]\n"
        "names: {0: person, 1: car, 2: bicycle, 3: dog}\n"
    )
    spec = load_data_yaml(y)
    assert spec.names == CLASS_NAMES
    assert [p.name for p in spec.train] == ["000000.jpg", "000001.jpg"]
    assert len(spec.val) == 5 and all(p.exists() for p in spec.val + spec.train)


@pytest.mark.parametrize(
    "text, message",
    [
        ("train: images/train\n", "missing 'names'"),
        ("train: images/train\nnames: {0: a, 2: b}\n", "without gaps"),
        ("train: images/train\nnames: 5\n", "must be a list"),
        ("train: images/train\nnames: [a, a]\n", "duplicate class names"),
        ("train: nowhere\nnames: [a]\n", "does not exist"),
        ("names: [a]\n", "missing 'train'"),
        ("train: images/train\nnc: 3\nnames: [a, b]\n", "nc=3"),
        ("train: images/train\nnames: [a\n", "not valid YAML"),
    ],
)
def test_load_data_yaml_errors(synth_yaml: Path, tmp_path: Path, text: str, message: str) -> None:
    y = tmp_path / "bad.yaml"
    y.write_text(f"path: {synth_yaml.parent}\n" + text)
    with pytest.raises(DatasetError, match=message):
        load_data_yaml(y)
    with pytest.raises(DatasetError, match="not found"):
        load_data_yaml(tmp_path / "missing.yaml")


def test_validation_reports_each_problem_and_skips_bad_samples(tmp_path: Path) -> None:
    yaml_path = write_yolo_dataset(tmp_path / "ds", n_train=12, n_val=1, imgsz=96, seed=4)
    lab = tmp_path / "ds/labels/train"
    img = tmp_path / "ds/images/train"
    (lab / "000000.txt").unlink()  # no label file: a background image
    (lab / "000001.txt").write_text("9 0.5 0.5 0.2 0.2\n")  # class id too large
    (lab / "000002.txt").write_text("0 320 240 50 60\n")  # pixel coordinates
    (img / "000003.jpg").write_bytes(b"this is not a jpeg")  # corrupt image
    (lab / "000004.txt").write_text("1 0.5 0.5 0.2\n")  # malformed row
    (lab / "000005.txt").write_text("2 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n")  # duplicate
    (lab / "000006.txt").write_text("")  # background image
    spec = load_data_yaml(yaml_path)
    rep = validate_dataset(spec, "train")
    assert rep.n_images == 12
    assert rep.notes["no_label"] == 1
    assert rep.counts["bad_class"] == 1
    assert rep.counts["out_of_range"] == 1
    assert rep.counts["corrupt_image"] == 1
    assert rep.counts["malformed_row"] == 1
    assert rep.counts["duplicate_row"] == 1
    assert rep.n_background >= 1
    assert len(rep.usable) == 12 - 4
    usable = {p.name: labels for p, labels in rep.usable}
    assert usable["000000.jpg"].shape == (0, 5) and "000003.jpg" not in usable
    assert usable["000005.jpg"].shape == (2, 5)  # duplicate removed, image kept
    assert usable["000006.jpg"].shape == (0, 5)
    text = rep.summary()
    assert "8 usable" in text and "000001.jpg" in text and "pixel coordinates?" in text
    assert "class 9 (nc=4)" in text


def test_no_usable_samples_is_fatal(tmp_path: Path) -> None:
    yaml_path = write_yolo_dataset(tmp_path / "ds", n_train=2, n_val=1, imgsz=64, seed=4)
    for p in (tmp_path / "ds/labels/train").glob("*.txt"):
        p.write_text("7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match="no usable samples in split 'train'"):
        validate_dataset(load_data_yaml(yaml_path), "train")


def test_letterbox_centres_and_maps_back() -> None:
    img = np.full((100, 200, 3), 7, np.uint8)
    out, scale, (px, py) = letterbox(img, 64)
    assert out.shape == (64, 64, 3) and scale == pytest.approx(0.32) and (px, py) == (0, 16)
    assert (out[:16] == 114).all() and (out[48:] == 114).all() and (out[16:48] == 7).all()
    out, scale, (px, py) = letterbox(np.zeros((50, 33, 3), np.uint8), 64)
    nw = round(33 * scale)
    assert px == (64 - nw) // 2 and py == 0
    assert (out[:, :px] == 114).all() and (out[:, px + nw:] == 114).all()
    assert (out[:, px:px + nw] == 0).all()


@pytest.mark.parametrize("shape", [(720, 1280), (101, 37), (240, 320), (64, 64), (300, 500)])
def test_letterbox_matches_the_runtime_preprocessing(shape: tuple[int, int]) -> None:
    """Training and inference must place and resample pixels identically."""
    from vap_video.pipeline.preprocess import letterbox_into

    img = np.random.default_rng(0).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    ours, scale, (px, py) = letterbox(img, 128)
    canvas = np.full((128, 128, 3), 114, np.uint8)
    lb = letterbox_into(img, canvas)
    assert np.array_equal(ours, canvas)
    assert scale == pytest.approx(lb.scale) and (px, py) == (lb.pad_x, lb.pad_y)


def _solid_dataset(tmp_path: Path, n: int = 4) -> list[tuple[Path, np.ndarray]]:
    """Images with one solid red rectangle on a noisy blue-grey background, with exact labels."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    samples = []
    for i in range(n):
        h, w = int(rng.integers(120, 200)), int(rng.integers(120, 260))
        img = rng.integers(40, 140, size=(h, w, 3), dtype=np.uint8)
        img[..., 2] = 200  # blue-ish background, far from pure red
        x1, y1 = int(rng.integers(5, w // 2)), int(rng.integers(5, h // 2))
        x2, y2 = x1 + int(rng.integers(20, w // 2 - 4)), y1 + int(rng.integers(20, h // 2 - 4))
        img[y1:y2, x1:x2] = (255, 0, 0)
        p = tmp_path / "images" / f"{i}.png"
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        samples.append((p, np.array([[1, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]],
                                    np.float32)))
    return samples


def _red(img_chw: torch.Tensor) -> np.ndarray:
    img = (img_chw.numpy().transpose(1, 2, 0) * 255).astype(np.int16)
    return (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)


def test_no_augment_targets_match_labels(tmp_path: Path) -> None:
    samples = _solid_dataset(tmp_path)
    ds = YoloDataset(samples, 128, augment=False)
    for i in range(len(ds)):
        x, t = ds[i]
        assert x.shape == (3, 128, 128) and x.dtype == torch.float32 and float(x.max()) <= 1.0
        assert t.shape == (1, 5) and t[0, 0] == 1
        ys, xs = np.nonzero(_red(x))
        assert abs(xs.min() - t[0, 1]) <= 1.5 and abs(xs.max() + 1 - t[0, 3]) <= 1.5
        assert abs(ys.min() - t[0, 2]) <= 1.5 and abs(ys.max() + 1 - t[0, 4]) <= 1.5


@pytest.mark.parametrize("mosaic", [0.0, 1.0])
def test_augmented_boxes_follow_the_pixels(tmp_path: Path, mosaic: float) -> None:
    samples = _solid_dataset(tmp_path)
    hyp = AugmentConfig(mosaic=mosaic, degrees=0.0 if mosaic else 15.0, shear=0.0 if mosaic else 4.0,
                        translate=0.15, scale=(0.6, 1.4), fliplr=0.5, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0,
                        min_area_ratio=0.0)  # keep cropped slivers so every red pixel must be labelled
    ds = YoloDataset(samples, 128, augment=True, hyp=hyp, seed=3)
    seen = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            x, t = ds[i]
            red = _red(x)
            covered = np.zeros_like(red)
            for cls, x1, y1, x2, y2 in t.numpy():
                assert cls == 1 and 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
                xi1, yi1 = int(np.floor(x1)), int(np.floor(y1))
                xi2, yi2 = int(np.ceil(x2)), int(np.ceil(y2))
                covered[max(0, yi1 - 1):yi2 + 1, max(0, xi1 - 1):xi2 + 1] = True
                inside = red[yi1:yi2, xi1:xi2]
                # the box is filled by its object (a rotated rectangle fills > half its hull)
                assert inside.mean() > (0.6 if mosaic else 0.45), (epoch, i, inside.mean())
                # and its edges are the edges of the object's pixels (hull of the warped rectangle)
                ys, xs = np.nonzero(red[max(0, yi1 - 3):yi2 + 3, max(0, xi1 - 3):xi2 + 3])
                xs, ys = xs + max(0, xi1 - 3), ys + max(0, yi1 - 3)
                edges = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                assert np.abs(edges - np.array([x1, y1, x2, y2])).max() <= 2.0, (epoch, i, edges, (x1, y1, x2, y2))
                seen += 1
            # every red pixel belongs to some target box, except slivers under min_box_px wide
            n, _, stats, _ = cv2.connectedComponentsWithStats((red & ~covered).astype(np.uint8))
            for _, _, w, h, area in stats[1:]:
                assert min(w, h) <= 3, (epoch, i, w, h, area)
    assert seen >= 12


def test_augmentation_is_deterministic_per_epoch_and_mosaic_can_close(tmp_path: Path) -> None:
    samples = _solid_dataset(tmp_path)
    a = YoloDataset(samples, 128, augment=True, seed=5)
    b = YoloDataset(samples, 128, augment=True, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    xa, ta = a[1]
    xb, tb = b[1]
    assert torch.equal(xa, xb) and torch.equal(ta, tb)
    b.set_epoch(3)
    assert not torch.equal(b[1][0], xa)
    b.close_mosaic()
    assert not b.mosaic_enabled


def test_collate_adds_batch_index(tmp_path: Path) -> None:
    samples = _solid_dataset(tmp_path)
    samples[2] = (samples[2][0], np.zeros((0, 5), np.float32))  # a background image
    ds = YoloDataset(samples, 96, augment=False, cache=True)
    images, targets = collate([ds[i] for i in range(4)])
    assert images.shape == (4, 3, 96, 96)
    assert targets.shape == (3, 6)
    assert targets[:, 0].tolist() == [0.0, 1.0, 3.0]


def test_dataset_and_engines_import_without_torch(synth_yaml: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import vap_video.engines.dataset, vap_video.engines.synth, vap_video.engines.evaluate\n"
        "import vap_video.engines.haze\n"
        f"spec = vap_video.engines.dataset.load_data_yaml({str(synth_yaml)!r})\n"
        "rep = vap_video.engines.dataset.validate_dataset(spec, 'val')\n"
        "print(len(rep.usable))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4"


def test_haze_augmentation_and_loader_workers(tmp_path: Path) -> None:
    import pickle

    samples = _solid_dataset(tmp_path)
    plain = AugmentConfig(mosaic=0.0, translate=0.0, scale=(1.0, 1.0), fliplr=0.0, hsv_h=0.0, hsv_s=0.0,
                          hsv_v=0.0)
    hazy = AugmentConfig(**{**plain.__dict__, "haze": 1.0, "haze_transmission": (0.3, 0.3)})
    x0, t0 = YoloDataset(samples, 128, augment=True, hyp=plain)[0]
    x1, t1 = YoloDataset(samples, 128, augment=True, hyp=hazy)[0]
    assert torch.equal(t0, t1)  # haze moves no box
    top0, top1 = x0[:, :20].std().item(), x1[:, :20].std().item()
    assert top1 < 0.6 * top0, "haze lowers contrast where the scene is far"
    # a DataLoader worker gets a pickled copy: the class must be found by name and behave the same
    ds = YoloDataset(samples, 96, augment=True, seed=2)
    copy = pickle.loads(pickle.dumps(ds))
    assert type(copy) is type(ds) and torch.equal(copy[1][0], ds[1][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate)
    images, targets = next(iter(loader))
    assert images.shape == (2, 3, 96, 96) and targets.shape[1] == 6


def test_evaluation_only_dataset_with_an_empty_train_split_loads(tmp_path: Path) -> None:
    from vap_video.engines.synth import write_yolo_dataset

    spec = load_data_yaml(write_yolo_dataset(tmp_path / "valonly", 0, 3, imgsz=96, seed=1))
    assert spec.train == [] and len(spec.val) == 3


def test_ultralytics_parity_background_images_and_polygon_rows(tmp_path: Path) -> None:
    """No label file = background image; a segment row = its bounding box; both counted and reported."""
    yaml_path = write_yolo_dataset(tmp_path / "ds", n_train=6, n_val=1, imgsz=96, seed=5)
    lab = tmp_path / "ds/labels/train"
    (lab / "000000.txt").unlink()
    (lab / "000001.txt").unlink()
    # a triangle and a quadrilateral (Ultralytics segment format), and a plain box in the same file
    (lab / "000002.txt").write_text("1 0.1 0.2 0.5 0.2 0.3 0.6\n2 0.6 0.6 0.9 0.65 0.85 0.9 0.62 0.8\n"
                                    "0 0.5 0.5 0.2 0.2\n")
    (lab / "000003.txt").write_text("1 0.1 0.2 0.5 0.2 0.3\n")       # 2.5 points: malformed
    (lab / "000004.txt").write_text("1 0.1 0.2 0.5 0.2 0.3 1.7\n")   # polygon leaves the image
    rep = validate_dataset(load_data_yaml(yaml_path), "train")
    usable = {p.name: labels for p, labels in rep.usable}
    assert usable["000000.jpg"].shape == (0, 5) and usable["000001.jpg"].shape == (0, 5)
    np.testing.assert_allclose(usable["000002.jpg"], [[1, 0.3, 0.4, 0.4, 0.4], [2, 0.75, 0.75, 0.3, 0.3],
                                                      [0, 0.5, 0.5, 0.2, 0.2]], atol=1e-6)
    assert rep.notes == {"no_label": 2, "segment_row": 2}
    assert rep.counts["malformed_row"] == 1 and rep.counts["out_of_range"] == 1
    assert "000003.jpg" not in usable and "000004.jpg" not in usable
    assert rep.n_background >= 2
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "vap_video.pipeline.cli", "data", "check", str(yaml_path)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    text = out.stdout + out.stderr
    assert "note: 2 x images without a label file, used as background images" in text, text
    assert "note: 2 x polygon (segment) label rows, trained on as their bounding boxes" in text
