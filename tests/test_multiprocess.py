"""Training under ``accelerate launch --multi_gpu --num_processes 2`` on CPU (torchrun, gloo): the launch the README
gives for several GPUs. (``accelerate launch --cpu`` starts several CPU processes only through MPI.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.helpers import ROOT, tiny_synth_config, tiny_train_config

pytestmark = pytest.mark.slow


def test_two_processes_stream_disjoint_shards_and_rank_0_saves_the_shared_head(tmp_path):
    from tasks.checkpoints import read_checkpoint
    from tasks.train.trainer import head_digest
    from tasks.versions import resolve_version
    from tests.helpers import make_shards

    cfg = tiny_synth_config(tmp_path)
    cfg.num_samples, cfg.shards.samples_per_shard = 12, 2  # 6 shards: 3 per process
    make_shards(cfg, tmp_path / "run")
    version = resolve_version(tmp_path / "run" / "shards")
    train = tiny_train_config("eel").model_dump(mode="json") | {"device": "cpu", "val_fraction": 0.0}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PREFECT_HOME=str(tmp_path / "prefect"))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
    ]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "flows.cli", "train"]
    cmd += ["--config", str(tmp_path / "train.yaml"), "--shards", version, "--out-dir", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("model:   ") == 1  # rank 0 reports, once
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [4, 4]
    shards = sorted(p.name for p in (tmp_path / "run" / "shards").glob("*.tar"))
    assert len(shards) == 6
    assert not set(ranks[0]["shards"]) & set(ranks[1]["shards"])  # disjoint
    assert sorted(ranks[0]["shards"] + ranks[1]["shards"]) == shards  # and together every shard
    saved = head_digest(read_checkpoint(out / "model.pt")["head"])
    assert ranks[0]["head_sha256"] == ranks[1]["head_sha256"] == saved  # gradients were all-reduced; rank 0 saved
    assert len(list((out / "segmenters").glob("*.pt"))) == 1  # the closed-set network, trained once
