import json
import math

import cv2
import numpy as np
import pytest

from tasks.imageio import BadInputError
from tasks.scenes import camera_height, horizon_from_camera, load_scene
from tasks.scenes.cityscapes import index_cityscapes
from tests.helpers import shared_or_skip


def _write_frame(root, sid="aachen_000000_000019", split="train", size=(64, 32), label_size=None, camera=None):
    city = sid.split("_")[0]
    img_dir = root / "leftImg8bit" / split / city
    gt_dir = root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    w, h = size
    cv2.imwrite(str(img_dir / f"{sid}_leftImg8bit.png"), np.full((h, w, 3), 100, np.uint8))
    lw, lh = label_size or size
    lab = np.full((lh, lw), 23, np.uint8)  # sky
    lab[lh // 2 :] = 7  # road
    cv2.imwrite(str(gt_dir / f"{sid}_gtFine_labelIds.png"), lab)
    if camera:
        cam_dir = root / "camera" / split / city
        cam_dir.mkdir(parents=True, exist_ok=True)
        (cam_dir / f"{sid}_camera.json").write_text(json.dumps(camera))


def test_reader_converts_label_ids_to_train_ids(tmp_path):
    _write_frame(tmp_path)
    refs, rejects = index_cityscapes(tmp_path)
    assert rejects == [] and len(refs) == 1
    scene = load_scene(refs[0])
    assert scene.image.shape == (32, 64, 3)
    assert set(np.unique(scene.label)) == {0, 10}  # road, sky
    assert scene.camera is None


def test_missing_label_is_rejected_with_its_path(tmp_path):
    _write_frame(tmp_path)
    _write_frame(tmp_path, sid="aachen_000001_000019")
    (tmp_path / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png").unlink()
    refs, rejects = index_cityscapes(tmp_path)
    assert [r.scene_id for r in refs] == ["aachen_000000_000019"]
    assert rejects[0].reason == "missing_label" and "aachen_000001_000019" in rejects[0].item


def test_empty_or_wrong_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="leftImg8bit/train"):
        index_cityscapes(tmp_path)


def test_label_of_wrong_size_names_the_file(tmp_path):
    _write_frame(tmp_path, label_size=(32, 16))
    refs, _ = index_cityscapes(tmp_path)
    with pytest.raises(BadInputError, match="labelIds.png: label is 32x16 but image"):
        load_scene(refs[0])


def test_corrupt_image_names_the_file(tmp_path):
    _write_frame(tmp_path)
    refs, _ = index_cityscapes(tmp_path)
    refs[0].image.write_bytes(b"\x89PNG not really")
    with pytest.raises(BadInputError, match="leftImg8bit.png: not a decodable image"):
        load_scene(refs[0])


def test_horizon_from_camera_formula():
    cam = {"intrinsic": {"fy": 2000.0, "v0": 500.0}, "extrinsic": {"pitch": 0.05, "z": 1.3}}
    # v0 + fy * tan(-pitch) at 1024 rows, then scaled to the image height
    assert horizon_from_camera(cam, 1024) == pytest.approx(500.0 + 2000.0 * math.tan(-0.05))
    assert horizon_from_camera(cam, 512) == pytest.approx((500.0 + 2000.0 * math.tan(-0.05)) / 2)
    assert camera_height(cam, 1.0) == 1.3 and camera_height(None, 1.22) == 1.22


def test_real_cityscapes_sample():
    root = shared_or_skip("cityscapes_sample")
    refs, rejects = index_cityscapes(root, split="val")
    assert [r.scene_id for r in refs] == ["frankfurt_000000_000294"] and not rejects
    scene = load_scene(refs[0])
    ref_train = cv2.imread(
        str(root / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png"), cv2.IMREAD_UNCHANGED
    )
    # our labelIds -> trainIds conversion agrees with the official trainIds file; the two shrunk files
    # were resampled separately upstream, so 77 boundary pixels of 32768 differ
    assert (scene.label == ref_train).mean() > 0.995
    assert (scene.label == 0).mean() > 0.1  # there is road to place objects on
