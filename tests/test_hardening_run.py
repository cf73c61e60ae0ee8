"""A run directory under stress: a second writer, a killed writer, retention, a decompression bomb among the
scenes, a run too large for the disk, and a failure after the shards are written (``LATEST`` moves last)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc

import cv2
import numpy as np
import pytest
from PIL import Image

from schemas import ConfigError, DemoScenesConfig, SynthConfig
from tasks import runtime
from tasks.imageio import BadInputError, read_gray, read_rgb
from tasks.labels import looks_like_train_ids
from tasks.runlock import LEASE, RunLockedError, run_lock
from tasks.sample_format import DATASET
from tasks.scenes.demo import write_demo_scenes
from tasks.shards import read_rejects
from tasks.storage import Store
from tasks.synth import version as version_module
from tasks.synth.version import make_version
from tasks.versions import list_versions, plan_version, prune_versions, publish_version
from tests.helpers import write_object_photos

HOLD = """
import sys, time
from tasks.runlock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(run):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path, caplog):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        with pytest.raises(RunLockedError, match=rf"{run} is being written by another run \(pid {holder.pid} on "):
            with run_lock(run):
                pass
        with pytest.raises(RunLockedError, match=r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"):
            make_version(SynthConfig(), str(run))  # before it touches anything: no scenes, no versions
        assert sorted(p.name for p in run.iterdir()) == [".lock", ".lock.json"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_lock(run):  # the OS released the killed holder's lock; its note says who it was
        assert json.loads((run / ".lock.json").read_text())["pid"] == os.getpid()
    assert f"pid {holder.pid}" in caplog.text and "killed" in caplog.text
    assert not (run / ".lock.json").exists()


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    with run_lock(tmp_path), run_lock(tmp_path):
        pass
    with run_lock(tmp_path):  # released by the outer holder only
        pass


def test_a_lease_on_object_storage_refuses_a_live_holder_and_takes_over_a_stale_one(caplog):
    url = f"memory://lease-{os.getpid()}-{time.time_ns()}"
    store = Store(url)
    live = {"host": "elsewhere", "pid": 1, "started": "2026-12-04 06:00:00 UTC", "token": "x"}
    store.write_bytes(LEASE, json.dumps(live | {"expires": time.time() + 60}).encode())
    with pytest.raises(RunLockedError, match=r"pid 1 on elsewhere, started 2026-12-04 06:00:00 UTC.*\.lease\.json"):
        with run_lock(url, lease_s=1.0):
            pass
    store.write_bytes(LEASE, json.dumps(live | {"expires": time.time() - 5}).encode())
    with run_lock(url, lease_s=1.0):
        mine = json.loads(store.read_text(LEASE))
        assert mine["pid"] == os.getpid() and mine["expires"] > time.time()
        time.sleep(0.6)  # renewed every lease_s / 3
        assert json.loads(store.read_text(LEASE))["expires"] > mine["expires"]
    assert "lease expired" in caplog.text and not store.isfile(LEASE)


def test_a_holder_whose_lease_was_taken_over_stops(caplog):
    url = f"memory://lease-{os.getpid()}-{time.time_ns()}"
    runtime.clear_stop()
    try:
        with run_lock(url, lease_s=0.3):
            other = {"host": "elsewhere", "pid": 2, "started": "now", "token": "y", "expires": time.time() + 60}
            Store(url).write_bytes(LEASE, json.dumps(other).encode())  # this run stalled past its expiry
            time.sleep(0.4)
            assert runtime.stop_requested()
        assert "taken over by pid 2 on elsewhere" in caplog.text
        assert json.loads(Store(url).read_text(LEASE))["token"] == "y"  # the new holder's lease stays
    finally:
        runtime.clear_stop()


def test_retention_never_removes_a_version_that_is_not_complete(tmp_path):
    def complete(plan):
        Store(plan.version.path).write_bytes(DATASET, json.dumps({"content_hash": plan.version.content_hash}).encode())
        publish_version(tmp_path, list_versions(tmp_path)[-1])

    complete(plan_version(tmp_path, "a" * 64))
    in_progress = plan_version(tmp_path, "b" * 64)  # another writer's, or a killed run's
    for h in "cd":
        complete(plan_version(tmp_path, h * 64))
    assert prune_versions(tmp_path, keep=1) == ["v0001-aaaaaaaa", "v0003-cccccccc"]
    assert [v.id for v in list_versions(tmp_path)] == [in_progress.version.id, "v0004-dddddddd"]


def _cityscapes_config(tmp_path, n=3) -> SynthConfig:
    root = write_demo_scenes(tmp_path / "cs", DemoScenesConfig(num_scenes=n, width=256, height=128), 0)
    return SynthConfig(
        name="stress",
        num_samples=6,
        seed=1,
        scenes={"kind": "cityscapes", "root": str(root), "split": "train"},
        objects={"demo_objects": False, "files": [write_object_photos(tmp_path / "photos")], "max_side": 64},
        placement={"min_height_px": 6, "search_stride": 2},
        shards={"samples_per_shard": 3},
        workers=1,
    )


def test_a_huge_image_is_refused_from_its_header_before_it_is_decoded(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 MP in a few kB: Pillow's own limit, named as ours
    assert bomb.stat().st_size < 200_000
    with pytest.raises(BadInputError, match=r"bomb.png: 400 MP is over the limit of 100 MP \(ANOMALYFORGE_MAX"):
        read_gray(bomb)
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((300, 400, 3), np.uint8))
    monkeypatch.setenv("ANOMALYFORGE_MAX_IMAGE_PIXELS", "100000")
    with pytest.raises(BadInputError, match=r"big.png: 400x300 pixels \(0 MP\) is over the limit") as e:
        read_rgb(big)
    assert e.value.reason == "image_too_large"
    monkeypatch.setenv("ANOMALYFORGE_MAX_IMAGE_PIXELS", "1.2e5")
    assert read_rgb(big).shape == (300, 400, 3)
    monkeypatch.setenv("ANOMALYFORGE_MAX_IMAGE_PIXELS", "0")
    with pytest.raises(ConfigError, match=r"ANOMALYFORGE_MAX_IMAGE_PIXELS='0' is not a positive number of pixels"):
        read_rgb(big)


def test_the_train_ids_check_makes_no_wide_copy_of_a_label():
    label = np.zeros((64, 64), np.uint8)
    label[:20] = 13
    assert looks_like_train_ids(label) == pytest.approx(44 / 64)
    label[0, 0] = 26  # a labelIds-only value
    assert looks_like_train_ids(label) is None
    big = np.zeros((2048, 2048), np.uint8)  # 4 MB: an int64 histogram input would be 32 MB
    tracemalloc.start()
    looks_like_train_ids(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < big.nbytes


@pytest.mark.slow
def test_a_bomb_among_the_scenes_is_quarantined_and_a_report_failure_leaves_latest_alone(tmp_path, monkeypatch):
    cfg = _cityscapes_config(tmp_path)
    images = sorted((tmp_path / "cs").rglob("*_leftImg8bit.png"))
    Image.new("1", (20000, 20000)).save(images[1])  # a 400 MP frame in well under a megabyte
    run = tmp_path / "run"
    first = make_version(cfg, str(run)).summary
    rejects = read_rejects(run / "shards" / "rejects.parquet")
    bombs = [r for r in rejects if r.reason == "image_too_large"]
    assert bombs and all(images[1].name in r.detail and "400 MP" in r.detail for r in bombs)
    assert first["samples"] == 6 - len(bombs) and (run / "shards" / "report.md").is_file()
    published = (run / "LATEST").read_text()

    def broken_report(*a, **k):
        raise OSError("disk full while writing the report")

    monkeypatch.setattr(version_module, "write_report", broken_report)
    with pytest.raises(OSError, match="disk full"):
        make_version(cfg.model_copy(update={"seed": 2}), str(run))
    assert (run / "LATEST").read_text() == published  # nothing was published
    (new,) = [v for v in list_versions(run) if not v.complete]  # and the new version is not complete: resumable
    assert new.number == 2 and not (new.path / DATASET).exists()


def test_a_run_that_cannot_fit_on_the_disk_is_refused_before_any_shard(tmp_path, monkeypatch):
    cfg = _cityscapes_config(tmp_path, n=1).model_copy(update={"num_samples": 1_000_000_000})
    free = version_module.shutil._ntuple_diskusage(2 * 10**12, 10**12, 10**12)  # 1 TB free
    monkeypatch.setattr(version_module.shutil, "disk_usage", lambda p: free)
    with pytest.raises(ConfigError, match=r"num_samples=1000000000 needs about [\d.]+ TB more \(1000000000 samples x ~"
                       r"[\d.]+ kB each at 256x128 jpg\) but .* has 1 TB free; lower num_samples"):  # fmt: skip
        make_version(cfg, str(tmp_path / "run"))
    assert not list((tmp_path / "run").glob("versions/*/shard-*")) and not (tmp_path / "run" / "LATEST").exists()
    small = cfg.model_copy(update={"num_samples": 4})
    assert make_version(small, str(tmp_path / "run")).summary["samples"] > 0  # what fits is made


def test_a_resumed_run_needs_room_only_for_the_shards_it_has_not_written(tmp_path, monkeypatch):
    cfg = _cityscapes_config(tmp_path, n=1).model_copy(update={"num_samples": 6})
    shards_left = []
    monkeypatch.setattr(version_module, "check_space", lambda cfg, scenes, d, missing: shards_left.append(missing))
    real = version_module.StageRunner.shards

    def two_then_crash(self, version_id, calls):
        yield from itertools.islice(real(self, version_id, calls), 1)
        raise OSError("killed")

    monkeypatch.setattr(version_module.StageRunner, "shards", two_then_crash)
    with pytest.raises(OSError, match="killed"):
        make_version(cfg, str(tmp_path / "run"))
    monkeypatch.setattr(version_module.StageRunner, "shards", real)
    make_version(cfg, str(tmp_path / "run"))
    assert shards_left == [6, 3]  # 3 samples per shard, one shard kept
