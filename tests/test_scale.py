"""Scale-out: the synth flow's shard tasks on a Dask cluster (prefect-dask), byte-identical to the thread runner,
and complete when a worker dies mid-run."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import yaml

from tests.conftest import write_object_photos

pytestmark = pytest.mark.slow


def _config(tmp_path) -> str:
    photos = write_object_photos(tmp_path / "photos")
    cfg = {
        "name": "dask",
        "seed": 4,
        "num_samples": 24,
        "scenes": {"kind": "demo", "demo": {"num_scenes": 3, "width": 256, "height": 128}},
        "objects": {"files": [{"root": str(photos.root), "class_name": "box", "patterns": ["*.png"]}], "max_side": 64},
        "placement": {"min_height_px": 6, "search_stride": 2},
        "shards": {"samples_per_shard": 2},  # 12 shard tasks
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _tars(run) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "shards").glob("*.tar"))}


def test_a_dask_cluster_of_two_processes_writes_the_thread_runners_bytes_even_when_a_worker_dies(tmp_path):
    from distributed import Client, LocalCluster

    from flows.synth import run_synth
    from tasks.synth.validate import validate_shard_set

    config = _config(tmp_path)
    threads = run_synth(config, str(tmp_path / "threads"), workers=1)
    assert threads["shards"] == 12

    killed: dict = {}
    run = tmp_path / "dask"
    with (
        LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        victim = next(iter(client.run(os.getpid).values()))

        def kill_after_the_first_shard():
            deadline = time.time() + 300
            while time.time() < deadline:
                done = list(run.glob("versions/*/.parts/*.json"))
                if done:
                    os.kill(victim, signal.SIGKILL)
                    killed["after"] = len(done)
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_after_the_first_shard, daemon=True)
        killer.start()
        res = run_synth(config, str(run), workers=2, task_runner="dask", dask_address=cluster.scheduler_address)
        killer.join(timeout=5)
    assert 1 <= killed.get("after", 99) < 12  # a worker died while shards were still to be written
    assert res["shards"] == 12 and validate_shard_set(run / "shards")[1] == []
    assert _tars(run) == _tars(tmp_path / "threads")
