"""Geometry helpers against independent references (OpenCV, brute force)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vap_video.pipeline.geometry import (
    box_anchor,
    iou_matrix,
    points_in_polygon,
    polygon_area,
    segments_intersect,
    self_intersection,
    signed_distance,
)

CONCAVE = np.array([[100, 100], [500, 100], [500, 400], [300, 250], [100, 400]], np.float64)


def test_points_in_polygon_matches_opencv() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 600, (2000, 2))
    ours = points_in_polygon(pts, CONCAVE)
    contour = CONCAVE.astype(np.float32).reshape(-1, 1, 2)
    ref = np.array([cv2.pointPolygonTest(contour, (float(x), float(y)), True) for x, y in pts])
    clear = np.abs(ref) > 1e-6  # exactly-on-edge points may fall either way
    assert np.array_equal(ours[clear], ref[clear] > 0)
    assert ours.sum() > 200 and (~ours).sum() > 200  # both outcomes exercised
    # the notch of the concave polygon is outside
    assert not points_in_polygon(np.array([[300, 350]]), CONCAVE)[0]
    assert points_in_polygon(np.array([[300, 200]]), CONCAVE)[0]
    assert points_in_polygon(np.zeros((0, 2)), CONCAVE).shape == (0,)


def test_segments_intersect_cases() -> None:
    assert segments_intersect((0, 0), (10, 10), (0, 10), (10, 0))  # X
    assert not segments_intersect((0, 0), (10, 0), (0, 1), (10, 1))  # parallel
    assert segments_intersect((0, 0), (10, 0), (5, 0), (5, 5))  # T touch
    assert not segments_intersect((0, 0), (4, 0), (5, -1), (5, 1))  # would cross if extended
    assert segments_intersect((0, 0), (10, 0), (5, 0), (15, 0))  # collinear overlap
    assert not segments_intersect((0, 0), (4, 0), (5, 0), (15, 0))  # collinear apart


def test_self_intersection_and_area() -> None:
    assert self_intersection(CONCAVE) is None
    bowtie = [(0, 0), (10, 10), (10, 0), (0, 10)]
    assert self_intersection(bowtie) == (0, 2)
    assert polygon_area([(0, 0), (10, 0), (10, 10), (0, 10)]) == pytest.approx(100.0)
    assert polygon_area([(0, 0), (5, 5), (10, 10)]) == pytest.approx(0.0)


def test_signed_distance_convention() -> None:
    # line drawn left to right: above (smaller y) is its left (negative), below is right
    d = signed_distance(np.array([[50, 40], [50, 65], [50, 50]]), (0, 50), (100, 50))
    np.testing.assert_allclose(d, [-10, 15, 0])
    # drawn right to left, the sides swap
    np.testing.assert_allclose(signed_distance(np.array([[50, 40]]), (100, 50), (0, 50)), [10])
    with pytest.raises(ValueError, match="zero length"):
        signed_distance(np.array([[0, 0]]), (1, 1), (1, 1))


def test_box_anchor() -> None:
    b = np.array([[10, 20, 30, 60]])
    np.testing.assert_allclose(box_anchor(b, "bottom_center"), [[20, 60]])
    np.testing.assert_allclose(box_anchor(b, "center"), [[20, 40]])
    with pytest.raises(ValueError, match="anchor"):
        box_anchor(b, "top")


def test_iou_matrix_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 200, (30, 2))
    wh = rng.uniform(5, 80, (30, 2))
    a = np.concatenate([xy, xy + wh], 1)
    b = a[::-1] + rng.normal(0, 10, a.shape)
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)

    def iou(p: np.ndarray, q: np.ndarray) -> float:
        iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        inter = iw * ih
        return inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)

    ref = np.array([[iou(p, q) for q in b] for p in a])
    got = iou_matrix(a, b)
    assert got.shape == (30, 30)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert (ref > 0).sum() > 20
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 30)
    np.testing.assert_allclose(np.diag(iou_matrix(a, a)), 1.0, atol=1e-6)
