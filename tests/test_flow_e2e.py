"""End to end through the real Prefect flow and the CLI users run (slow: starts Prefect's local server)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    MODEL_HOME,
    ROOT,
    shared_or_skip,
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
    from schemas import (
        FilesSourceConfig,
        ObjectBankConfig,
        PlacementConfig,
        ScenesConfig,
        ShardConfig,
        SynthConfig,
    )
    from tasks.validate import validate_shard_set
    from tests.test_pipeline import run_stage

    scenes = shared_or_skip("cityscapes_sample")
    photos = shared_or_skip("object_photos")
    u2netp_or_skip()
    cfg = SynthConfig(
        num_samples=4,
        scenes=ScenesConfig(kind="cityscapes", root=scenes, split="val"),
        objects=ObjectBankConfig(
            files=[
                FilesSourceConfig(
                    root=photos,
                    manifest=Path("SOURCES.tsv"),
                    class_column="object_class_guess",
                    mask_column="mask_file_or_empty",
                    patterns=["danielgatis*.jpg", "xuebinqin*.jpg"],
                )
            ],
            max_side=128,
        ),
        placement=PlacementConfig(min_height_px=6, search_stride=2),
        shards=ShardConfig(samples_per_shard=2),
    )
    cfg.saliency.model_home = MODEL_HOME
    summary = run_stage(cfg, tmp_path)
    assert summary["samples"] >= 1
    assert validate_shard_set(tmp_path / "shards")[1] == []
