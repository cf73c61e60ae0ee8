import json

import cv2
import numpy as np
import pytest

from schemas import CocoSourceConfig
from tasks.imageio import BadInputError
from tasks.synth.coco import extract_coco_objects, filter_coco_instances, load_coco
from tests.helpers import shared_or_skip


def _poly(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


@pytest.fixture
def coco_files(tmp_path):
    img = np.full((100, 120, 3), 200, np.uint8)
    img[20:60, 30:80] = (10, 120, 30)
    cv2.imwrite(str(tmp_path / "a.jpg"), img)
    anns = [
        # id, cat, bbox, area, crowd
        (1, 1, (30, 20, 50, 40), 2000, 0),  # dog: kept
        (2, 2, (5, 5, 40, 40), 1600, 0),  # person: overlaps cityscapes
        (3, 3, (5, 5, 40, 40), 1600, 0),  # train: overlaps (the references forgot it)
        (4, 1, (5, 5, 40, 40), 1600, 1),  # crowd
        (5, 1, (50, 50, 10, 10), 100, 0),  # too small
        (6, 1, (0, 30, 40, 40), 1600, 0),  # touches the left border
        (7, 99, (30, 20, 50, 40), 2000, 0),  # unknown category
    ]
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 120, "height": 100}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "person"}, {"id": 3, "name": "train"}],
        "annotations": [
            {
                "id": i,
                "image_id": 1,
                "category_id": c,
                "bbox": list(b),
                "area": a,
                "iscrowd": cr,
                "segmentation": _poly(*b),
            }
            for i, c, b, a, cr in anns
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path


def test_filter_records_a_reason_for_every_rejected_instance(coco_files):
    coco = load_coco(coco_files / "ann.json")
    cfg = CocoSourceConfig(annotations=coco_files / "ann.json", images=coco_files, min_area=500)
    kept, rejects = filter_coco_instances(coco, cfg)
    assert [k.ann_id for k in kept] == [1]
    reasons = {r.item: r.reason for r in rejects}
    assert reasons == {
        "coco:1:2": "overlaps_cityscapes",
        "coco:1:3": "overlaps_cityscapes",
        "coco:1:4": "crowd",
        "coco:1:5": "too_small",
        "coco:1:6": "cut_by_border",
        "coco:1:7": "unknown_category",
    }


def test_extracted_object_is_the_masked_crop(coco_files):
    coco = load_coco(coco_files / "ann.json")
    cfg = CocoSourceConfig(annotations=coco_files / "ann.json", images=coco_files, min_area=500)
    kept, _ = filter_coco_instances(coco, cfg)
    objs, rejects = extract_coco_objects(coco, kept, coco_files, max_side=256)
    assert not rejects and len(objs) == 1
    rec, rgba = objs[0]
    assert rec.object_id == "coco-1-1" and rec.class_name == "dog" and rec.source == "coco"
    alpha = rgba[..., 3] > 0
    # polygon box 50x40 plus 2 px padding; JPEG keeps the green within a few levels
    assert 45 <= rgba.shape[1] <= 56 and 36 <= rgba.shape[0] <= 46
    assert abs(int(np.median(rgba[..., 1][alpha])) - 120) < 12
    assert alpha.sum() == rec.mask_area


def test_unreadable_image_quarantines_its_instances(coco_files):
    (coco_files / "a.jpg").write_bytes(b"broken")
    coco = load_coco(coco_files / "ann.json")
    kept, _ = filter_coco_instances(
        coco, CocoSourceConfig(annotations=coco_files / "ann.json", images=coco_files, min_area=500)
    )
    objs, rejects = extract_coco_objects(coco, kept, coco_files, 256)
    assert objs == [] and rejects[0].reason == "bad_image" and "a.jpg" in rejects[0].detail


def test_not_a_coco_file_is_named(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises((BadInputError, TypeError), match="x.json"):
        load_coco(tmp_path / "x.json")


def test_real_coco_sample_keeps_only_non_cityscapes_classes():
    root = shared_or_skip("coco_sample")
    coco = load_coco(root / "annotations.json")
    cfg = CocoSourceConfig(annotations=root / "annotations.json", images=root, min_area=500)
    kept, rejects = filter_coco_instances(coco, cfg)
    assert {k.class_name for k in kept} <= {"bottle", "chair", "couch"}
    assert {"person", "bus", "car"} <= {r.detail for r in rejects if r.reason == "overlaps_cityscapes"}
    objs, bad = extract_coco_objects(coco, kept, root, 256)
    assert len(objs) == len(kept) and not bad
