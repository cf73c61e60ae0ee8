"""The horizon of a driving scene without a camera file, from its labels: the vanishing point of the drivable
area's straight side boundaries, else the drivable area's top row. Shared by the placement of synthesis (where
objects stand and how tall they are) and the weathering of real benchmarks (the depth the weather effects scatter
over, from a frozen segmenter's pseudo labels)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage.measure import LineModelND, ransac

from tasks.labels import train_ids


@dataclass(frozen=True)
class Horizon:
    row: float
    source: str  # "camera" | "vanishing_point" | "road" | "default"


def _boundary_line(points: np.ndarray, tolerance: float, min_inliers: float) -> tuple[float, float] | None:
    """(a, b) of the line ``x = a·y + b`` through most of the (y, x) ``points`` (RANSAC, scikit-image), or None
    when fewer than ``min_inliers`` of them lie within ``tolerance`` of it (a curved or ragged boundary)."""
    model, inliers = ransac(points, LineModelND, min_samples=2, residual_threshold=tolerance, max_trials=200, rng=0)
    if model is None or inliers is None or inliers.mean() < min_inliers:
        return None
    origin, direction = (model.origin, model.direction) if hasattr(model, "origin") else model.params
    dy, dx = float(direction[0]), float(direction[1])
    if abs(dy) < 1e-3:  # a horizontal "boundary" is the road's far edge, not a side
        return None
    a = dx / dy
    return a, float(origin[1]) - a * float(origin[0])


def vanishing_point_row(road: np.ndarray, min_rows: int = 8, min_inliers: float = 0.5) -> float | None:
    """Row where the straight left and right boundary lines of the ``road`` mask meet (its vanishing point), or
    None when the boundaries are not two converging straight lines.

    Per row, the leftmost and rightmost road pixels are boundary points, except where the road reaches the image
    border (it leaves the frame there; that is no boundary). Each side is fit with a RANSAC line ``x = a·y + b``
    through at least ``min_inliers`` of its points (parked cars and gaps are the outliers); the left side must
    lean right going up and the right side left (a road ahead), and they must meet between 15 % of the frame
    above the road's top row and 2 % below it."""
    H, W = road.shape
    rows = np.flatnonzero(road.any(axis=1))
    if len(rows) < min_rows:
        return None
    left = road[rows].argmax(axis=1)
    right = W - 1 - road[rows, ::-1].argmax(axis=1)
    tolerance = max(1.5, 0.01 * W)
    lines = []
    for xs, inside in ((left, left > 0), (right, right < W - 1)):
        if inside.sum() < min_rows:
            return None
        line = _boundary_line(np.c_[rows[inside], xs[inside]].astype(float), tolerance, min_inliers)
        if line is None:
            return None
        lines.append(line)
    (a_l, b_l), (a_r, b_r) = lines
    if not (a_l < -0.05 and a_r > 0.05):  # parallel, or the vanishing point off to one side: no road ahead
        return None
    row = (b_l - b_r) / (a_r - a_l)
    top = float(rows[0])
    # the road cannot reach above the horizon, and a road that ends more than 15 % of the frame below its
    # vanishing point is rare (a car or a crest ahead); further than that the lines are no road's sides
    if not (top - 0.15 * H <= row <= top + 0.02 * H):
        return None
    return row


def estimate_horizon(label: np.ndarray, drivable: list[str], stride: int = 4) -> Horizon:
    """Horizon row of a scene without a camera file, from its largest drivable region: the vanishing point of
    its straight side boundaries when they are found (``vanishing_point``), else its top row (``road``: exact for a
    road that runs to the horizon, too low for one that ends at a car or a crest); mid-height without road."""
    lab = label[::stride, ::stride]
    road = np.isin(lab, train_ids(drivable)).astype(np.uint8)
    n, cc, stats, _ = cv2.connectedComponentsWithStats(road, connectivity=8)
    if n <= 1:
        return Horizon(row=0.5 * label.shape[0], source="default")
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    vp = vanishing_point_row(cc == biggest)
    if vp is not None:
        return Horizon(row=round(vp * stride, 2), source="vanishing_point")
    return Horizon(row=float(stats[biggest, cv2.CC_STAT_TOP] * stride), source="road")
