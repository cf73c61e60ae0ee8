"""Inputs that are wrong in quiet ways: COCO files pycocotools accepts, and benchmark copies as people share them."""

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from schemas import CocoSourceConfig, DemoScenesConfig, ObjectBankConfig, SynthConfig
from tasks.eval.benchmarks import load_benchmark
from tasks.imageio import BadInputError
from tasks.sample_format import REJECTS
from tasks.shards import read_rejects
from tasks.synth.coco import extract_coco_objects, filter_coco_instances, load_coco, segmentation_problem
from tasks.synth.pipeline import build_object_bank

SHARED_BENCHMARKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "anomaly_benchmarks"

# ---- COCO ---------------------------------------------------------------------------------------------------------

H, W = 100, 120


def _ann(i, image_id=1, bbox=(30, 20, 50, 40), area=2000, **kw):
    x, y, w, h = bbox
    a = {"id": i, "image_id": image_id, "category_id": 1, "bbox": list(bbox), "area": area, "iscrowd": 0}
    a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return a | kw


def _write_coco(tmp_path, annotations, drop=()):
    img = np.full((H, W, 3), 200, np.uint8)
    img[20:60, 30:80] = (10, 120, 30)
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(tmp_path / name), img)
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": W, "height": H},
            {"id": 2, "file_name": "b.jpg", "width": W, "height": H},
        ],
        "categories": [{"id": 1, "name": "dog"}],
        "annotations": annotations,
    }
    for key in drop:
        del data[key]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))  # allow_nan: json writes NaN / Infinity, and pycocotools reads them back
    return path


def _filter(path):
    coco = load_coco(path)
    return coco, *filter_coco_instances(coco, CocoSourceConfig(annotations=path, images=path.parent, min_area=500))


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _box_mask(h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    m[20:60, 30:80] = 1
    return m


@pytest.mark.parametrize("key", ["annotations", "categories", "images"])
def test_coco_file_without_a_top_level_key_names_the_file_and_the_key(tmp_path, key):
    path = _write_coco(tmp_path, [_ann(1)], drop=[key])
    with pytest.raises(BadInputError, match=rf"ann\.json: .*missing key '{key}'"):
        load_coco(path)


def test_coco_top_level_key_that_is_not_a_list_is_named(tmp_path):
    path = _write_coco(tmp_path, [_ann(1)])
    data = json.loads(path.read_text())
    data["categories"] = {"1": "dog"}
    path.write_text(json.dumps(data))
    with pytest.raises(BadInputError, match=r"ann\.json: .*'categories' is a dict, not a list"):
        load_coco(path)


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: d["annotations"][1].pop("id"), "annotations[1] has no 'id'"),
        (lambda d: d["categories"][0].pop("name"), "categories[0] has no 'name'"),
        (lambda d: d["images"].append(7), "images[2] is a int, not an object"),
    ],
)
def test_coco_entry_that_pycocotools_cannot_index_is_named(tmp_path, mutate, problem):
    path = _write_coco(tmp_path, [_ann(1), _ann(2)])
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(BadInputError) as e:
        load_coco(path)
    assert str(e.value) == f"{path}: not a COCO instance annotation file: {problem}"


def test_coco_duplicate_annotation_ids_quarantine_every_copy(tmp_path):
    path = _write_coco(tmp_path, [_ann(1), _ann(7, image_id=1), _ann(7, image_id=2, bbox=(40, 30, 20, 20))])
    coco, kept, rejects = _filter(path)
    assert [k.ann_id for k in kept] == [1]
    assert sorted((r.item, r.reason) for r in rejects) == [
        ("coco:1:7", "bad_annotation"),
        ("coco:2:7", "bad_annotation"),
    ]
    assert {r.detail for r in rejects} == {"annotation id 7 appears 2 times (images 1, 2)"}
    objects, bad = extract_coco_objects(coco, kept, tmp_path, 64)
    assert [o.object_id for o, _ in objects] == ["coco-1-1"] and not bad


def test_coco_rle_that_covers_the_image_is_kept_and_cut(tmp_path):
    full = np.zeros((H, W), np.uint8)
    full[1:-1, 1:-1] = 1
    uncompressed = {"size": [H, W], "counts": [2000, 40, H * W - 2040]}  # sums to h*w: a valid (odd) mask
    anns = [
        _ann(1, segmentation=_rle(_box_mask())),
        _ann(2, segmentation=_rle(full)),
        _ann(3, segmentation=uncompressed),
    ]
    coco, kept, rejects = _filter(_write_coco(tmp_path, anns))
    assert [k.ann_id for k in kept] == [1, 2, 3] and not rejects
    objects, bad = extract_coco_objects(coco, kept[:1], tmp_path, 64)
    assert not bad and objects[0][0].mask_area == 50 * 40


@pytest.mark.parametrize(
    ("segmentation", "problem"),
    [
        ({"size": [H, W], "counts": [2000, 40, H * W]}, f"uncompressed RLE counts sum to {H * W + 2040}, size [{H}, {W}] needs {H * W}"),
        ({"size": [H, W], "counts": [2000, 40, 100]}, f"uncompressed RLE counts sum to 2140, size [{H}, {W}] needs {H * W}"),
        ({"size": [H, W], "counts": [2000, -40, 10040]}, "uncompressed RLE counts hold a negative or non-integer value"),
        ({"size": [H, W], "counts": _rle(_box_mask(H, H))["counts"]}, f"compressed RLE counts sum to {H * H}, size [{H}, {W}] needs {H * W}"),
        ({"size": [H, W], "counts": _rle(_box_mask(W, W))["counts"]}, f"compressed RLE counts sum to {W * W}, size [{H}, {W}] needs {H * W}"),
        ({"size": [H, W], "counts": _rle(_box_mask())["counts"][:-1] + "o"}, "compressed RLE counts string is truncated"),
        ({"size": [H, W], "counts": "ab c"}, "compressed RLE counts string holds a character outside '0'..'o'"),
        ({"size": [50, 60], "counts": _rle(_box_mask(50, 60))["counts"]}, f"RLE size [50, 60] is not image 1's [height, width] [{H}, {W}]"),
        ({"size": [H, W], "counts": 12}, "RLE counts is a int, neither a list nor a string"),
    ],
)  # fmt: skip
def test_coco_rle_that_does_not_cover_its_image_is_bad_segmentation(tmp_path, segmentation, problem):
    path = _write_coco(tmp_path, [_ann(1), _ann(3, segmentation=segmentation)])
    _, kept, rejects = _filter(path)
    assert [k.ann_id for k in kept] == [1]
    (r,) = rejects
    assert (r.item, r.reason) == ("coco:1:3", "bad_segmentation")
    assert r.detail == f"annotation 3 of image 1: {problem}"


def test_segmentation_problem_without_an_image_still_checks_the_rle_against_its_own_size():
    ann = _ann(3, segmentation={"size": [H, W], "counts": [5, 5]})
    assert segmentation_problem(ann) == f"uncompressed RLE counts sum to 10, size [{H}, {W}] needs {H * W}"
    assert segmentation_problem(_ann(3, segmentation=_rle(_box_mask()))) is None


def test_coco_polygon_with_a_non_finite_coordinate_is_bad_segmentation(tmp_path):
    path = _write_coco(tmp_path, [_ann(1), _ann(4, segmentation=[[30, 20, math.nan, 20, 80, 60, 30, 60]])])
    _, kept, rejects = _filter(path)
    (r,) = rejects
    assert [k.ann_id for k in kept] == [1] and (r.item, r.reason) == ("coco:1:4", "bad_segmentation")
    assert r.detail == "annotation 4 of image 1: a polygon holds a non-finite coordinate"


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("bbox", [30, 20, math.nan, 40], "bbox [30, 20, nan, 40] holds a non-finite value"),
        ("bbox", [30, math.inf, 50, 40], "bbox [30, inf, 50, 40] holds a non-finite value"),
        ("bbox", [30, 20, -50, 40], "bbox [30, 20, -50, 40] has a width or height <= 0"),
        ("bbox", [30, 20, 50, 0], "bbox [30, 20, 50, 0] has a width or height <= 0"),
        ("bbox", [30, 20, "50", 40], "bbox [30, 20, '50', 40] holds a non-number"),
        ("area", math.nan, "area nan is not a finite number >= 0"),
        ("area", math.inf, "area inf is not a finite number >= 0"),
        ("area", -2000, "area -2000 is not a finite number >= 0"),
        ("area", "big", "area 'big' is not a finite number >= 0"),
    ],
)
def test_coco_non_finite_or_negative_bbox_or_area_is_bad_annotation(tmp_path, field, value, problem):
    path = _write_coco(tmp_path, [_ann(1), _ann(5, image_id=2) | {field: value}])
    _, kept, rejects = _filter(path)
    assert [k.ann_id for k in kept] == [1]
    (r,) = rejects
    assert (r.item, r.reason) == ("coco:2:5", "bad_annotation")
    assert r.detail == f"annotation 5 of image 2: {problem}"


def test_coco_quarantined_annotations_reach_the_banks_rejects_parquet(tmp_path):
    bad_rle = {"size": [H, W], "counts": [2000, 40, 100]}
    path = _write_coco(
        tmp_path, [_ann(1), _ann(7), _ann(7, image_id=2), _ann(3, segmentation=bad_rle), _ann(5, area=math.nan)]
    )
    cfg = SynthConfig(
        name="coco-only",
        scenes={"kind": "demo", "demo": DemoScenesConfig(num_scenes=1, width=64, height=32)},
        objects=ObjectBankConfig(coco=CocoSourceConfig(annotations=path, images=tmp_path, min_area=500), max_side=64),
    )
    bank = build_object_bank(cfg, tmp_path / "bank")
    got = {(r.stage, r.item, r.reason) for r in read_rejects(bank / REJECTS)}
    assert got == {
        ("coco", "coco:1:7", "bad_annotation"),
        ("coco", "coco:2:7", "bad_annotation"),
        ("coco", "coco:1:3", "bad_segmentation"),
        ("coco", "coco:1:5", "bad_annotation"),
    }


# ---- benchmark layouts --------------------------------------------------------------------------------------------


def _img(path, h=8, w=12):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))


def _lab(path, values=(0, 1, 255), h=8, w=12):
    path.parent.mkdir(parents=True, exist_ok=True)
    lab = np.zeros((h, w), np.uint8)
    for i, v in enumerate(values):
        lab[i] = v
    cv2.imwrite(str(path), lab)


@pytest.mark.parametrize("kind", ["smiyc", "fishyscapes"])
@pytest.mark.parametrize(
    ("image_dir", "label_of"),
    [
        ("images", "labels_masks/{}.png"),
        ("images", "labels_masks/{}_labels_semantic.png"),
        ("original", "labels/{}.png"),
        ("original", "labels_masks/{}.png"),
        ("images", "labels/{}.png"),
    ],
)
def test_smiyc_and_fishyscapes_read_every_common_naming(tmp_path, kind, image_dir, label_of):
    for stem in ("0", "1", "10"):
        _img(tmp_path / image_dir / f"{stem}.png")
        _lab(tmp_path / label_of.format(stem), (0, 1, 255))
    ds = load_benchmark(kind, tmp_path)
    assert [i.item_id for i in ds.items] == ["0", "1", "10"]
    assert [i.label for i in ds.items] == [tmp_path / label_of.format(s) for s in ("0", "1", "10")]
    _, lab = ds.load(ds.items[0])
    assert lab[:3, 0].tolist() == [0, 1, 255]


def test_half_paired_layout_names_the_naming_and_the_unpaired_images(tmp_path):
    for stem in ("1", "2", "3", "4", "7"):
        _img(tmp_path / "images" / f"{stem}.webp")
    for stem in ("1", "2", "3"):
        _lab(tmp_path / "labels_masks" / f"{stem}.png")
    with pytest.raises(FileNotFoundError) as e:
        load_benchmark("smiyc", tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path}: 2 images have no label: ")
    assert "3 of 5 images paired with labels_masks/<stem>.png; no label for images/4.webp, images/7.webp" in msg


def test_two_label_namings_mixed_are_both_named(tmp_path):
    for stem in ("a", "b", "c", "d"):
        _img(tmp_path / "images" / f"{stem}.jpg")
    _lab(tmp_path / "labels_masks" / "a_labels_semantic.png")
    _lab(tmp_path / "labels_masks" / "b_labels_semantic.png")
    _lab(tmp_path / "labels_masks" / "c.png")
    with pytest.raises(FileNotFoundError) as e:
        load_benchmark("fishyscapes", tmp_path)
    msg = str(e.value)
    assert "labels follow more than one naming" in msg
    assert "2 of 4 images paired with labels_masks/<stem>_labels_semantic.png (images/a.jpg, images/b.jpg)" in msg
    assert "1 of 4 images paired with labels_masks/<stem>.png (images/c.jpg)" in msg
    assert "no label for images/d.jpg" in msg and msg.startswith(f"{tmp_path}: 1 images have no label: ")
    _lab(tmp_path / "labels_masks" / "d.png")  # every image labelled now, still under two namings
    with pytest.raises(FileNotFoundError) as e:
        load_benchmark("fishyscapes", tmp_path)
    assert str(e.value) == (
        f"{tmp_path}: every image has a label, but not under one naming: labels follow more than one naming "
        "(rename them to one): 2 of 4 images paired with labels_masks/<stem>.png (images/c.jpg, images/d.jpg); "
        "2 of 4 images paired with labels_masks/<stem>_labels_semantic.png (images/a.jpg, images/b.jpg)"
    )  # in the reader's order of namings: fishyscapes tries labels_masks/<stem>.png before _labels_semantic


def test_a_long_list_of_unpaired_images_is_cut(tmp_path):
    for i in range(12):
        _img(tmp_path / "original" / f"{i:02d}.png")
    _lab(tmp_path / "labels" / "00.png")
    with pytest.raises(FileNotFoundError, match=r"no label for original/01\.png, .*original/08\.png and 3 more"):
        load_benchmark("fishyscapes", tmp_path)


def test_layout_without_an_image_folder_names_both_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no images/ or original/ folder in "):
        load_benchmark("smiyc", tmp_path)


@pytest.mark.skipif(not SHARED_BENCHMARKS.is_dir(), reason=f"{SHARED_BENCHMARKS} not present")
@pytest.mark.parametrize(
    ("kind", "folder", "n"),
    [
        ("smiyc", "smiyc_roadobstacle21_val", 30),
        ("fishyscapes", "fishyscapes_static_val", 30),
        ("fishyscapes", "fishyscapes_laf_val_subset", 34),
    ],
)
def test_real_shared_benchmark_copies_read_with_their_own_kind(kind, folder, n):
    root = SHARED_BENCHMARKS / folder
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    ds = load_benchmark(kind, root)
    assert len(ds) == n and all(i.label.parent.name == "labels_masks" for i in ds.items)
    assert all(i.label.name == f"{i.item_id}.png" for i in ds.items)
    # the same pairs as the copy's manifest.csv
    manifest = {r.split(",")[0] for r in (root / "manifest.csv").read_text().splitlines()[1:] if r}
    assert {str(i.image.relative_to(root)) for i in ds.items} == manifest
    image, label = ds.load(ds.items[0])
    assert label.shape == image.shape[:2] and set(np.unique(label).tolist()) <= {0, 1, 255}
    assert (label == 1).any()  # id 0 of every copy has anomaly pixels, still 1 after conversion
