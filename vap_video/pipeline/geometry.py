"""Plane geometry for zones and lines: point-in-polygon, segment intersection, polygon checks.

Analytics tests every track against every zone on every frame, so the hot functions take arrays
of points and answer for all of them at once (NumPy broadcasting over points x edges). The
validation helpers (self-intersection, zero length) run once at config load and favour clarity.

Coordinates are image pixels: x to the right, y **down**. That matters for "left" and "right" of a
directed line; see `signed_distance`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Point = Sequence[float] | np.ndarray   # (x, y): a list, a tuple or an array row


def as_points(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """(N, 2) float64 array from any sequence of (x, y) pairs."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"expected a list of (x, y) points, got an array of shape {arr.shape}")
    return arr


def polygon_area(polygon: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Signed area by the shoelace formula (positive = clockwise on screen, since y points down)."""
    p = as_points(polygon)
    x, y = p[:, 0], p[:, 1]
    return float(0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _orient(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Cross product (b - a) x (c - a); its sign says which side of a->b the point c lies on."""
    return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])


def segments_intersect(p1: Point, p2: Point, q1: Point, q2: Point) -> bool:
    """True when segment p1-p2 and segment q1-q2 share at least one point (touching counts)."""
    a, b, c, d = (np.asarray(v, dtype=np.float64) for v in (p1, p2, q1, q2))
    o1, o2 = _orient(a, b, c), _orient(a, b, d)
    o3, o4 = _orient(c, d, a), _orient(c, d, b)
    if ((o1 > 0 and o2 < 0) or (o1 < 0 and o2 > 0)) and ((o3 > 0 and o4 < 0) or (o3 < 0 and o4 > 0)):
        return True

    def on_segment(s: np.ndarray, e: np.ndarray, p: np.ndarray) -> bool:
        return (min(s[0], e[0]) <= p[0] <= max(s[0], e[0])) and (min(s[1], e[1]) <= p[1] <= max(s[1], e[1]))

    return bool((o1 == 0 and on_segment(a, b, c)) or (o2 == 0 and on_segment(a, b, d))
                or (o3 == 0 and on_segment(c, d, a)) or (o4 == 0 and on_segment(c, d, b)))


def self_intersection(polygon: Sequence[Sequence[float]] | np.ndarray) -> tuple[int, int] | None:
    """Indices (i, j) of the first two non-adjacent edges that cross, or None for a simple polygon.

    Edge i runs from vertex i to vertex i+1 (wrapping). O(E^2), fine for hand-drawn zones.
    """
    p = as_points(polygon)
    n = len(p)
    for i in range(n):
        a, b = p[i], p[(i + 1) % n]
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # adjacent edges share a vertex by construction
            if segments_intersect(a, b, p[j], p[(j + 1) % n]):
                return i, j
    return None


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) bool: which of the (N, 2) points lie inside the (E, 2) polygon (even-odd ray casting).

    Vectorised over points x edges; a point exactly on an edge may fall either way, which the
    zone inertia absorbs.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    poly = np.asarray(polygon, dtype=np.float64)
    if len(pts) == 0:
        return np.zeros((0,), dtype=bool)
    x, y = pts[:, 0:1], pts[:, 1:2]  # (N, 1)
    x1, y1 = poly[:, 0][None, :], poly[:, 1][None, :]  # (1, E)
    nxt = np.roll(poly, -1, axis=0)
    x2, y2 = nxt[:, 0][None, :], nxt[:, 1][None, :]
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    crossings = straddles & (x < x_cross)
    return (np.count_nonzero(crossings, axis=1) % 2) == 1


def signed_distance(points: np.ndarray, a: Point, b: Point) -> np.ndarray:
    """(N,) signed distance in pixels from each point to the infinite line through a -> b.

    Negative = left of a->b, positive = right of a->b, as seen on the screen (y down): for a line
    drawn left-to-right, points above it are on its left (negative).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    a_ = np.asarray(a, dtype=np.float64)
    b_ = np.asarray(b, dtype=np.float64)
    length = float(np.hypot(*(b_ - a_)))
    if length == 0.0:
        raise ValueError("line has zero length")
    return _orient(a_, b_, pts) / length


def box_anchor(boxes: np.ndarray, anchor: str) -> np.ndarray:
    """(N, 2) reference point of each x1,y1,x2,y2 box: 'bottom_center' (feet) or 'center'."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx = (b[:, 0] + b[:, 2]) * 0.5
    if anchor == "bottom_center":
        cy = b[:, 3]
    elif anchor == "center":
        cy = (b[:, 1] + b[:, 3]) * 0.5
    else:
        raise ValueError(f"unknown anchor {anchor!r}: use 'bottom_center' or 'center'")
    return np.stack([cx, cy], axis=1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection-over-union of every x1,y1,x2,y2 box in `a` against every box in `b`.

    float32 and in-place ufuncs: this runs two or three times per frame per stream on up to a few
    hundred boxes, and it is the tracker's largest cost.
    """
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    iw = np.minimum(a[:, None, 2], b[None, :, 2])
    iw -= np.maximum(a[:, None, 0], b[None, :, 0])
    np.maximum(iw, 0.0, out=iw)
    ih = np.minimum(a[:, None, 3], b[None, :, 3])
    ih -= np.maximum(a[:, None, 1], b[None, :, 1])
    np.maximum(ih, 0.0, out=ih)
    inter = iw
    inter *= ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :]
    union -= inter
    np.maximum(union, np.float32(1e-9), out=union)
    inter /= union
    return inter
