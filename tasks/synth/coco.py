"""COCO instance filtering, per instance, with the reason recorded for every rejected one.

Recipe of RPL / PEBAL / Meta-OoD (drop images with Cityscapes classes), done per instance instead: an
image with a person *and* a dog still gives its dog. Uses pycocotools for the annotation index and masks.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections import defaultdict
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


#: Top-level lists of an instance annotation file -> the keys each of their entries needs (pycocotools indexes
#: by them). pycocotools takes a file without one of the lists as one with an empty list, so a file missing one
#: would quietly give no objects (or every annotation an unknown category).
COCO_KEYS: dict[str, tuple[str, ...]] = {
    "images": ("id", "width", "height"),
    "annotations": ("id", "image_id", "category_id"),
    "categories": ("id", "name"),
}


def load_coco(annotations: str | Path) -> COCO:
    """The pycocotools index of an instance annotation file. BadInputError names the file when it is not one: not
    JSON, not an object, a missing or non-list ``images`` / ``annotations`` / ``categories``, an entry that is not
    an object or lacks the keys pycocotools indexes by (pycocotools itself indexes a file without ``annotations``
    as one without objects, and one without ``categories`` as one whose every category is unknown)."""
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        with open(path, "rb") as f:
            dataset = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise BadInputError(f"{path}: not a COCO instance annotation file (not JSON: {e})") from None
    problem = _dataset_problem(dataset)
    if problem:
        raise BadInputError(f"{path}: not a COCO instance annotation file: {problem}")
    coco = COCO()  # no file: pycocotools would read and parse it a second time
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        try:
            coco.createIndex()
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            raise BadInputError(f"{path}: not a COCO instance annotation file ({e!r})") from None
    return coco


def _dataset_problem(dataset) -> str | None:
    if not isinstance(dataset, dict):
        return f"the file holds a JSON {type(dataset).__name__}, not an object"
    missing = [k for k in COCO_KEYS if k not in dataset]
    if missing:
        has = ", ".join(repr(k) for k in dataset) or "none"
        return f"missing key {', '.join(repr(k) for k in missing)} (top-level keys: {has})"
    for key, needs in COCO_KEYS.items():
        if not isinstance(dataset[key], list):
            return f"{key!r} is a {type(dataset[key]).__name__}, not a list"
        for i, entry in enumerate(dataset[key]):
            if not isinstance(entry, dict):
                return f"{key}[{i}] is a {type(entry).__name__}, not an object"
            lacks = [k for k in needs if k not in entry]
            if lacks:
                return f"{key}[{i}] has no {', '.join(repr(k) for k in lacks)}"
    return None


def filter_coco_instances(coco: COCO, cfg: CocoSourceConfig) -> tuple[list[CocoInstance], list[RejectRecord]]:
    """Keep instances usable as anomalies; every other instance gets a RejectRecord with its reason.

    Reasons: ``bad_annotation`` (an id shared by several annotations: pycocotools would keep only the last, so
    every copy is quarantined; a non-finite or negative bbox / area), ``bad_segmentation``, ``unknown_category``,
    ``missing_image``, ``overlaps_cityscapes``, ``crowd``, ``too_small``, ``cut_by_border``.
    """
    excluded = {canonical_class(c) for c in cfg.exclude_categories}
    kept: list[CocoInstance] = []
    rejects: list[RejectRecord] = []

    def reject(ann: dict, reason: str, detail: str = "") -> None:
        rejects.append(
            RejectRecord(stage="coco", item=f"coco:{ann.get('image_id')}:{ann.get('id')}", reason=reason, detail=detail)
        )

    duplicated = _duplicate_ids(coco)
    for ann_id, images in duplicated.items():
        detail = f"annotation id {ann_id} appears {len(images)} times (images {', '.join(map(str, images))})"
        for image_id in images:
            reject({"id": ann_id, "image_id": image_id}, "bad_annotation", detail)

    for ann_id in sorted(coco.anns):
        if ann_id in duplicated:
            continue
        ann = coco.anns[ann_id]
        where = f"annotation {ann.get('id')} of image {ann.get('image_id')}"
        problem = segmentation_problem(ann, coco.imgs.get(ann.get("image_id")))
        if problem:
            reject(ann, "bad_segmentation", f"{where}: {problem}")
            continue
        problem = annotation_problem(ann)
        if problem:
            reject(ann, "bad_annotation", f"{where}: {problem}")
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


def _duplicate_ids(coco: COCO) -> dict[int, list[int]]:
    """Annotation ids that more than one annotation of the file carries -> the image id of each copy."""
    images: dict[int, list] = defaultdict(list)
    for ann in coco.dataset.get("annotations", []):
        images[ann.get("id")].append(ann.get("image_id"))
    return {i: imgs for i, imgs in images.items() if len(imgs) > 1}


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def annotation_problem(ann: dict) -> str | None:
    """What makes a (shape-checked) annotation's bbox or area unusable: NaN / inf pass every ``<`` test of the
    size and border filters, and a negative one is no size at all."""
    bbox = ann["bbox"]
    if not all(_number(v) for v in bbox):
        return f"bbox {bbox!r} holds a non-number"
    if not all(math.isfinite(v) for v in bbox):
        return f"bbox {bbox!r} holds a non-finite value"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return f"bbox {bbox!r} has a width or height <= 0"
    area = ann.get("area", 0.0)
    if not (_number(area) and math.isfinite(area) and area >= 0):
        return f"area {area!r} is not a finite number >= 0"
    return None


def segmentation_problem(ann: dict, image: dict | None = None) -> str | None:
    """Why this annotation gives no true mask (None when it does): polygons need at least 3 points (6 finite
    numbers, an even count); RLE needs ``counts`` and a ``size`` of two ints that is the image's [height, width]
    (when ``image`` is given) and counts (a list, or pycocotools' compressed string) that sum to height·width
    (pycocotools decodes any other sum to a garbage mask); and a bbox of 4."""
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
            if not all(_number(v) for v in poly):
                return "a polygon holds non-numbers"
            if not all(math.isfinite(v) for v in poly):
                return "a polygon holds a non-finite coordinate"
        return None
    if isinstance(seg, dict):
        return _rle_problem(seg, image)
    return f"segmentation is a {type(seg).__name__}, neither polygons nor RLE"


def _rle_problem(seg: dict, image: dict | None) -> str | None:
    size = seg.get("size")
    if "counts" not in seg or not (isinstance(size, list | tuple) and len(size) == 2):
        return f"RLE needs counts and size [h, w], has keys {sorted(seg)}"
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        return f"RLE size {list(size)!r} is not two positive ints"
    h, w = size
    if image is not None and [h, w] != [image.get("height"), image.get("width")]:
        want = [image.get("height"), image.get("width")]
        return f"RLE size [{h}, {w}] is not image {image.get('id')}'s [height, width] {want}"
    counts = seg["counts"]
    if isinstance(counts, list):
        kind = "uncompressed"
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            return "uncompressed RLE counts hold a negative or non-integer value"
    elif isinstance(counts, str | bytes):
        kind = "compressed"
        counts, problem = _rle_string_counts(counts)
        if problem:
            return f"compressed RLE counts string {problem}"
    else:
        return f"RLE counts is a {type(counts).__name__}, neither a list nor a string"
    total = sum(counts)
    if total != h * w:
        return f"{kind} RLE counts sum to {total}, size [{h}, {w}] needs {h * w}"
    return None


def _rle_string_counts(s: str | bytes) -> tuple[list[int], str | None]:
    """The run lengths of pycocotools' compressed RLE string (``rleFrString`` of maskApi.c: 5 bits a character
    from '0', bit 0x20 = more follows, bit 0x10 of the last = negative; from the fourth run on, a delta to the
    run two before), or the problem that keeps it from being one. Decoded here, not by pycocotools: its C
    decoder trusts the string (a truncated one, or runs that do not sum to h·w, give a garbage mask)."""
    data = s.encode("latin-1", "replace") if isinstance(s, str) else s
    counts: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                return counts, "is truncated"
            c = data[p] - 48
            if not 0 <= c < 64:
                return counts, "holds a character outside '0'..'o'"
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            return counts, f"decodes to a negative run ({x}) at run {len(counts)}"
        counts.append(x)
    return counts, None


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
