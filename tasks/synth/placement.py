"""Placement search: where in a scene an object can stand, at the size perspective demands.

Flat-ground pinhole model: a point on the ground at image row ``v`` lies at depth ``Z = f·h_c / (v − v_h)``
(``v_h`` horizon row, ``h_c`` camera height), so an object of real height ``H`` appears
``H·f / Z = H·(v − v_h) / h_c`` pixels tall — linear in the foot point's distance below the horizon.

Candidates are foot points sampled on drivable pixels of a subsampled label; each is scored with
integral images (O(1) per candidate): score = support · (1 − key overlap) · centrality, where support is
the drivable share of the object's base strip and centrality prefers the road ahead. Candidates that
overlap placed objects, cover key instances or stand on too little road are invalid; the chosen one is
drawn among the valid ones with probability proportional to its score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from schemas import PlacementConfig, PlacementRecord
from tasks.imageio import BadInputError
from tasks.labels import train_ids


class NoPlacementError(ValueError):
    """The scene has no place for any object (e.g. no drivable pixels)."""


class SceneTooSmallError(NoPlacementError, BadInputError):
    """The scene is smaller than the smallest object the placement may make (``min_scene_size``): a bad input,
    quarantined as ``too_small`` (a ``BadInputError``, whose ``reason`` the writer records)."""

    def __init__(self, message: str):
        BadInputError.__init__(self, message, reason="too_small")


def min_scene_size(cfg: PlacementConfig) -> tuple[int, int]:
    """(W, H) below which no object can be placed: an object is at least ``min_height_px`` tall and at most
    ``max_height_frac`` of the image height, so the scene needs ``min_height_px / max_height_frac`` rows; and
    ``min_height_px`` columns, the width of the smallest object were it as wide as tall."""
    return cfg.min_height_px, math.ceil(cfg.min_height_px / cfg.max_height_frac - 1e-9)


def check_scene_size(height: int, width: int, cfg: PlacementConfig) -> None:
    """``SceneTooSmallError`` naming the size when a ``width`` x ``height`` scene cannot hold any object."""
    min_w, min_h = min_scene_size(cfg)
    if width < min_w or height < min_h:
        raise SceneTooSmallError(
            f"scene {width}x{height} px is too small to place an object (needs at least {min_w}x{min_h} px: an "
            f"object is at least placement.min_height_px {cfg.min_height_px} px tall and at most "
            f"placement.max_height_frac {cfg.max_height_frac} of the scene height)"
        )


def _integral(mask: np.ndarray) -> np.ndarray:
    out = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int32)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int32), axis=1, out=out[1:, 1:])
    return out


def _box_sums(ii: np.ndarray, y0, x0, y1, x1) -> np.ndarray:
    return ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]


@dataclass
class PlacementGrid:
    """Subsampled drivable / key-instance / occupancy maps of one scene and their integral images."""

    stride: int
    height: int  # full-resolution size
    width: int
    drivable: np.ndarray  # bool, subsampled
    ii_drivable: np.ndarray
    ii_key: np.ndarray
    occupied: np.ndarray  # bool, subsampled; grows as objects are placed

    @classmethod
    def from_label(cls, label: np.ndarray, cfg: PlacementConfig) -> PlacementGrid:
        s = cfg.search_stride
        lab = label[::s, ::s]
        drivable = np.isin(lab, train_ids(cfg.drivable_classes))
        key = np.isin(lab, train_ids(cfg.key_classes))
        return cls(
            s, label.shape[0], label.shape[1], drivable, _integral(drivable), _integral(key), np.zeros_like(drivable)
        )

    def grid_box(self, y0, x0, y1, x1):
        """Full-resolution box (rows y0:y1, cols x0:x1) -> covering subsampled-grid box."""
        s = self.stride
        gh, gw = self.drivable.shape
        return (
            np.clip(y0 // s, 0, gh),
            np.clip(x0 // s, 0, gw),
            np.clip(-(-y1 // s), 0, gh),
            np.clip(-(-x1 // s), 0, gw),
        )


def place_object(
    grid: PlacementGrid,
    obj_w: int,
    obj_h: int,
    height_m: float,
    horizon: float,
    cam_height_m: float,
    cfg: PlacementConfig,
    rng: np.random.Generator,
) -> tuple[tuple[int, int, int, int], tuple[int, int], int, float, int] | None:
    """Best candidate ``(box, foot, height_px, score, n_candidates)`` for one object, or None."""
    ys, xs = np.nonzero(grid.drivable)
    s = grid.stride
    below = ys * s > horizon + cfg.min_height_px * cam_height_m / max(height_m, 1e-6)
    ys, xs = ys[below], xs[below]
    if ys.size == 0:
        return None
    pick = rng.choice(ys.size, size=min(cfg.candidates, ys.size), replace=False)
    pick.sort()  # candidate order does not depend on the sampler's internal order
    v = ys[pick] * s + s // 2
    u = xs[pick] * s + s // 2
    h_px = np.round(height_m * (v - horizon) / cam_height_m).astype(np.int64)
    w_px = np.maximum(1, np.round(h_px * obj_w / obj_h)).astype(np.int64)
    x0, y0 = u - w_px // 2, v - h_px
    x1, y1 = x0 + w_px, v
    ok = (
        (h_px >= cfg.min_height_px)
        & (h_px <= cfg.max_height_frac * grid.height)
        & (x0 >= 0)
        & (y0 >= 0)
        & (x1 <= grid.width)
        & (y1 <= grid.height)
    )
    if not ok.any():
        return None
    # base strip: the bottom 15% of the box, where the object touches the ground
    by0 = np.maximum(y0, y1 - np.maximum(1, h_px * 15 // 100))
    gy0, gx0, gy1, gx1 = grid.grid_box(by0, x0, y1, x1)
    gy1, gx1 = np.maximum(gy1, gy0 + 1), np.maximum(gx1, gx0 + 1)
    strip_area = (gy1 - gy0) * (gx1 - gx0)
    support = _box_sums(grid.ii_drivable, gy0, gx0, gy1, gx1) / strip_area
    gy0, gx0, gy1, gx1 = grid.grid_box(y0, x0, y1, x1)
    gy1, gx1 = np.maximum(gy1, gy0 + 1), np.maximum(gx1, gx0 + 1)
    area = (gy1 - gy0) * (gx1 - gx0)
    key = _box_sums(grid.ii_key, gy0, gx0, gy1, gx1) / area
    occupied = _box_sums(_integral(grid.occupied), gy0, gx0, gy1, gx1) if grid.occupied.any() else 0
    ok &= (support >= cfg.min_support) & (occupied == 0)
    if not cfg.allow_cover_key:
        ok &= key <= cfg.max_key_overlap
    centrality = 1.0 - 0.5 * np.abs(u - grid.width / 2) / (grid.width / 2)
    score = np.where(ok, support * (1.0 - key) * centrality, 0.0)
    if not (score > 0).any():
        return None
    # draw among valid candidates in proportion to their score: good spots are preferred, but the same
    # object does not land on the one best pixel of every scene
    best = int(rng.choice(score.size, p=score / score.sum()))
    box = (int(x0[best]), int(y0[best]), int(x1[best]), int(y1[best]))
    oy0, ox0, oy1, ox1 = grid.grid_box(box[1], box[0], box[3], box[2])
    grid.occupied[oy0:oy1, ox0:ox1] = True
    return box, (int(u[best]), int(v[best])), int(h_px[best]), float(score[best]), int(pick.size)


def height_prior(class_name: str, cfg: PlacementConfig) -> tuple[float, float]:
    return tuple(cfg.size_prior.get(class_name, cfg.default_height_m))


def place_objects(
    label: np.ndarray,
    objects: list[tuple[str, str, int, int]],
    horizon: float,
    cam_height_m: float,
    cfg: PlacementConfig,
    rng: np.random.Generator,
) -> list[PlacementRecord]:
    """Place several objects ``(object_id, class_name, width, height)`` without overlap.

    Objects with no valid candidate are skipped; NoPlacementError if the scene has no drivable pixel,
    SceneTooSmallError (reason ``too_small``) if it is smaller than any object may be (``min_scene_size``).
    """
    check_scene_size(*label.shape[:2], cfg)
    grid = PlacementGrid.from_label(label, cfg)
    if not grid.drivable.any():
        raise NoPlacementError(f"no drivable pixels ({', '.join(cfg.drivable_classes)}) in the scene label")
    placed: list[PlacementRecord] = []
    for object_id, class_name, w, h in objects:
        lo, hi = height_prior(class_name, cfg)
        height_m = float(rng.uniform(lo, hi))
        flipped = bool(rng.random() < 0.5)
        found = place_object(grid, w, h, height_m, horizon, cam_height_m, cfg, rng)
        if found is None:
            continue
        box, foot, h_px, score, n = found
        placed.append(
            PlacementRecord(
                object_id=object_id,
                class_name=class_name,
                box=box,
                foot=foot,
                height_px=h_px,
                height_m=round(height_m, 4),
                scale=round(h_px / h, 5),
                flipped=flipped,
                score=round(score, 5),
                candidates=n,
            )
        )
    return placed
