"""Trained methods and frozen segmenters on the benchmark layouts: `anomalyforge eval --model` reads what the file
is, runs at the configured resolution, and its metrics equal those computed directly from the same score maps."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch

from schemas import BenchmarkConfig, EvalConfig
from tasks.checkpoints import load_method, read_checkpoint
from tasks.eval.benchmarks import load_benchmark
from tasks.eval.evaluate import load_eval_model, post_hoc
from tasks.labels import to_eval_labels
from tasks.scoring import run_size
from tests.helpers import eval_cli, held_in_samples, reference


def test_run_size_keeps_the_aspect_and_rounds_to_the_network():
    assert run_size((720, 1280), 16, input_width=1024) == (576, 1024)  # RoadAnomaly at 1024 px wide
    assert run_size((1024, 2048), 8, input_width=1000) == (496, 1000)
    assert run_size((720, 1280), 16) == (720, 1280)
    assert run_size((720, 1280), 16, input_size=(640, 360)) == (360, 640)
    one = [BenchmarkConfig(kind="fishyscapes", root="x")]
    with pytest.raises(ValueError, match="not both"):
        EvalConfig(model="m.pt", datasets=one, input_width=512, input_size=(512, 256))
    with pytest.raises(ValueError, match="datasets"):
        EvalConfig(model="m.pt", datasets=[])


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img)
    assert ok


def _write_layouts(root, samples) -> list[dict]:
    """The same images and labels in every file layout the readers know, each in its own label encoding."""
    rows = ["image,label,condition"]
    for k, (_, img, lab) in enumerate(samples):
        stem = f"img{k:03d}"
        for kind in ("fishyscapes", "road_anomaly_pre"):
            _write(root / kind / "original" / f"{stem}.png", img)
            _write(root / kind / "labels" / f"{stem}.png", lab)
        ra = np.select([lab == 0, lab == 1], [0, 2], 7).astype(np.uint8)  # original RoadAnomaly: 2 = anomaly
        _write(root / "road_anomaly" / "frames" / f"{stem}.png", img)
        _write(root / "road_anomaly" / "frames" / f"{stem}.labels" / "labels_semantic.png", ra)
        _write(root / "smiyc" / "images" / f"{stem}.png", img)
        _write(root / "smiyc" / "labels_masks" / f"{stem}_labels_semantic.png", lab)
        laf = np.select([lab == 0, lab == 1], [1, 3], 0).astype(np.uint8)  # LostAndFound: 1 free space, >= 2 obstacle
        _write(root / "laf" / "leftImg8bit" / "test" / "city" / f"{stem}_leftImg8bit.png", img)
        _write(root / "laf" / "gtCoarse" / "test" / "city" / f"{stem}_gtCoarse_labelTrainIds.png", laf)
        _write(root / "folder" / "images" / f"{stem}.png", img)
        _write(root / "folder" / "labels" / f"{stem}.png", lab)
        rows.append(f"images/{stem}.png,labels/{stem}.png,{'fog' if k % 2 else 'clear'}")
    (root / "folder" / "manifest.csv").write_text("\n".join(rows) + "\n")
    kinds = {"fishyscapes": "fishyscapes", "road_anomaly_pre": "road_anomaly_pre", "road_anomaly": "road_anomaly"}
    kinds |= {"smiyc": "smiyc", "laf": "lost_and_found", "folder": "folder"}
    return [{"kind": kind, "root": str(root / d), "name": d} for d, kind in kinds.items()]


@pytest.mark.slow
def test_a_trained_method_on_every_benchmark_layout_equals_direct_scoring(trained_eel, tmp_path):
    samples = held_in_samples(trained_eel.version)
    assert len(samples) >= 2
    datasets = _write_layouts(tmp_path / "bench", samples)
    output, metrics = eval_cli(tmp_path, datasets, "--model", str(trained_eel.model))
    assert "method, score eel" in output and "| fs_" not in output
    # direct: the loaded method's own score (EEL, α from its config, smoothed) on the same images
    loaded = load_method(trained_eel.model)
    scores, labels = [], []
    with torch.no_grad():
        for _, img, lab in samples:
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
            scores.append(loaded.spec.infer(loaded.cfg.method, loaded.model, x, lab.shape).score[0].numpy())
            labels.append(lab)
    ref = reference(np.concatenate([s.ravel() for s in scores]), np.concatenate([y.ravel() for y in labels]))
    for d in datasets:
        got = metrics["datasets"][d["name"]]
        for k in ("auroc", "ap", "fpr95"):
            assert got[k] == pytest.approx(ref[k], abs=1e-4), (d["name"], k)
        assert got["images"] == len(samples) and 0 < got["closed_set_agreement"] <= 1
    assert set(metrics["datasets"]["folder"]["conditions"]) == {"clear", "fog", "adverse"}
    assert metrics["settings"]["model_kind"] == "method" and metrics["settings"]["method"] == "eel"
    assert metrics["settings"]["method_config"]["alpha"] == 1.0


@pytest.mark.slow
def test_a_frozen_segmenter_with_a_post_hoc_score_at_a_set_width(trained_eel, tmp_path):
    samples = held_in_samples(trained_eel.version)
    datasets = _write_layouts(tmp_path / "bench", samples)[:1]
    args = ["--model", str(trained_eel.segmenter), "--segmenter", "espnetv2_demo", "--score", "max_logit"]
    output, metrics = eval_cli(tmp_path, datasets, *args, "--set", "input_width=128")
    assert "segmenter, score max_logit" in output
    from models.segmenters import build_segmenter, load_segmenter_weights

    seg = build_segmenter("espnetv2_demo")
    load_segmenter_weights(seg, read_checkpoint(trained_eel.segmenter))
    scores, labels = [], []
    with torch.no_grad():
        for _, img, lab in samples:
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
            x = torch.nn.functional.interpolate(
                x, size=(64, 128), mode="bilinear", align_corners=False
            )  # 256×128 → 128×64
            scores.append(post_hoc(seg(x), lab.shape, "max_logit", True).score[0].numpy())
            labels.append(lab)
    ref = reference(np.concatenate([s.ravel() for s in scores]), np.concatenate([y.ravel() for y in labels]))
    got = metrics["datasets"]["fishyscapes"]
    for k in ("auroc", "ap", "fpr95"):
        assert got[k] == pytest.approx(ref[k], abs=1e-4)
    assert got["closed_set_agreement"] is None  # the frozen network itself: no ŷ to compare


def test_a_shards_split_of_fraction_zero_is_every_sample(trained_eel):
    everything = list(load_benchmark("shards", trained_eel.version, val_fraction=0).samples())
    held_in = list(load_benchmark("shards", trained_eel.version, val_fraction=0.3).samples())
    assert len(everything) == 12 and 0 < len(held_in) < 12


def test_the_held_in_split_carries_trainids_for_the_closed_set_miou(trained_eel):
    ds = load_benchmark("shards", trained_eel.version, val_fraction=0.3)
    s = next(iter(ds.samples()))
    assert s.train_label is not None and np.array_equal(s.label, to_eval_labels(s.train_label))
    cfg = EvalConfig(model=trained_eel.model, datasets=[BenchmarkConfig(kind="shards", root=trained_eel.version)])
    from tasks.eval.evaluate import evaluate_dataset

    spec = cfg.datasets[0].model_copy(update={"val_fraction": 0.3})
    (res,) = evaluate_dataset(load_eval_model(cfg), spec, cfg, progress=False)
    m = res["metrics"]
    assert 0 <= m["miou"] <= 1 and 0 < m["closed_set_agreement"] <= 1 and m["images"] == len(list(ds.samples()))


def test_what_the_model_file_is_decides_how_it_is_read(trained_eel, tmp_path):
    datasets = [BenchmarkConfig(kind="shards", root=trained_eel.version)]
    assert load_eval_model(EvalConfig(model=trained_eel.model, datasets=datasets)).kind == "method"
    with pytest.raises(ValueError, match=r"stash is a plain state dict.*--segmenter NAME.*espnetv2"):
        shutil.copy(trained_eel.segmenter, tmp_path / "stash")
        load_eval_model(EvalConfig(model=tmp_path / "stash", datasets=datasets))
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(
        ValueError, match=r"notes.txt: a text file, neither a method checkpoint.*nor a TorchScript file"
    ):
        load_eval_model(EvalConfig(model=tmp_path / "notes.txt", datasets=datasets))
    old = tmp_path / "old.pt"
    torch.save({"format": "anomalyforge-method/1", "config": "{}", "head": {}}, old)
    with pytest.raises(ValueError, match="retrain it"):
        load_eval_model(EvalConfig(model=old, datasets=datasets))
    with pytest.raises(ValueError, match="unknown score 'nope'; registered: msp"):
        EvalConfig(model=old, datasets=datasets, score="nope")
    with pytest.raises(ValueError, match="unknown benchmark 'nope'; registered: shards, fishyscapes"):
        BenchmarkConfig(kind="nope", root=tmp_path)
