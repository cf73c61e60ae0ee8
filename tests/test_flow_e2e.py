"""End to end through the real Prefect flow and the CLI users run (slow: starts Prefect's local server)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    MODEL_HOME,
    ROOT,
    real_photos_config,
    u2netp_or_skip,
    write_object_photos,
)

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "flows.cli"]


def _env(tmp_path):
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", U2NET_HOME=str(MODEL_HOME)
    )
    return env


def test_synth_flow_and_validate_cli(tmp_path):
    photos = write_object_photos(tmp_path / "photos")
    cfg = {
        "name": "e2e",
        "num_samples": 6,
        "scenes": {"kind": "demo", "demo": {"num_scenes": 2, "width": 256, "height": 128}},
        "objects": {"files": [{"root": str(photos.root), "class_name": "box", "patterns": ["*.png"]}], "max_side": 64},
        "placement": {"min_height_px": 6, "search_stride": 2},
        "shards": {"samples_per_shard": 4},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    res = subprocess.run(
        [*CLI, "synth", "--config", str(tmp_path / "cfg.yaml"), "--run-dir", str(run), "--set", "seed=5"],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"shards:  {run / 'versions'}/v0001-" in res.stdout and "(new, parent None)" in res.stdout
    assert (run / "shards" / "report.md").is_file() and (run / "shards" / "composites.png").stat().st_size > 1000
    assert "seed 5" in (run / "shards" / "report.md").read_text()
    ok = subprocess.run([*CLI, "validate", str(run / "shards")], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "ok:" in ok.stdout
    shard = sorted((run / "shards").glob("*.tar"))[0]
    shard.chmod(0o644)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    bad = subprocess.run([*CLI, "validate", str(run / "shards")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "sha256 differs" in bad.stderr


def test_real_frames_and_real_object_photos(tmp_path):
    """Real Cityscapes frame + real photos (rembg for those without a mask) -> validated shards."""
    from tasks.synth.validate import validate_shard_set
    from tests.helpers import make_shards

    u2netp_or_skip()
    cfg = real_photos_config(num_samples=4, max_side=128, min_height_px=6)
    summary = make_shards(cfg, tmp_path)
    assert summary["samples"] >= 1
    assert validate_shard_set(tmp_path / "shards")[1] == []


def _diffusion_params(tmp_path, model, run) -> dict:
    """synth/diffusion with the tiny pipeline, demo scenes and demo photos (no COCO on a test machine)."""
    return {
        "run_dir": str(run),
        "scenes": "demo",
        "sources": ["diffusion", "demo"],
        "overrides": {
            "num_samples": 4,
            "scenes.demo": {"num_scenes": 2, "width": 256, "height": 128},
            "shards.samples_per_shard": 2,
            "objects.max_side": 64,
            "objects.diffusion.model": str(model),
            "objects.diffusion.objects": ["dog", "traffic cone"],
            "objects.diffusion.backgrounds": ["wild"],
            "objects.diffusion.width": 64,
            "objects.diffusion.height": 64,
            "objects.diffusion.steps": 2,
            "objects.diffusion.batch_size": 2,
            "placement.min_height_px": 6,
            "placement.search_stride": 2,
            "saliency.model_home": str(MODEL_HOME),
        },
    }


def test_deployment_run_synth_diffusion_against_a_local_server(tmp_path):
    """A real local server on a free port, the pools, `prefect deploy --all`, a worker per pool, then
    `prefect deployment run synth/diffusion` (generation goes to the gpu pool through run_deployment)."""
    import json

    from flows.serve import LocalStack
    from tasks.synth.random_pipeline import save_random_pipeline
    from tasks.synth.validate import validate_shard_set

    u2netp_or_skip()
    model = save_random_pipeline(tmp_path / "tiny-sd", "sd")
    run = tmp_path / "run"
    params = _diffusion_params(tmp_path, model, run)
    env = {"U2NET_HOME": str(MODEL_HOME), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    with LocalStack(home=tmp_path / "prefect", gpus=1, env=env | {"PREFECT_UI_ENABLED": "false"}) as stack:
        listed = stack.run("deployment", "ls").stdout
        for name in ("synth/diffusion", "synth/coco", "synth/nightly", "generate-objects/gpu"):
            assert name in listed, listed
        limit = stack.run("concurrency-limit", "inspect", "gpu").stdout  # one generation batch per GPU
        assert "Concurrency Limit ID" in limit and "gpu" in limit, limit  # inspect fails for an unknown tag
        nightly = json.loads(stack.run("deployment", "inspect", "synth/nightly", "--output", "json").stdout)
        assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
        res = stack.run(
            "deployment",
            "run",
            "synth/diffusion",
            "--params",
            json.dumps(params),
            "--watch",
            "--watch-timeout",
            "500",
            check=False,
            timeout=560,
        )
        logs = "".join(p.read_text(errors="replace")[-3000:] for p in sorted(stack.log_dir.glob("worker-*.log")))
        assert res.returncode == 0 and "Completed" in res.stdout, res.stdout[-3000:] + res.stderr[-2000:] + logs
    assert validate_shard_set(run / "shards")[1] == []
    ds = json.loads((run / "shards" / "dataset.json").read_text())
    assert ds["version"].startswith("v0001-") and ds["parent_version"] is None and ds["samples"] >= 1
    store = run / "generated"
    batches = sorted((store / "batches").glob("gen-*.json"))
    assert len(batches) == 1  # both specs in one batch, generated by the gpu deployment
    rec = json.loads(batches[0].read_text())
    assert len(rec["spec_ids"]) == 2 and len(rec["objects"]) + len(rec["rejects"]) == 2
    assert (run / "shards" / "report.md").read_text().count("Generated objects") == 1


def test_synth_flow_is_incremental_and_versions_the_shards(tmp_path):
    """In-process flow: a rerun generates nothing and makes no new version; a nightly-style run adds new
    specs only and makes version 2 with version 1 as parent; retention removes the old one."""
    import json

    from flows.synth import run_synth
    from tasks.synth.random_pipeline import save_random_pipeline

    u2netp_or_skip()
    model = save_random_pipeline(tmp_path / "tiny-sd", "sd")
    run = tmp_path / "run"
    p = _diffusion_params(tmp_path, model, run)
    kw = dict(sources=p["sources"], scenes="demo")
    first = run_synth("configs/diffusion.yaml", str(run), p["overrides"], 1, **kw)
    assert first["status"] == "new" and first["generation"]["planned"] == 2
    again = run_synth("configs/diffusion.yaml", str(run), p["overrides"], 1, **kw)
    assert again["generation"]["planned"] == 0 and again["status"] == "unchanged"
    assert again["version"] == first["version"]
    nightly = p["overrides"] | {"objects.diffusion.new_objects": 2}
    # a lenient gate so that the new objects join the bank and change its content
    nightly |= {
        "saliency.gate": {
            "min_contrast": 0.0,
            "min_confidence": 0.0,
            "max_components": 50,
            "min_largest_frac": 0.0,
            "max_border_frac": 1.0,
            "min_area_frac": 0.0,
            "min_pixels": 1,
        }
    }
    third = run_synth("configs/diffusion.yaml", str(run), nightly, 1, **kw, keep_versions=1)
    assert third["generation"]["planned"] == 2  # round 1: the new seeds only
    assert third["status"] == "new" and third["parent_version"] == first["version"]
    assert third["version"].startswith("v0002-") and third["removed_versions"] == [first["version"]]
    assert (run / "LATEST").read_text().strip() == third["version"]
    assert json.loads((run / "shards" / "dataset.json").read_text())["version"] == third["version"]


def test_unlabeled_driving_frames_become_validated_shards_and_train(tmp_path):
    """``anomalyforge synth --config configs/frames.yaml`` on a folder of real dash-cam frames labelled by the real
    ESPNetv2; a night frame with no confident road is rejected; EEL trains on the shards over that segmenter."""
    from tasks.shards import read_table
    from tasks.train.trainer import train_method
    from tasks.versions import resolve_version
    from tests.helpers import shared_or_skip, tiny_train_config

    u2netp_or_skip()
    frames, ckpt = shared_or_skip("driving_frames"), shared_or_skip("espnetv2", "espnetv2_s_2.0_city_1024x512.pth")
    footage = tmp_path / "footage"
    for name in (
        "MaybeShewill-CV_lanenet-lane-detection__train_example_0000.png",  # highway
        "MarvinTeichmann_KittiSeg__demo4.png",  # rural two-lane road (1242x375)
        "dusty-nv_jetson-inference__city_3.jpg",  # German residential street
        "zhangzhengde0225_CDNet__view_blocked_0036_05420.jpg",  # night, no confident road
    ):
        (footage / name.split("__")[0]).mkdir(parents=True, exist_ok=True)
        shutil.copy(frames / name, footage / name.split("__")[0] / name)
    run = tmp_path / "run"
    sets = {
        "scenes.root": str(footage),
        "scenes.segmenter.checkpoint": str(ckpt),
        "num_samples": 6,
        "shards.samples_per_shard": 3,
    }
    res = subprocess.run(
        [*CLI, "synth", "--config", "configs/frames.yaml", "--run-dir", str(run)]
        + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ok = subprocess.run([*CLI, "validate", str(run / "shards")], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "ok:" in ok.stdout
    version = resolve_version(run / "shards")
    rejects = read_table(Path(version) / "rejects.parquet")
    assert [(Path(r["item"]).name, r["reason"]) for r in rejects if r["stage"] == "scenes"] == [
        ("zhangzhengde0225_CDNet__view_blocked_0036_05420.jpg", "no_drivable_area")
    ]
    rows = read_table(Path(version) / "samples.parquet")
    assert len(rows) >= 3 and {r["width"] for r in rows} == {1024}
    import hashlib
    import tarfile

    from tasks.sample_format import decode_parts, read_tar_samples

    with tarfile.open(Path(version) / rows[0]["shard"]) as tar:
        samples, _ = read_tar_samples(tar, rows[0]["shard"])
    metas = [json.loads(decode_parts(k, p, k).meta) for k, p in samples.items()]
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert all(
        m["pseudo_label"]["checkpoint_sha256"] == digest and m["pseudo_label"]["threshold"] == 0.9 for m in metas
    )
    assert all(m["horizon_source"] in ("vanishing_point", "road") and "weather" not in m for m in metas)
    assert len(list((run / "scenes" / "labels").glob("espnetv2-*-c0.9-w1024/*.png"))) == 4
    assert (Path(version) / "scenes.png").stat().st_size > 10_000
    # AnomalyMix's clean scenes of this version: the same frames with their cached labels, no network needed
    from tasks.train.extras import clean_scene_refs

    refs, _ = clean_scene_refs(version)
    assert len(refs) == 3 and all(r.pseudo_label is not None and r.label.is_file() for r in refs)
    from schemas import TrainConfig

    tiny = tiny_train_config("eel").model_dump()
    cfg = TrainConfig.model_validate(tiny | {"segmenter": {"name": "espnetv2", "checkpoint": str(ckpt)}})
    result = train_method(cfg, version, tmp_path / "train", progress=False, log=lambda m: None)
    assert result.model.is_file() and result.steps == 4 and math.isfinite(result.last_loss)
