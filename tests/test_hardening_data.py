"""Hardening of the data path against odd inputs: a scene too small for any object, symbolic-link loops and broken
links among the object photos, a training crop larger than the shard images, and the demo's closed-set segmenter
kept inside ``--out-dir``. Every input is written here, tiny, into ``tmp_path``."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from schemas import MaskGateConfig, PlacementConfig
from tasks.imageio import BadInputError

# ---- 1. a scene too small to hold any object --------------------------------------------------------------------


def test_a_tiny_scene_is_too_small_not_no_placement():
    from tasks.synth.placement import NoPlacementError, min_scene_size, place_objects

    cfg = PlacementConfig()  # min_height_px 16, max_height_frac 0.45: the smallest object needs 36 rows
    assert min_scene_size(cfg) == (16, 36)
    for h, w in [(1, 1), (35, 400), (200, 15)]:
        label = np.zeros((h, w), np.uint8)  # all road
        with pytest.raises(BadInputError, match=rf"scene {w}x{h} px is too small to place an object") as e:
            place_objects(label, [("o", "box", 10, 10)], 0.0, 1.2, cfg, np.random.default_rng(0))
        assert e.value.reason == "too_small", f"{w}x{h} scene: reason {e.value.reason!r}, expected 'too_small'"
        assert "needs at least 16x36 px" in str(e.value), str(e.value)
        assert isinstance(e.value, NoPlacementError)  # callers that catch NoPlacementError still catch it
    # exactly the minimum passes the size check (and may place the object)
    place_objects(np.zeros((36, 16), np.uint8), [("o", "box", 4, 10)], 0.0, 1.2, cfg, np.random.default_rng(0))


def _objects(tmp_path):
    from tasks.synth.photos import objects_from_files
    from tests.helpers import write_object_photos

    objs, rejects = objects_from_files(write_object_photos(tmp_path / "photos", 2), None, MaskGateConfig(), 64)
    assert objs and not rejects, rejects
    return objs


def test_a_1x1_scene_is_quarantined_as_too_small_and_the_others_are_made(tmp_path):
    from schemas import DemoScenesConfig, SynthConfig
    from tasks.scenes.base import SceneRef
    from tasks.scenes.cityscapes import index_cityscapes
    from tasks.scenes.demo import write_demo_scenes
    from tasks.synth.compositor import Compositor
    from tasks.synth.plan import plan_samples
    from tasks.synth.writer import synthesize_shard

    root = write_demo_scenes(tmp_path / "cs", DemoScenesConfig(num_scenes=1, width=256, height=128), 0)
    (good,), _ = index_cityscapes(root, "train")
    cv2.imwrite(str(tmp_path / "tiny.png"), np.full((1, 1, 3), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "tiny_label.png"), np.zeros((1, 1), np.uint8))  # trainId 0: road
    tiny = SceneRef("tiny", tmp_path / "tiny.png", tmp_path / "tiny_label.png", "labelTrainIds")
    cfg = SynthConfig(
        name="t",
        num_samples=2,
        scenes={"kind": "demo"},
        placement=PlacementConfig(min_height_px=6, search_stride=2, default_height_m=(0.5, 1.0)),
    )
    comp = Compositor(cfg, _objects(tmp_path))
    scenes = [good, tiny]
    plans = plan_samples([s.scene_id for s in scenes], 2, 0)
    record = synthesize_shard(tmp_path / "shards", 0, plans, scenes, comp)
    (reject,) = record["rejects"]
    assert reject["reason"] == "too_small", f"1x1 scene quarantined as {reject['reason']!r}: {reject['detail']}"
    assert "tiny.png" in reject["item"] and "scene 1x1 px is too small" in reject["detail"], reject
    assert "needs at least 6x14 px" in reject["detail"], reject["detail"]
    assert record["samples"] == 1  # the good scene's sample is made


# ---- 2. symbolic-link loops and broken links among the object photos --------------------------------------------


def _photos_with_bad_links(tmp_path):
    from tests.helpers import write_object_photos

    files = write_object_photos(tmp_path / "photos", 2)
    d = files.root
    os.symlink("loop_b.png", d / "loop_a.png")  # a -> b -> a
    os.symlink("loop_a.png", d / "loop_b.png")
    os.symlink("self.png", d / "self.png")  # a link to itself
    os.symlink("nowhere.png", d / "broken.png")  # a link to nothing
    return files


def test_link_loops_and_broken_links_are_quarantined_and_the_other_photos_kept(tmp_path):
    from schemas import ObjectBankConfig, SynthConfig
    from tasks.object_bank import read_object_bank
    from tasks.shards import read_rejects
    from tasks.synth.pipeline import build_object_bank

    files = _photos_with_bad_links(tmp_path)
    cfg = SynthConfig(name="t", scenes={"kind": "demo"}, objects=ObjectBankConfig(files=[files], max_side=64))
    bank = build_object_bank(cfg, tmp_path / "bank")  # the bank's identity stats every photo: no OSError
    assert len(read_object_bank(bank)) == 2, "the two real photos are in the bank"
    rejects = {os.path.basename(r.item): r for r in read_rejects(bank / "rejects.parquet")}
    assert set(rejects) == {"loop_a.png", "loop_b.png", "self.png", "broken.png"}, rejects
    for name, r in rejects.items():
        assert (r.stage, r.reason) == ("files", "unreadable"), f"{name}: {r}"
        assert str(files.root / name) in r.detail, f"{name}: detail does not name the path: {r.detail}"
    assert "symbolic link loop" in rejects["loop_a.png"].detail, rejects["loop_a.png"].detail
    assert "symbolic link loop" in rejects["self.png"].detail, rejects["self.png"].detail
    assert "broken symbolic link" in rejects["broken.png"].detail and "nowhere.png" in rejects["broken.png"].detail


def test_a_folder_of_only_bad_links_names_them(tmp_path):
    from schemas import FilesSourceConfig
    from tasks.synth.photos import list_photo_files

    d = tmp_path / "photos"
    d.mkdir()
    os.symlink("x.png", d / "x.png")
    with pytest.raises(FileNotFoundError, match=r"no readable photos .*: 1 unreadable \(x.png: symbolic link loop"):
        list_photo_files(FilesSourceConfig(root=d, class_name="box", patterns=["*.png"]))


# ---- 3. a training crop larger than the shard images -------------------------------------------------------------


def _version(path, sizes):
    """A complete version whose manifest lists one sample per (height, width) of ``sizes`` (the check reads only
    the manifest: it runs before any shard is opened)."""
    from data_manifests.parquet import SAMPLE_SCHEMA, SHARD_SCHEMA
    from tasks.sample_format import DATASET, SAMPLES, SHARDS
    from tasks.shards import write_json_atomic, write_table, write_tar_shard

    path.mkdir(parents=True)
    write_tar_shard(path / "shard-000000.tar", [])
    rows = [
        {"key": f"k{i:03d}", "shard": "shard-000000.tar", "height": h, "width": w} for i, (h, w) in enumerate(sizes)
    ]
    write_table(path / SAMPLES, rows, SAMPLE_SCHEMA)
    write_table(path / SHARDS, [{"shard": "shard-000000.tar", "sha256": "0" * 64, "samples": len(rows)}], SHARD_SCHEMA)
    write_json_atomic(path / DATASET, {"samples": len(rows)})
    return path


def test_a_crop_larger_than_the_shard_images_is_refused_naming_both_sizes(tmp_path):
    from tasks.train.data import CropTooLargeError, check_crop

    version = _version(tmp_path / "v0001", [(64, 128)] * 10)
    with pytest.raises(CropTooLargeError) as e:
        check_crop(version, (2048, 4096))
    msg = str(e.value)
    assert msg == (
        f"crop 2048x4096 (H x W) is larger than the shard images 64x128 in {version}: the rest of every crop would "
        f"be void padding; set crop to at most 64x128 (--set crop=[64,128])"
    ), msg
    assert "\n" not in msg and isinstance(e.value, BadInputError) and e.value.reason == "crop_too_large"
    with pytest.raises(
        CropTooLargeError, match=r"crop 65x16 \(H x W\) .* set crop to at most 64x16 \(--set crop=\[64,16\]\)"
    ):
        check_crop(version, (65, 16))  # one side too large is enough; the advice keeps the side that fits
    check_crop(version, (64, 128))  # the whole image: fine
    check_crop(version, (32, 32))
    mixed = _version(tmp_path / "v0002", [(64, 128), (96, 64)])  # any image as large as the crop on each side
    check_crop(mixed, (96, 128))
    with pytest.raises(CropTooLargeError, match=r"larger than the largest shard images \(96x128\)"):
        check_crop(mixed, (97, 128))


def test_training_with_a_crop_larger_than_the_images_stops_before_anything_is_written(tmp_path):
    from tasks.train.data import CropTooLargeError
    from tasks.train.pretrain import pretrain_closed_set
    from tasks.train.trainer import train_method
    from tests.helpers import tiny_train_config

    version = _version(tmp_path / "v0001", [(64, 128)] * 10)
    cfg = tiny_train_config("eel").model_copy(update={"crop": (2048, 4096)})
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(CropTooLargeError, match=r"crop 2048x4096 \(H x W\) is larger than the shard images 64x128"):
        train_method(cfg, version, tmp_path / "out", progress=False, log=lambda m: None)
    with pytest.raises(CropTooLargeError, match=r"crop 2048x4096"):  # the demo pre-training checks it too
        pretrain_closed_set(cfg, version, tmp_path / "seg" / "s.pt", progress=False, log=lambda m: None)
    assert sorted(tmp_path.rglob("*")) == before, "a refused run left files behind"


# ---- 4. the demo's closed-set segmenter stays inside --out-dir --------------------------------------------------


def _tree(*roots):
    return {p for r in roots for p in r.rglob("*")}


def test_the_flow_keeps_the_segmenter_inside_an_explicit_out_dir_and_shares_it_by_default(tmp_path):
    from flows.train import segmenters_dir

    assert segmenters_dir(tmp_path / "x", explicit=True) == tmp_path / "x" / "segmenters"
    # the default out dirs <run_dir>/train/<method>-<version> share <run_dir>/train/segmenters
    assert (
        segmenters_dir(tmp_path / "run" / "train" / "eel-v1", explicit=False)
        == tmp_path / "run" / "train" / "segmenters"
    )


def test_training_with_an_out_dir_writes_nothing_outside_it_and_reuses_its_segmenter(trained_eel, tmp_path, capsys):
    import yaml

    from flows.train import train_direct
    from tests.helpers import tiny_train_config

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(tiny_train_config("eel").model_dump(mode="json") | {"device": "cpu"}))
    out = tmp_path / "x"
    before = _tree(tmp_path, trained_eel.root)
    summary = train_direct(str(config), trained_eel.version, str(out), "eel", {"max_steps": 2, "eval_every": 2}, True)
    outside = sorted(str(p) for p in _tree(tmp_path, trained_eel.root) - before if p != out and out not in p.parents)
    assert not outside, f"training with out_dir {out} wrote outside it: {outside}"
    (seg,) = (out / "segmenters").glob("espnetv2_demo-*.pt")
    assert summary["out_dir"] == str(out)
    # a second run into the same out dir reuses the segmenter pre-trained there
    capsys.readouterr()
    train_direct(str(config), trained_eel.version, str(out), "eel", {"max_steps": 3, "eval_every": 3}, True)
    assert f"closed-set segmenter: reusing {seg}" in capsys.readouterr().out
