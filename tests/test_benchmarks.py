"""Tiny copies of every benchmark layout, written by the tests."""

import cv2
import numpy as np
import pytest

from tasks.eval.benchmarks import load_benchmark
from tasks.imageio import BadInputError


def _img(path, h=8, w=12):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))


def _lab(path, values, h=8, w=12):
    path.parent.mkdir(parents=True, exist_ok=True)
    lab = np.zeros((h, w), np.uint8)
    for i, v in enumerate(values):
        lab[i] = v
    cv2.imwrite(str(path), lab)


def test_fishyscapes(tmp_path):
    _img(tmp_path / "original/0001.png")
    _lab(tmp_path / "labels/0001.png", [0, 1, 255])
    ds = load_benchmark("fishyscapes", tmp_path, name="fs_laf")
    img, lab = ds.load(ds.items[0])
    assert ds.name == "fs_laf" and img.shape == (8, 12, 3) and set(np.unique(lab)) == {0, 1, 255}


def test_road_anomaly_original_maps_2_to_anomaly(tmp_path):
    _img(tmp_path / "frames/animals01.jpg")
    _lab(tmp_path / "frames/animals01.labels/labels_semantic.png", [0, 2, 2])
    ds = load_benchmark("road_anomaly", tmp_path)
    _, lab = ds.load(ds.items[0])
    assert lab[0].max() == 0 and (lab[1:3] == 1).all()


def test_road_anomaly_preprocessed(tmp_path):
    _img(tmp_path / "original/a.jpg")
    _lab(tmp_path / "labels/a.png", [1])
    ds = load_benchmark("road_anomaly_pre", tmp_path)
    assert ds.load(ds.items[0])[1][0].tolist() == [1] * 12


def test_smiyc(tmp_path):
    _img(tmp_path / "images/validation0000.jpg")
    _lab(tmp_path / "labels_masks/validation0000_labels_semantic.png", [0, 1, 255])
    ds = load_benchmark("smiyc", tmp_path)
    assert ds.items[0].item_id == "validation0000"
    assert set(np.unique(ds.load(ds.items[0])[1])) == {0, 1, 255}


def test_lost_and_found_train_ids(tmp_path):
    _img(tmp_path / "leftImg8bit/test/02_Hanns/02_Hanns_000000_000100_leftImg8bit.png")
    _lab(tmp_path / "gtCoarse/test/02_Hanns/02_Hanns_000000_000100_gtCoarse_labelTrainIds.png", [0, 1, 2, 5])
    ds = load_benchmark("lost_and_found", tmp_path)
    _, lab = ds.load(ds.items[0])
    assert ds.items[0].item_id == "02_Hanns_000000_000100"
    assert lab[:4, 0].tolist() == [255, 0, 1, 1]


def test_folder_manifest_with_conditions(tmp_path):
    _img(tmp_path / "imgs/x.png")
    _lab(tmp_path / "labs/x.png", [1])
    (tmp_path / "manifest.csv").write_text("image,label,condition\nimgs/x.png,labs/x.png,Fog\n")
    ds = load_benchmark("folder", tmp_path)
    assert ds.items[0].condition == "fog"
    (tmp_path / "manifest.csv").write_text("image,label,condition\nimgs/x.png,labs/x.png,hail\n")
    with pytest.raises(ValueError, match="unknown condition 'hail'"):
        load_benchmark("folder", tmp_path)


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="original"):
        load_benchmark("fishyscapes", tmp_path)
    _img(tmp_path / "original/0001.png")
    with pytest.raises(FileNotFoundError, match="1 images have no label"):
        load_benchmark("fishyscapes", tmp_path)
    _lab(tmp_path / "labels/0001.png", [7])
    ds = load_benchmark("fishyscapes", tmp_path)
    with pytest.raises(BadInputError, match="unexpected label values"):
        ds.load(ds.items[0])
    with pytest.raises(ValueError, match="unknown benchmark 'nope'; registered: shards"):
        load_benchmark("nope", tmp_path)
