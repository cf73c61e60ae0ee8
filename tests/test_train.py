"""Training on shards: the data path (single-channel labels, disjoint split, crops), the trainer end to end on
tiny demo shards (resume, reload, score), and RPL + EEL over the real ESPNetv2 on real frames."""

from __future__ import annotations

import json
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from schemas import TrainConfig
from tasks.checkpoints import load_method
from tasks.shards import write_tar_shard
from tasks.shardset import ShardDataError, decode_sample, in_validation, validation_samples
from tasks.train.data import context_batch, random_crop_flip, train_loader
from tasks.train.trainer import train_method
from tasks.versions import resolve_version
from tests.helpers import make_shards, real_photos_config, shared_or_skip, tiny_train_config, u2netp_or_skip


def _sample(key: str, label: np.ndarray, channels: int = 1) -> dict:
    img = np.full((*label.shape, 3), 90, np.uint8)
    lab = label if channels == 1 else np.dstack([label] * 3)
    return {
        "__key__": key,
        "image.jpg": cv2.imencode(".jpg", img)[1].tobytes(),
        "label.png": cv2.imencode(".png", lab)[1].tobytes(),
    }


def test_labels_stay_single_channel_with_anomaly_and_void_values():
    label = np.zeros((8, 12), np.uint8)
    label[2:4, 3:6] = 254
    label[0] = 255
    label[5:] = 13
    s = decode_sample(_sample("k0", label))
    assert s["label"].ndim == 2 and np.array_equal(s["label"], label)
    with pytest.raises(ShardDataError, match="single-channel"):
        decode_sample(_sample("k1", label, channels=3) | {"__url__": "x.tar"})
    bad = label.copy()
    bad[0, 0] = 77
    with pytest.raises(ShardDataError, match=r"x.tar:k2.*\[77\]"):
        decode_sample(_sample("k2", bad) | {"__url__": "x.tar"})


def test_split_is_disjoint_stable_and_sized():
    keys = [f"scene{i:05d}_obj{i % 7}" for i in range(4000)]
    val = [k for k in keys if in_validation(k, 0.1)]
    assert 0.08 < len(val) / len(keys) < 0.12
    assert val == [k for k in keys if in_validation(k, 0.1)]  # a pure function of the key
    assert not any(in_validation(k, 0.0) for k in keys)


def test_crop_pads_small_images_with_void_and_covers_every_position():
    rng = random.Random(0)
    img = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    lab = np.zeros((5, 6), np.uint8)
    i, lab_c = random_crop_flip(img, lab, (8, 4), rng)
    assert i.shape == (8, 4, 3) and (lab_c[5:] == 255).all()
    corners = set()
    for _ in range(400):
        _, c = random_crop_flip(img, np.arange(30, dtype=np.uint8).reshape(5, 6), (2, 2), rng)
        corners.add(int(c.min()))
    assert len(corners) == 4 * 5  # the inclusive randint reaches the last row and column


def test_loader_streams_batches_without_validation_keys(tmp_path):
    label = np.zeros((32, 48), np.uint8)
    label[10:20, 10:20] = 254
    keys = [f"k{i:03d}" for i in range(24)]
    urls = []
    for s in range(2):
        path = tmp_path / f"shard-{s:06d}.tar"
        write_tar_shard(path, [_sample(k, label) for k in keys[s * 12 : (s + 1) * 12]])
        urls.append(str(path))
    cfg = TrainConfig(crop=(16, 16), batch_size=3, workers=2, val_fraction=0.25, shuffle_buffer=4)
    x, y = next(iter(train_loader(urls, cfg)))
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.shape == (3, 16, 16) and y.dtype == torch.int64
    val = [s["__key__"] for s in validation_samples(urls, 0.25)]
    assert val == [k for k in keys if in_validation(k, 0.25)] and val


def test_context_images_label_object_anomaly_and_background_inlier():
    rgba = np.zeros((20, 10, 4), np.uint8)
    rgba[5:15, 2:8, 3] = 255
    x, y = context_batch([rgba], 2, 16, random.Random(0))
    assert x.shape == (2, 3, 16, 16) and y.shape == (2, 16, 16)
    vals = set(torch.unique(y).tolist())
    assert vals == {0, 254, 255}  # object, its own background, padding


@pytest.fixture
def demo_shards(tiny_config, tmp_path):
    tiny_config.num_samples = 12
    make_shards(tiny_config, tmp_path / "run")
    return resolve_version(tmp_path / "run" / "shards")


# first_loss / last_loss of these runs, recorded with the trainer as it was before methods became specs
# (one hard-coded branch per method): the move onto the registry changed no number. Re-recorded once when the demo's
# closed-set network moved from the composites (anomaly pixels void) to the clean scenes (issue 24); with the
# composites the same code still gives the old values (eel 2.8913 / 2.8771, rpl 2.8863 / 2.8360, rpl_corocl
# 10.0655 / 6.7249, all within the bound below)
BEFORE_THE_MOVE = {
    "eel": (2.886728286743164, 2.877735674381256),
    "rpl": (2.8817594051361084, 2.836669445037842),
    "rpl_corocl": (9.671172142028809, 6.597512185573578),
}


@pytest.mark.parametrize("method", ["eel", "rpl", "rpl_corocl"])
def test_demo_profile_pretrains_then_trains_resumes_and_reloads(demo_shards, tmp_path, method):
    out = tmp_path / "out" / method
    res = train_method(tiny_train_config(method), demo_shards, out, progress=False, log=lambda m: None)
    assert res.steps == 4 and np.isfinite(res.first_loss) and np.isfinite(res.last_loss)
    # The fixed-batch losses of tests/test_methods.py pin the method math at 1e-5. These runs also go through
    # synthesis, shard decoding and streaming: in the environment `make install` gives on 2026-12-02 the same
    # code (ea58139) reproduces them to 1.8e-4 (eel, rpl) and 1.6e-3 (rpl_corocl) relative only, so the bound is
    # the drift of the data path, not of the method
    assert (res.first_loss, res.last_loss) == pytest.approx(BEFORE_THE_MOVE[method], rel=5e-3)
    segs = list((tmp_path / "out" / "segmenters").glob("espnetv2_demo-*.pt"))
    assert len(segs) == 1 and json.loads(segs[0].with_suffix(".json").read_text())["steps"] == 4
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == method and m["images"] >= 1 and 0 <= m["closed_set_agreement"] <= 1
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "eval" in h] == [2, 4]
    # resume: a longer schedule continues from step 4, not from 0
    longer = tiny_train_config(method).model_copy(update={"max_steps": 6})
    resumed = train_method(longer, demo_shards, out, progress=False, log=lambda m: None)
    assert resumed.steps == 6  # (a different config hash would have restarted; max_steps is part of it)
    # the same config again: the finished model is reused, nothing trains
    logs = []
    again = train_method(longer, demo_shards, out, progress=False, log=logs.append)
    assert again.steps == 6 and again.metrics == resumed.metrics and "reusing" in logs[0]
    loaded = load_method(res.model)
    model, cfg = loaded.model, loaded.cfg
    assert cfg.method.name == method and model.projector is None  # the projector is dropped at inference
    with torch.no_grad():
        out_ = model(torch.rand(1, 3, 40, 56))
    assert out_.logits.shape == (1, 19, 40, 56)


@pytest.mark.slow
def test_real_frames_rpl_eel_on_the_real_espnetv2(tmp_path):
    """Real Cityscapes frame + real object photos → shards; frozen real ESPNetv2; 30 steps of RPL+EEL on CPU."""
    scenes = shared_or_skip("cityscapes_sample")
    weights = shared_or_skip("espnetv2", "espnetv2_s_2.0_city_1024x512.pth")
    u2netp_or_skip()
    cfg = real_photos_config(num_samples=6, max_side=96, min_height_px=8)
    make_shards(cfg, tmp_path / "run")
    version = resolve_version(tmp_path / "run" / "shards")
    train_cfg = TrainConfig(
        method={"name": "eel", "residual_dim": 64, "lr": 1e-3},
        segmenter={"name": "espnetv2", "checkpoint": weights},
        crop=(96, 192),
        batch_size=2,
        max_steps=30,
        eval_every=30,
        workers=0,
        val_fraction=0.0,  # 6 samples: evaluate on the training composites themselves
        val_limit=2,
    )
    from models.segmenters import build_segmenter, load_segmenter_weights

    ref = build_segmenter("espnetv2")
    load_segmenter_weights(ref, torch.load(weights, map_location="cpu", weights_only=True))
    res = train_method(train_cfg, version, tmp_path / "out", progress=False, log=lambda m: None)
    hist = [json.loads(x) for x in (tmp_path / "out" / "history.jsonl").read_text().splitlines() if "loss" in x]
    losses = [h["loss"] for h in hist]
    assert all(np.isfinite(losses)) and np.mean(losses[-1:]) < np.mean(losses[:1])
    assert res.last_loss < res.first_loss
    model = load_method(res.model).model
    # the frozen network inside the reloaded model is the checkpoint, bit for bit
    ref_sd, got = ref.net.state_dict(), model.segmenter.net.state_dict()
    assert all(torch.equal(ref_sd[k], got[k]) for k in ref_sd)
    img = cv2.cvtColor(cv2.imread(str(next(scenes.rglob("*leftImg8bit.png")))), cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out.frozen_logits.argmax(1), ref(x).argmax(1))
    from models.scores import anomaly_score

    score = anomaly_score(out.logits, "eel", smoothing=True)
    assert score.shape == (1, *img.shape[:2]) and torch.isfinite(score).all()


def test_a_version_url_is_read_through_fsspec(demo_shards):
    from tasks.shardset import shard_urls

    local = shard_urls(demo_shards)
    remote = shard_urls("file://" + demo_shards)
    assert [u.split("/")[-1] for u in remote] == [Path(u).name for u in local]
    cfg = TrainConfig(crop=(32, 32), batch_size=2, workers=0, val_fraction=0.0)
    x, y = next(iter(train_loader(remote, cfg)))
    assert x.shape == (2, 3, 32, 32) and y.shape == (2, 32, 32)


def test_train_deployment_takes_a_method_and_a_shard_version():
    import yaml

    deployments = {d["name"]: d for d in yaml.safe_load(Path("prefect.yaml").read_text())["deployments"]}
    d = deployments["method"]
    assert d["entrypoint"] == "flows/train.py:train"
    assert Path(d["parameters"]["config_path"]).is_file() and {"shards", "method"} <= set(d["parameters"])
    from flows.train import train

    assert train.name == "train" and {"shards", "method"} <= set(train.parameters.properties)


@pytest.mark.slow
def test_cli_train_runs_the_flow_and_prints_where_outputs_went(demo_shards, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli"
    sets = [
        "max_steps=2",
        "eval_every=2",
        "segmenter.pretrain.steps=2",
        "segmenter.pretrain.batch_size=2",
        "crop=[64,128]",
        "batch_size=2",
        "workers=0",
        "val_fraction=0.3",
        "val_limit=2",
        "method.residual_dim=16",
    ]
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "train",
        "--method",
        "eel",
        "--shards",
        demo_shards,
        "--out-dir",
        str(out),
    ]
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"model:   {out / 'model.pt'}" in r.stdout and f"metrics: {out / 'metrics.json'}" in r.stdout
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2


def test_the_same_config_on_other_shards_trains_again(trained_eel, demo_shards, tmp_path):
    """A finished run's checkpoints belong to its shard version: on another version nothing is reused."""
    cfg = tiny_train_config("eel")
    seg = cfg.segmenter.model_copy(update={"checkpoint": trained_eel.segmenter})
    cfg = cfg.model_copy(update={"max_steps": 2, "eval_every": 2, "segmenter": seg})
    out = tmp_path / "out"
    first = train_method(cfg, trained_eel.version, out, progress=False, log=lambda m: None)
    logs = []
    second = train_method(cfg, demo_shards, out, progress=False, log=logs.append)
    assert first.steps == second.steps == 2 and second.first_loss is not None
    assert not any("resuming" in m or "reusing" in m for m in logs)
    assert load_method(second.model).checkpoint["shards"] == demo_shards
