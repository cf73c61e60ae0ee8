"""The bad-input corpus: each case is built here (binary files are written by the tests into tmp folders) and
asserts that the message names the file and the problem, that nothing partial is visible, and that the good
items of the same run are kept."""

from __future__ import annotations

import json
import os
import pickle
import sys
import tarfile

import cv2
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from data_manifests.parquet import SAMPLE_SCHEMA, SHARD_SCHEMA
from schemas import CocoSourceConfig, DemoScenesConfig, FilesSourceConfig, MaskGateConfig
from tasks.imageio import BadInputError, write_gray
from tasks.labels import label_ids_to_train_ids
from tasks.sample_format import DATASET, SAMPLES, SHARDS
from tasks.scenes import load_scene, scene_identity
from tasks.scenes.cityscapes import index_cityscapes
from tasks.scenes.demo import write_demo_scenes
from tasks.shards import write_json_atomic, write_table, write_tar_shard
from tasks.shardset import ShardDataError
from tasks.synth.validate import validate_shard_set
from tasks.train.trainer import train_method
from tests.helpers import tiny_train_config


def _cli(*args):
    """``anomalyforge`` as a user runs it (``flows.cli.main``): (exit code, stdout, stderr)."""
    import subprocess

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env, timeout=600)
    return r.returncode, r.stdout, r.stderr


# ---- 1. train on an empty shard set ---------------------------------------------------------------------------


def _empty_version(path):
    write_tar_shard(path / "shard-000000.tar", [])
    write_table(path / SAMPLES, [], SAMPLE_SCHEMA)
    row = {"shard": "shard-000000.tar", "sha256": "0" * 64, "samples": 0, "bytes": 0}
    write_table(path / SHARDS, [row], SHARD_SCHEMA)
    write_json_atomic(path / DATASET, {"samples": 0})
    return path


def test_training_on_an_empty_version_stops_naming_it_and_leaves_no_out_dir(tmp_path):
    version = _empty_version(tmp_path / "v0001")
    out = tmp_path / "out"
    with pytest.raises(ShardDataError, match=r"v0001: 0 samples, none of them for training"):
        train_method(tiny_train_config("eel"), version, out, progress=False, log=lambda m: None)
    assert not out.exists()  # no config.yaml left to look like a run


def test_an_empty_validation_split_is_named_before_training(trained_eel, tmp_path):
    cfg = tiny_train_config("eel").model_copy(update={"val_fraction": 1e-9})
    with pytest.raises(
        ShardDataError, match=r"run/versions/v0001-\w+: the held-in validation split is empty \(12 samples"
    ):
        train_method(cfg, trained_eel.version, tmp_path / "out", progress=False, log=lambda m: None)


# ---- 2, 4, 5. scenes: trainIds under labelIds names, fixed scene files, unknown label values -------------------


def _scenes(root, n=3):
    return write_demo_scenes(root, DemoScenesConfig(num_scenes=n, width=256, height=128), 0)


def _as_train_ids(root):
    for p in sorted(root.rglob("*_gtFine_labelIds.png")):
        write_gray(p, label_ids_to_train_ids(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)))


def test_train_ids_under_label_ids_names_are_detected(tmp_path):
    root = _scenes(tmp_path / "cs", 1)
    _as_train_ids(root)
    (ref,), _ = index_cityscapes(root, "train")
    with pytest.raises(BadInputError, match=r"_gtFine_labelIds.png: looks like trainIds .* are 0") as e:
        load_scene(ref)
    assert e.value.reason == "labels_look_like_trainids"


def test_unknown_label_values_are_counted_or_quarantined(tmp_path):
    root = _scenes(tmp_path / "cs", 1)
    (ref,), _ = index_cityscapes(root, "train")
    label = cv2.imread(str(ref.label), cv2.IMREAD_UNCHANGED)
    few = label.copy()
    few[0, :10] = 250  # 10 of 32768 pixels: recorded, made void
    write_gray(ref.label, few)
    scene = load_scene(ref)
    assert scene.unknown_label_pixels == 10 and (scene.label[0, :10] == 255).all()
    many = label.copy()
    many[:20] = 250
    write_gray(ref.label, many)
    with pytest.raises(BadInputError, match=r"labelIds.png: 5120 pixels \(15.62%\) hold values \[250\]") as e:
        load_scene(ref)
    assert e.value.reason == "bad_label_values"


def test_scene_identity_follows_the_scene_files(tmp_path):
    root = _scenes(tmp_path / "cs", 2)
    refs, _ = index_cityscapes(root, "train")
    before = scene_identity(refs)
    assert scene_identity(index_cityscapes(root, "train")[0]) == before  # stable when nothing changed
    img = cv2.imread(str(refs[0].image))
    cv2.imwrite(str(refs[0].image), img[:, ::-1])  # a replaced image (same name)
    assert scene_identity(index_cityscapes(root, "train")[0]) != before


@pytest.mark.slow
def test_a_run_without_samples_fails_unpublished_and_fixed_scenes_make_a_new_version(tmp_path):
    """Through the CLI: the trainIds mix-up quarantines every sample, the run fails naming the reason, LATEST
    does not move; once the labels are fixed the same command makes and publishes a version (not "unchanged")."""
    root = _scenes(tmp_path / "cs", 2)
    cfg = {
        "name": "bad",
        "num_samples": 4,
        "scenes": {"kind": "cityscapes", "root": str(root), "split": "train"},
        "objects": {"demo_objects": False, "files": [], "max_side": 64},
        "placement": {"min_height_px": 6, "search_stride": 2},
        "shards": {"samples_per_shard": 2},
        "workers": 1,
    }
    from tests.helpers import write_object_photos

    files = write_object_photos(tmp_path / "photos")
    cfg["objects"]["files"] = [json.loads(files.model_dump_json())]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    good_labels = {p: p.read_bytes() for p in root.rglob("*_gtFine_labelIds.png")}
    _as_train_ids(root)
    code, out, err = _cli("synth", "--config", str(tmp_path / "c.yaml"), "--run-dir", str(run))
    assert code == 1, out[-2000:] + err[-2000:]
    (last,) = [line for line in err.splitlines() if line.startswith("error: ")]  # (Prefect logs the failed run too)
    assert "0 of 4 samples were made" in last
    assert (
        "composite/labels_look_like_trainids (4 of 4)" in last and "_gtFine_labelIds.png: looks like trainIds" in last
    )
    assert not (run / "LATEST").exists() and not (run / "shards").exists()
    for p, data in good_labels.items():
        p.write_bytes(data)
    code, out, err = _cli("synth", "--config", str(tmp_path / "c.yaml"), "--run-dir", str(run))
    assert code == 0, out[-2000:] + err[-2000:]
    assert "(new, parent None)" in out and (run / "LATEST").is_file()
    summary = json.loads((run / "shards" / DATASET).read_text())
    assert summary["samples"] == 4 and len(summary["scenes_hash"]) == 16


# ---- 3. COCO: one malformed annotation ---------------------------------------------------------------------------


def test_a_malformed_coco_polygon_is_quarantined_and_the_rest_go_on(tmp_path):
    from tasks.synth.coco import extract_coco_objects, filter_coco_instances, load_coco

    img = np.full((100, 120, 3), 200, np.uint8)
    cv2.imwrite(str(tmp_path / "a.jpg"), img)
    good = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 20, 50, 40], "area": 2000, "iscrowd": 0}
    good["segmentation"] = [[30, 20, 80, 20, 80, 60, 30, 60]]
    bad = good | {"id": 2, "segmentation": [[30, 20, 80, 20]]}  # 2 points: pycocotools raises TypeError
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 120, "height": 100}],
        "categories": [{"id": 1, "name": "dog"}],
        "annotations": [good, bad],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    coco = load_coco(tmp_path / "ann.json")
    kept, rejects = filter_coco_instances(coco, CocoSourceConfig(annotations=tmp_path / "ann.json", images=tmp_path))
    assert [k.ann_id for k in kept] == [1]
    (r,) = rejects
    assert r.reason == "bad_segmentation" and r.item == "coco:1:2"
    assert "annotation 2 of image 1: a polygon needs >= 3 points (6 numbers, an even count), got 4" in r.detail
    objects, _ = extract_coco_objects(coco, kept, tmp_path, 64)
    assert [o.object_id for o, _ in objects] == ["coco-1-1"]


# ---- 6. a model file that is not a model -------------------------------------------------------------------------


@pytest.fixture
def eval_yaml(trained_eel, tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"model": "x", "datasets": [{"kind": "shards", "root": trained_eel.version}]}))
    return path


@pytest.mark.slow
def test_eval_names_a_model_file_that_is_no_model(eval_yaml, trained_eel, tmp_path):
    (tmp_path / "notes.txt").write_text("these are not weights\n")
    with open(tmp_path / "raw.pkl", "wb") as f:
        pickle.dump({"a": 1}, f)
    torch.save({k: v for k, v in torch.load(trained_eel.segmenter, weights_only=True).items()}, tmp_path / "sd.pt")
    expected = {
        "notes.txt": r"notes.txt: a text file, neither a method checkpoint .* nor a TorchScript file",
        "raw.pkl": r"raw.pkl: a Python pickle, not a torch checkpoint \(torch.save / TorchScript / a method model.pt\)",
        "sd.pt": r"sd.pt is a plain state dict .* --segmenter NAME \(one of espnetv2,",
    }
    for name, pattern in expected.items():
        code, out, err = _cli(
            "eval", "--config", str(eval_yaml), "--model", str(tmp_path / name), "--out-dir", str(tmp_path / "o")
        )
        assert code == 1 and "Traceback" not in err, err[-2000:]
        assert err.startswith("error: ") and len(err.splitlines()) <= 3, err
        assert __import__("re").search(pattern, err), (name, err)
    assert not (tmp_path / "o").exists()  # refused before anything was written


# ---- 7. validate: unsafe and dotted member names -----------------------------------------------------------------


def test_validate_names_unsafe_and_dotted_members_and_never_extracts_them(tmp_path):
    d = tmp_path / "set"
    d.mkdir()
    shard = d / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for name in ("../../evil.txt", "/abs.txt", "a.b.image.jpg", "sub/k.label.png"):
            data = b"x"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
        link = tarfile.TarInfo("k.mask.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    from tasks.shards import sha256_of

    write_table(d / SHARDS, [{"shard": shard.name, "sha256": sha256_of(shard), "samples": 0, "bytes": 1}], SHARD_SCHEMA)
    write_table(d / SAMPLES, [], SAMPLE_SCHEMA)
    _, problems = validate_shard_set(d)
    text = "\n".join(problems)
    assert "shard-000000.tar: unsafe_member '../../evil.txt' (a path outside the shard)" in text
    assert "shard-000000.tar: unsafe_member '/abs.txt' (a path outside the shard)" in text
    assert "shard-000000.tar: unsafe_member 'k.mask.png' (a link)" in text
    assert "shard-000000.tar: key_has_dot 'a.b.image.jpg'" in text
    assert "shard-000000.tar: key_has_slash 'sub/k.label.png'" in text
    assert "missing" not in text and "''" not in text
    assert not (tmp_path.parent / "evil.txt").exists() and not (d / "evil.txt").exists()


def test_validate_says_a_missing_directory_does_not_exist(tmp_path):
    assert validate_shard_set(tmp_path / "nope") == (0, [f"{tmp_path / 'nope'}: the directory does not exist"])


# ---- 8. one bad benchmark among good ones ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_bad_benchmark_keeps_the_others_results_and_fails_at_the_end(trained_eel, tmp_path):
    from flows.cli import app

    bad = tmp_path / "bad"
    (bad / "original").mkdir(parents=True)
    (bad / "labels").mkdir()
    cv2.imwrite(str(bad / "original" / "x.png"), np.zeros((32, 48, 3), np.uint8))
    cv2.imwrite(str(bad / "labels" / "x.png"), np.zeros((16, 48), np.uint8))  # wrong size
    datasets = [
        {"kind": "shards", "root": trained_eel.version, "name": "good"},
        {"kind": "fishyscapes", "root": str(bad)},
    ]
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({"model": str(trained_eel.model), "datasets": datasets}))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["eval", "--config", str(tmp_path / "e.yaml"), "--out-dir", str(out)])
    assert res.exit_code != 0
    assert "1 of 2 datasets could not be evaluated" in str(res.exception)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["datasets"]["good"]["auroc"] <= 1
    assert "labels/x.png: label is (48, 16), image is (48, 32)" in metrics["datasets"]["bad"]["error"]
    assert "**bad failed:** BadInputError:" in (out / "report.md").read_text()


# ---- smaller ones ------------------------------------------------------------------------------------------------


def test_config_errors_are_field_messages_with_the_file_name(tmp_path):
    (tmp_path / "t.yaml").write_text("method: {name: eel, lam: -1}\nbatch_size: 0\n")
    code, out, err = _cli("train", "--config", str(tmp_path / "t.yaml"), "--shards", str(tmp_path))
    assert code == 1 and "Traceback" not in err
    assert f"error: {tmp_path / 't.yaml'}: 2 problem(s) in the config:" in err
    assert "method.lam: Input should be greater than or equal to 0" in err
    assert "batch_size: Input should be greater than or equal to 2" in err


def test_the_program_start_switches_prefect_telemetry_off_unless_the_user_chose(monkeypatch):
    from tasks.runtime import configure_process

    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    configure_process()
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")
    configure_process()
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"


def test_the_same_photo_under_two_classes_is_one_object_and_a_named_reject(tmp_path):
    from tasks.synth.photos import objects_from_files

    img = np.full((80, 60, 3), 235, np.uint8)
    img[20:60, 15:45] = (30, 90, 160)
    mask = np.zeros((80, 60), np.uint8)
    mask[20:60, 15:45] = 255
    for cls in ("box", "crate"):
        (tmp_path / cls).mkdir()
        cv2.imwrite(str(tmp_path / cls / "p.png"), img)
        cv2.imwrite(str(tmp_path / cls / "p.mask.png"), mask)
    gate = MaskGateConfig(min_contrast=0)
    objects, rejects = objects_from_files(FilesSourceConfig(root=tmp_path, patterns=["*.png"]), None, gate, 64)
    assert [o.record.class_name for o in objects] == ["box"]
    (r,) = rejects
    assert r.reason == "duplicate_photo" and r.item == str(tmp_path / "crate" / "p.png")
    assert (
        f"same photo as {tmp_path / 'box' / 'p.png'} (class 'box'); this copy's class 'crate' is not used" == r.detail
    )
