"""Self-made patch anomalies (SLEEG: Tu et al., "Self-supervised Likelihood Estimation with Energy Guidance for
Anomaly Segmentation in Urban Scenes", AAAI 2024, Sec. 3.1): no outside object at all.

* A **patch library** (a queue, 30 by default) is refreshed every step with random rectangular crops of the
  scenes: 3–6 % of the image area, aspect ratio (w / h) 0.8–1.2.
* A crop becomes a **patch** cut to the minimal convex polygon around its Harris corners plus a few random
  points inside it; with probability ``noise_ratio`` its pixels are replaced by uniform noise.
* ``paste_patches`` pastes N = 10 patches at random places of an image; the pasted polygons are the anomaly
  *candidates* (SLEEG refines them during training, ``models.losses.refine_candidates``).

The same cut makes the ``patches`` object source of the synth flow (``patch_objects``). Everything here works
on uint8 RGB arrays and draws from the ``numpy.random.Generator`` it is given, so a seed fixes every patch.

Differences from the authors' code (read for facts, not copied): it spans the polygon with 15 random points only
(the Harris corners of the paper live in dead code there); its noise is N(0, 1) in normalised space, ours is
uniform over the RGB range.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from schemas import ObjectRecord, PatchesConfig, PatchesSourceConfig, PatchShapeConfig, RejectRecord
from tasks.imageio import BadInputError, read_rgb
from tasks.object_bank import BankObject
from tasks.scenes import SceneRef
from tasks.seeding import rng_for

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


def random_crop_box(height: int, width: int, cfg: PatchShapeConfig, rng: np.random.Generator) -> Box:
    """A crop of ``cfg.area`` (share of ``height``·``width``) and ``cfg.aspect`` (w / h), at a random place.
    Sides are rounded to whole pixels (≥ 4) and clipped to the image."""
    area = rng.uniform(*cfg.area) * height * width
    aspect = rng.uniform(*cfg.aspect)
    h = min(height, max(4, round(math.sqrt(area / aspect))))
    w = min(width, max(4, round(math.sqrt(area * aspect))))
    y0 = int(rng.integers(0, height - h + 1))
    x0 = int(rng.integers(0, width - w + 1))
    return x0, y0, x0 + w, y0 + h


def polygon_points(crop: np.ndarray, cfg: PatchShapeConfig, rng: np.random.Generator) -> np.ndarray:
    """K×2 float32 (x, y) points: the crop's Harris corners (OpenCV ``goodFeaturesToTrack`` with the Harris
    detector) and ``cfg.random_points`` uniform points inside it."""
    h, w = crop.shape[:2]
    pts = [rng.uniform((0, 0), (w - 1, h - 1), size=(cfg.random_points, 2)).astype(np.float32)]
    if cfg.max_corners > 0:
        gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
        corners = cv2.goodFeaturesToTrack(
            gray, cfg.max_corners, qualityLevel=0.01, minDistance=2, useHarrisDetector=True, k=0.04
        )
        if corners is not None:
            pts.append(corners.reshape(-1, 2).astype(np.float32))
    return np.concatenate(pts)


def polygon_mask(crop: np.ndarray, cfg: PatchShapeConfig, rng: np.random.Generator) -> np.ndarray:
    """Bool H×W mask of the crop: the filled convex hull of ``polygon_points``."""
    hull = cv2.convexHull(polygon_points(crop, cfg, rng))
    mask = np.zeros(crop.shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 1)
    return mask.astype(bool)


def cut_patch(crop: np.ndarray, cfg: PatchShapeConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(RGB, bool mask) of one patch from a crop; with probability ``noise_ratio`` the RGB is uniform noise."""
    mask = polygon_mask(crop, cfg, rng)
    rgb = crop
    if rng.random() < cfg.noise_ratio:
        rgb = rng.integers(0, 256, size=crop.shape, dtype=np.uint8)
    return rgb, mask


class PatchLibrary:
    """SLEEG's patch library: a queue of the latest ``cfg.library_size`` scene crops."""

    def __init__(self, cfg: PatchesConfig, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.rng = rng
        self.crops: deque[np.ndarray] = deque(maxlen=cfg.library_size)

    def refresh(self, images: list[np.ndarray]) -> None:
        """Push ``cfg.crops_per_image`` random crops of each image (uint8 H×W×3)."""
        for img in images:
            for _ in range(self.cfg.crops_per_image):
                x0, y0, x1, y1 = random_crop_box(img.shape[0], img.shape[1], self.cfg, self.rng)
                self.crops.append(img[y0:y1, x0:x1].copy())

    def draw(self) -> np.ndarray:
        if not self.crops:
            raise RuntimeError("the patch library is empty: refresh it with scene images first")
        return self.crops[int(self.rng.integers(len(self.crops)))]


def paste_patches(image: np.ndarray, library: PatchLibrary, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (default ``per_image``) patches from ``library`` pasted at random places of ``image`` (uint8
    H×W×3, not modified); returns the composite and the bool H×W mask of the pasted polygons (later patches
    cover earlier ones; the mask is their union)."""
    cfg, rng = library.cfg, library.rng
    out = image.copy()
    candidates = np.zeros(image.shape[:2], bool)
    H, W = image.shape[:2]
    for _ in range(cfg.per_image if n is None else n):
        rgb, mask = cut_patch(library.draw(), cfg, rng)
        h, w = min(mask.shape[0], H), min(mask.shape[1], W)
        rgb, mask = rgb[:h, :w], mask[:h, :w]
        y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        region = out[y0 : y0 + h, x0 : x0 + w]
        region[mask] = rgb[mask]
        candidates[y0 : y0 + h, x0 : x0 + w] |= mask
    return out, candidates


@dataclass
class PatchObject:
    """A patch cut from a scene, for the object bank: RGBA cropped to the polygon's box (alpha = polygon)."""

    object_id: str
    rgba: np.ndarray
    origin: str  # "<scene_id>:x0,y0,x1,y1"
    noise: bool


def patch_object(scene_id: str, image: np.ndarray, cfg: PatchShapeConfig, rng: np.random.Generator) -> PatchObject:
    """One bank object from ``image``: a random crop, cut to its polygon, cropped to the polygon's box."""
    x0, y0, x1, y1 = random_crop_box(image.shape[0], image.shape[1], cfg, rng)
    crop = image[y0:y1, x0:x1]
    rgb, mask = cut_patch(crop, cfg, rng)
    noise = rgb is not crop
    ys, xs = np.nonzero(mask)
    sl = np.s_[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    rgba = np.ascontiguousarray(np.dstack([rgb[sl], mask[sl].astype(np.uint8) * 255]))
    origin = f"{scene_id}:{x0},{y0},{x1},{y1}"
    digest = hashlib.sha1(origin.encode() + rgba.tobytes()).hexdigest()[:16]
    return PatchObject(f"patch-{digest}", rgba, origin, noise)


def patch_bank_objects(
    scenes: list[SceneRef], cfg: PatchesSourceConfig, seed: int
) -> tuple[list[BankObject], list[RejectRecord]]:
    """The ``patches`` object source: ``cfg.count`` patch objects, each cut from a scene drawn with its own seed
    (so the bank does not depend on the order objects are made in). A scene image that cannot be read is
    quarantined and its patches are not made."""
    if not scenes:
        raise ValueError("the patches object source needs scenes to cut patches from, and there are none")
    picks = [rng_for(seed, "patches", i) for i in range(cfg.count)]
    chosen = [int(rng.integers(len(scenes))) for rng in picks]
    made: dict[int, BankObject] = {}
    rejects: list[RejectRecord] = []
    for k in sorted(set(chosen)):  # one decoded scene in memory at a time
        try:
            image = read_rgb(scenes[k].image)
        except BadInputError as e:
            item, reason = str(scenes[k].image), e.reason or "unreadable"
            rejects.append(RejectRecord(stage="patches", item=item, reason=reason, detail=str(e)))
            continue
        for i in (i for i, c in enumerate(chosen) if c == k):
            made[i] = _bank_patch(scenes[k].scene_id, image, cfg, picks[i], i)
    return [made[i] for i in sorted(made)], rejects


def _bank_patch(
    scene_id: str, image: np.ndarray, cfg: PatchesSourceConfig, rng: np.random.Generator, i: int
) -> BankObject:
    """Patch object ``i`` of the bank, cut from ``image`` with its own ``rng``."""
    p = patch_object(scene_id, image, cfg, rng)
    h, w = p.rgba.shape[:2]
    record = ObjectRecord(
        object_id=p.object_id,
        source="patches",
        class_name="patch",
        origin=p.origin,
        seed=i,
        width=w,
        height=h,
        mask_area=int((p.rgba[..., 3] > 0).sum()),
        quality={"noise": float(p.noise)},
        height_m=cfg.height_m,
    )
    return BankObject(record, p.rgba)
