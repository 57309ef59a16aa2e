"""COCO metrics: agreement with pycocotools, hand-checked cases, NMS helpers."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from vap_video.engines.evaluate import batched_nms, box_iou, evaluate_detections, nms

pytest.importorskip("pycocotools", reason="pycocotools is the reference implementation")
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def _realistic(seed: int, n_images: int = 24, nc: int = 4) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Ground truth plus detector-like predictions: jittered hits, misclassified, duplicates,
    false positives, misses, empty images, tied (rounded) scores."""
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for i in range(n_images):
        m = 0 if i % 7 == 3 else int(rng.integers(0, 9))
        wh = rng.uniform(6, 160, size=(m, 2))
        xy = rng.uniform(0, 480, size=(m, 2))
        g = np.concatenate([rng.integers(0, nc, size=(m, 1)), xy, xy + wh], 1)
        rows = []
        for c, x1, y1, x2, y2 in g:
            if rng.random() < 0.15:
                continue  # missed
            w, h = x2 - x1, y2 - y1
            jit = rng.normal(0, 0.08, size=4) * np.array([w, h, w, h])
            cls = c if rng.random() > 0.1 else rng.integers(0, nc)
            score = rng.uniform(0.3, 1.0)
            rows.append([x1 + jit[0], y1 + jit[1], x2 + jit[2], y2 + jit[3], score, cls])
            if rng.random() < 0.2:  # duplicate, lower score
                rows.append([x1 + jit[1], y1 - jit[0], x2, y2 + jit[3], score * 0.7, cls])
        for _ in range(int(rng.integers(0, 6))):  # false positives
            x, y = rng.uniform(0, 500, 2)
            w, h = rng.uniform(5, 120, 2)
            rows.append([x, y, x + w, y + h, rng.uniform(0.01, 0.8), rng.integers(0, nc)])
        p = np.array(rows, np.float64).reshape(-1, 6)
        if seed % 2:
            p[:, 4] = np.round(p[:, 4], 1)  # ties between scores
        preds.append(p)
        gts.append(g.astype(np.float64).reshape(-1, 5))
    return preds, gts


def _cocoeval(preds: list[np.ndarray], gts: list[np.ndarray], nc: int, default_params: bool = False) -> COCOeval:
    """pycocotools on the same boxes: 'all' range and maxDets 100 only, or its default parameters
    (the four area ranges and maxDets 1/10/100, as `summarize()` reports them)."""
    images = [{"id": i + 1, "width": 640, "height": 640} for i in range(len(gts))]
    anns, dets = [], []
    for i, g in enumerate(gts):
        for c, x1, y1, x2, y2 in g:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    for i, p in enumerate(preds):
        for x1, y1, x2, y2, s, c in p:
            dets.append({"image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns,
                        "categories": [{"id": c + 1, "name": str(c)} for c in range(nc)]}
        coco.createIndex()
        res = coco.loadRes(dets)
        ev = COCOeval(coco, res, "bbox")
        if not default_params:
            ev.params.areaRng = [[0, 1e10]]
            ev.params.areaRngLbl = ["all"]
            ev.params.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
    return ev


def _pycocotools(preds: list[np.ndarray], gts: list[np.ndarray], nc: int) -> tuple[float, float]:
    prec = _cocoeval(preds, gts, nc).eval["precision"][:, :, :, 0, 0]  # [T, R, K]
    return float(np.mean(prec[0][prec[0] > -1])), float(np.mean(prec[prec > -1]))


def _pycocotools_summary(preds: list[np.ndarray], gts: list[np.ndarray], nc: int) -> dict[str, float]:
    """COCOeval.summarize()'s AP lines with its default parameters (area ranges, maxDets=100)."""
    ev = _cocoeval(preds, gts, nc, default_params=True)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.summarize()
    return dict(zip(("map50_95", "map50", "map75", "small", "medium", "large"), map(float, ev.stats[:6])))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_pycocotools(seed: int) -> None:
    preds, gts = _realistic(seed)
    res = evaluate_detections(preds, gts, num_classes=4)
    ref50, ref = _pycocotools(preds, gts, 4)
    assert 0.2 < res.map50_95 < 0.95  # a realistic, non-degenerate case
    assert res.map50 == pytest.approx(ref50, abs=1e-4)
    assert res.map50_95 == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_area_ranges_match_pycocotools_summary(seed: int) -> None:
    """`vap val --coco`'s small/medium/large APs equal pycocotools' summarize() with its default
    parameters: ground truth outside a range is ignored, a detection matched to it drops out, an
    unmatched detection outside the range drops out; cut at maxDets=100 per image and class."""
    preds, gts = _realistic(seed, n_images=30)
    res = evaluate_detections(preds, gts, num_classes=4, area_ranges=True)
    ref = _pycocotools_summary(preds, gts, 4)
    assert res.map50_95 == pytest.approx(ref["map50_95"], abs=1e-4)
    assert res.map50 == pytest.approx(ref["map50"], abs=1e-4)
    sizes = np.concatenate([(g[:, 3] - g[:, 1]) * (g[:, 4] - g[:, 2]) for g in gts])
    assert (sizes < 32 ** 2).sum() >= 5 and (sizes > 96 ** 2).sum() >= 5  # every range has objects
    for k in ("small", "medium", "large"):
        assert res.area_ap[k] == pytest.approx(ref[k], abs=1e-4), k
    assert "small" in res.table() and "large" in res.table()


def test_area_scale_sizes_objects_in_source_pixels() -> None:
    """Boxes in a letterboxed input at scale 0.5: with area_scale 1/0.5^2 the size ranges see the
    source image's areas, so the APs equal pycocotools on the boxes at source scale."""
    preds, gts = _realistic(6, n_images=20)
    half_p = [np.concatenate([p[:, :4] * 0.5, p[:, 4:]], 1) for p in preds]
    half_g = [np.concatenate([g[:, :1], g[:, 1:] * 0.5], 1) for g in gts]
    res = evaluate_detections(half_p, half_g, 4, area_ranges=True, area_scale=[4.0] * len(gts))
    ref = _pycocotools_summary(preds, gts, 4)
    for k in ("small", "medium", "large"):
        assert res.area_ap[k] == pytest.approx(ref[k], abs=1e-4), k
    unscaled = evaluate_detections(half_p, half_g, 4, area_ranges=True)
    assert unscaled.area_ap["small"] != pytest.approx(ref["small"], abs=1e-3)  # the factor matters
    with pytest.raises(ValueError, match="area_scale"):
        evaluate_detections(half_p, half_g, 4, area_scale=[1.0])


def test_matches_pycocotools_past_max_dets() -> None:
    """More than 100 detections of one class in one image: both cut at maxDets per image and class."""
    preds, gts = _realistic(5, n_images=6)
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 400, size=(160, 2))
    g0 = gts[0]
    hits = g0[:, 1:5] if len(g0) else np.zeros((0, 4))
    crowd = np.concatenate([xy, xy + 50, rng.uniform(0, 1, (160, 1)), np.zeros((160, 1))], 1)
    late_hits = np.concatenate([hits, np.full((len(hits), 1), 0.001), g0[:, :1]], 1)
    preds[0] = np.concatenate([preds[0], crowd, late_hits])
    res = evaluate_detections(preds, gts, num_classes=4)
    ref50, ref = _pycocotools(preds, gts, 4)
    assert res.map50 == pytest.approx(ref50, abs=1e-4)
    assert res.map50_95 == pytest.approx(ref, abs=1e-4)


def test_equal_iou_ties_follow_pycocotools() -> None:
    """A detection overlapping two ground truths equally takes the later one, as COCOeval does;
    that choice decides what the next detections can still match."""
    gts = [np.array([[0, 0, 0, 10, 10], [0, 2, 0, 12, 10]], float)]  # A, B overlapping
    preds = [np.array([[1, 0, 11, 10, 0.9, 0],   # IoU 0.818 with A and with B: a tie
                       [2, 0, 12, 10, 0.8, 0],   # exactly B (IoU 0.667 with A)
                       [0, 0, 10, 10, 0.7, 0]], float)]  # exactly A
    res = evaluate_detections(preds, gts, 1)
    ref50, ref = _pycocotools(preds, gts, 1)
    assert res.map50 == pytest.approx(ref50, abs=1e-4)
    assert res.map50_95 == pytest.approx(ref, abs=1e-4)
    # taking the first ground truth instead would give AP 1 at every threshold
    assert res.map50_95 < 0.99


def test_perfect_and_empty_predictions() -> None:
    gts = [np.array([[0, 10, 10, 50, 60], [1, 100, 100, 180, 150]], float), np.zeros((0, 5))]
    perfect = [np.array([[10, 10, 50, 60, 0.9, 0], [100, 100, 180, 150, 0.8, 1]], float), np.zeros((0, 6))]
    r = evaluate_detections(perfect, gts, 3, names=["a", "b", "c"])
    assert r.map50 == pytest.approx(1.0) and r.map50_95 == pytest.approx(1.0)
    assert r.precision == 1.0 and r.recall == 1.0
    assert np.isnan(r.per_class_ap["c"])  # no ground truth: left out of the mean
    none = evaluate_detections([np.zeros((0, 6)), np.zeros((0, 6))], gts, 3)
    assert none.map50 == 0.0 and none.recall == 0.0 and none.precision == 0.0
    table = r.table()
    assert "a" in table.splitlines()[2] and "all" in table and "2 images" in table


def test_precision_recall_at_threshold_and_localisation() -> None:
    gts = [np.array([[0, 0, 0, 100, 100], [0, 200, 200, 300, 300]], float)]
    preds = [np.array([
        [0, 0, 100, 100, 0.9, 0],        # TP
        [10, 10, 110, 110, 0.8, 0],      # duplicate: FP
        [200, 200, 300, 300, 0.1, 0],    # TP but below conf
        [400, 400, 450, 450, 0.5, 0],    # FP
    ], float)]
    r = evaluate_detections(preds, gts, 1, conf=0.25)
    assert r.precision == pytest.approx(1 / 3) and r.recall == pytest.approx(0.5)
    # AP50: ranks TP, FP, FP, TP -> precision 1 up to recall 0.5, then 0.5 at recall 1
    assert r.map50 == pytest.approx((51 * 1.0 + 50 * 0.5) / 101)
    # IoU of the 10-px shifted box is 8100/11900 = 0.68: a hit at 0.5..0.65, never above
    iou = box_iou(np.array([[0, 0, 100, 100]]), np.array([[10, 10, 110, 110]]))[0, 0]
    assert iou == pytest.approx(8100 / 11900)
    shifted = evaluate_detections([np.array([[10, 10, 110, 110, 0.9, 0]], float)],
                                  [np.array([[0, 0, 0, 100, 100]], float)], 1)
    assert shifted.map50 == pytest.approx(1.0)
    assert shifted.map50_95 == pytest.approx(4 / 10)  # thresholds .50 .55 .60 .65 hit


def test_input_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="pair up"):
        evaluate_detections([np.zeros((0, 6))], [], 2)
    with pytest.raises(ValueError, match="class id outside"):
        evaluate_detections([np.array([[0, 0, 1, 1, 0.5, 5]])], [np.zeros((0, 5))], 2)


def test_nms_and_class_aware_nms() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.99).tolist() == [3, 1, 2]  # identical boxes 3 and 0: IoU 1
    classes = np.array([0, 1, 0, 0])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [3, 1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
