"""COCO instance filtering, per instance, with the reason recorded for every rejected one.

Recipe of RPL / PEBAL / Meta-OoD (drop images with Cityscapes classes), done per instance instead: an
image with a person *and* a dog still gives its dog. Uses pycocotools for the annotation index and masks.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from schemas import CocoSourceConfig, ObjectRecord, RejectRecord
from tasks.imageio import BadInputError, read_rgb
from tasks.object_bank import crop_object

#: Dataset spellings of one class (VOC-style names appear in many COCO-format files).
CLASS_ALIASES: dict[str, str] = {"motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch"}


def canonical_class(name: str) -> str:
    n = name.strip().lower()
    return CLASS_ALIASES.get(n, n)


@dataclass(frozen=True)
class CocoInstance:
    ann_id: int
    image_id: int
    class_name: str


def load_coco(annotations: str | Path) -> COCO:
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        try:
            return COCO(str(path))
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            raise BadInputError(f"{path}: not a COCO instance annotation file ({e!r})") from None


def filter_coco_instances(coco: COCO, cfg: CocoSourceConfig) -> tuple[list[CocoInstance], list[RejectRecord]]:
    """Keep instances usable as anomalies; every other instance gets a RejectRecord with its reason.

    Reasons: ``bad_segmentation``, ``unknown_category``, ``missing_image``, ``overlaps_cityscapes``, ``crowd``,
    ``too_small``, ``cut_by_border``.
    """
    excluded = {canonical_class(c) for c in cfg.exclude_categories}
    kept: list[CocoInstance] = []
    rejects: list[RejectRecord] = []

    def reject(ann: dict, reason: str, detail: str = "") -> None:
        rejects.append(
            RejectRecord(stage="coco", item=f"coco:{ann.get('image_id')}:{ann.get('id')}", reason=reason, detail=detail)
        )

    for ann_id in sorted(coco.anns):
        ann = coco.anns[ann_id]
        problem = segmentation_problem(ann)
        if problem:
            reject(ann, "bad_segmentation", f"annotation {ann.get('id')} of image {ann.get('image_id')}: {problem}")
            continue
        cat = coco.cats.get(ann.get("category_id"))
        if cat is None:
            reject(ann, "unknown_category", f"category_id={ann.get('category_id')} is not in 'categories'")
            continue
        img = coco.imgs.get(ann.get("image_id"))
        if img is None:
            reject(ann, "missing_image", f"image_id={ann.get('image_id')} is not in 'images'")
            continue
        name = canonical_class(cat["name"])
        if name in excluded:
            reject(ann, "overlaps_cityscapes", name)
        elif ann.get("iscrowd", 0) and not cfg.allow_crowd:
            reject(ann, "crowd", name)
        elif float(ann.get("area", 0.0)) < cfg.min_area:
            reject(ann, "too_small", f"area {ann.get('area')} < {cfg.min_area}")
        elif _cut_by_border(ann["bbox"], img["width"], img["height"], cfg.border_margin):
            reject(ann, "cut_by_border", f"bbox {ann['bbox']} in {img['width']}x{img['height']}")
        else:
            kept.append(CocoInstance(ann_id=ann_id, image_id=ann["image_id"], class_name=name))
            if cfg.limit and len(kept) >= cfg.limit:
                break
    return kept, rejects


def segmentation_problem(ann: dict) -> str | None:
    """Why pycocotools could not turn this annotation into a mask (None when it can): polygons need at least
    3 points (6 numbers, an even count), RLE needs ``counts`` and a ``size`` of two ints, and a bbox of 4."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return f"bbox {bbox!r} is not [x, y, w, h]"
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        if not seg:
            return "empty polygon list"
        for poly in seg:
            if not isinstance(poly, list | tuple) or len(poly) < 6 or len(poly) % 2:
                n = len(poly) if isinstance(poly, list | tuple) else type(poly).__name__
                return f"a polygon needs >= 3 points (6 numbers, an even count), got {n}"
            if not all(isinstance(v, int | float) for v in poly):
                return "a polygon holds non-numbers"
        return None
    if isinstance(seg, dict):
        size = seg.get("size")
        if "counts" not in seg or not (isinstance(size, list | tuple) and len(size) == 2):
            return f"RLE needs counts and size [h, w], has keys {sorted(seg)}"
        return None
    return f"segmentation is a {type(seg).__name__}, neither polygons nor RLE"


def _cut_by_border(bbox: list[float], width: int, height: int, margin: int) -> bool:
    x, y, w, h = bbox
    return x < margin or y < margin or x + w > width - margin or y + h > height - margin


def extract_coco_objects(
    coco: COCO, instances: list[CocoInstance], images_root: str | Path, max_side: int
) -> tuple[list[tuple[ObjectRecord, np.ndarray]], list[RejectRecord]]:
    """Cut each kept instance out of its image as an RGBA crop (alpha = the annotation's mask)."""
    images_root = Path(images_root)
    out: list[tuple[ObjectRecord, np.ndarray]] = []
    rejects: list[RejectRecord] = []
    by_image: dict[int, list[CocoInstance]] = {}
    for inst in instances:
        by_image.setdefault(inst.image_id, []).append(inst)
    for image_id in sorted(by_image):
        info = coco.imgs[image_id]
        path = images_root / info["file_name"]
        try:
            rgb = read_rgb(path)
            if rgb.shape[:2] != (info["height"], info["width"]):
                raise BadInputError(
                    f"{path}: image is {rgb.shape[1]}x{rgb.shape[0]}, annotation says {info['width']}x{info['height']}"
                )
        except BadInputError as e:
            for inst in by_image[image_id]:
                rejects.append(
                    RejectRecord(stage="coco", item=f"coco:{image_id}:{inst.ann_id}", reason="bad_image", detail=str(e))
                )
            continue
        for inst in by_image[image_id]:
            item = f"coco:{image_id}:{inst.ann_id}"
            try:
                mask = coco.annToMask(coco.anns[inst.ann_id]).astype(bool)
            except (TypeError, ValueError, IndexError, KeyError) as e:  # what segmentation_problem cannot foresee
                detail = f"annotation {inst.ann_id} of image {image_id}: {type(e).__name__}: {e}"
                rejects.append(RejectRecord(stage="coco", item=item, reason="bad_segmentation", detail=detail))
                continue
            if not mask.any():
                rejects.append(RejectRecord(stage="coco", item=item, reason="empty_mask"))
                continue
            rgba = crop_object(rgb, mask, max_side)
            rec = ObjectRecord(
                object_id=f"coco-{image_id}-{inst.ann_id}",
                source="coco",
                class_name=inst.class_name,
                origin=item,
                width=rgba.shape[1],
                height=rgba.shape[0],
                mask_area=int((rgba[..., 3] >= 128).sum()),
            )
            out.append((rec, rgba))
    return out, rejects
