"""Shard-set versions: their lifecycle (``tasks.versions``) and making one without Prefect
(``tasks.synth.version.make_version``): the bytes of the move, resume, unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from schemas import load_config
from tasks.sample_format import DATASET
from tasks.synth.version import make_version
from tasks.versions import latest_version, plan_version, prune_versions, publish_version, resolve_version
from tests.helpers import ROOT, run_stage, shard_bytes, u2netp_or_skip

#: the demo profile's config hash and shard sha256s, made by the code before the registries and layers moved
#: (commit 711e6fb, its tests' stage-by-stage run): the move must not change a byte.
BEFORE_THE_MOVE = {
    "config_hash": "63cb264efd843f30",
    "samples": 23,
    "shards": {
        "shard-000000.tar": "cc20e63acbe6bf774cb33f5e3fdedae4d1debf184573f256734ef038b62d4dcd",
        "shard-000001.tar": "afd84fe0822b166f7cc7f143b7194fbca4d317e2497ac05cd733e07384a34f04",
        "shard-000002.tar": "1bf25c750402f26bd71e7a78612c29c38a5cac4b78d3b41196e197faa0be9c6a",
    },
}

#: content hashes of every shipped config before the move
CONFIG_HASHES = {
    "configs/anomalymix.yaml": "d78bd753b5476265",
    "configs/cityscapes_coco.yaml": "89176e88c68fe741",
    "configs/demo.yaml": "63cb264efd843f30",
    "configs/demo_eval.yaml": "534d8afd8643b024",
    "configs/demo_weather.yaml": "8c80018ff873ff19",
    "configs/diffusion.yaml": "e3401f79168944f4",
    "configs/frames.yaml": "fae4b057e6b4e4c2",
    "configs/patches.yaml": "54a8f017cf895412",
}


def test_every_shipped_config_keeps_its_content_hash():
    assert {f: load_config(ROOT / f).content_hash() for f in CONFIG_HASHES} == CONFIG_HASHES


@pytest.mark.slow
def test_the_demo_profile_makes_the_same_bytes_as_before_the_move(tmp_path):
    u2netp_or_skip()
    cfg = load_config(ROOT / "configs/demo.yaml")
    res = make_version(cfg, str(tmp_path / "run"))
    shards = {name: hashlib.sha256(b).hexdigest() for name, b in shard_bytes(tmp_path / "run" / "shards").items()}
    got = {"config_hash": cfg.content_hash(), "samples": res.summary["samples"], "shards": shards}
    assert got == BEFORE_THE_MOVE


def test_a_version_without_prefect_equals_the_stages_run_one_by_one_and_is_not_made_twice(tiny_config, tmp_path):
    first = make_version(tiny_config, str(tmp_path / "run"))
    assert first.summary["status"] == "new" and first.summary["validated"] == first.summary["samples"] >= 8
    run_stage(tiny_config, tmp_path / "stages")
    assert shard_bytes(tmp_path / "run" / "shards") == shard_bytes(tmp_path / "stages" / "shards")
    again = make_version(tiny_config, str(tmp_path / "run"))
    assert again.summary["status"] == "unchanged" and again.summary["version"] == first.summary["version"]
    assert Path(resolve_version(tmp_path / "run")) == Path(first.summary["shard_dir"]).resolve()


def test_versions_new_unchanged_resume_publish_and_retention(tmp_path):
    def complete(plan, parent):
        (plan.version.path / DATASET).write_text(
            json.dumps({"content_hash": plan.version.content_hash, "parent_version": parent})
        )

    a = plan_version(tmp_path, "a" * 64)
    assert a.status == "new" and a.version.id == "v0001-aaaaaaaa" and a.parent is None
    assert plan_version(tmp_path, "a" * 64).status == "resume"  # interrupted: same content resumes in place
    complete(a, None)
    publish_version(tmp_path, a.version)
    assert (tmp_path / "shards").resolve() == a.version.path and (
        tmp_path / "LATEST"
    ).read_text().strip() == a.version.id
    assert plan_version(tmp_path, "a" * 64).status == "unchanged"
    ids = [a.version.id]
    for h in "bcd":
        p = plan_version(tmp_path, h * 64)
        assert p.status == "new" and p.parent == ids[-1]
        complete(p, ids[-1])
        publish_version(tmp_path, p.version)
        ids.append(p.version.id)
    assert ids[-1] == "v0004-dddddddd" and latest_version(tmp_path).id == ids[-1]
    assert prune_versions(tmp_path, keep=2) == ids[:2]
    assert [p.name for p in sorted((tmp_path / "versions").iterdir())] == ids[2:]
    with pytest.raises(ValueError, match="not complete"):
        publish_version(tmp_path, plan_version(tmp_path, "e" * 64).version)
