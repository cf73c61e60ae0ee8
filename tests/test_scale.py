"""Scale-out: the synth flow's shard tasks on a Dask cluster (prefect-dask), byte-identical to the thread runner,
and complete when a worker dies mid-run; shard versions on S3 (a real S3 API, moto's server on 127.0.0.1) written,
resumed, validated and trained from."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import yaml
from typer.testing import CliRunner

from tests.helpers import tiny_train_config, write_object_photos

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

    from flows.cli import app
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
        args = ["synth", "--config", config, "--run-dir", str(run), "--task-runner", "dask", "--workers", "2"]
        res = CliRunner().invoke(app, [*args, "--dask-address", cluster.scheduler_address])  # the README's command
        killer.join(timeout=5)
    assert res.exit_code == 0, res.output
    assert 1 <= killed.get("after", 99) < 12  # a worker died while shards were still to be written
    assert "(24 samples in 12 shards" in res.output and validate_shard_set(run / "shards")[1] == []
    assert _tars(run) == _tars(tmp_path / "threads")


BUCKET = "anomalyforge-test"


@pytest.fixture
def s3(monkeypatch):
    """An S3 API on 127.0.0.1 (moto's server, started and stopped here) with one bucket; s3fs finds it through the
    standard ``AWS_ENDPOINT_URL``, as it would a MinIO or a cloud endpoint."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    for k, v in (env | {"AWS_DEFAULT_REGION": "us-east-1"}).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance made for another endpoint must not be reused
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    try:
        yield fs
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def test_a_version_on_s3_is_written_atomically_validated_resumed_and_trained_from(tmp_path, s3):
    from flows.cli import app
    from flows.synth import run_synth
    from tasks.checkpoints import read_checkpoint

    config = _config(tmp_path)
    url = f"s3://{BUCKET}/run"
    synth = ["synth", "--config", config, "--run-dir", url, "--work-dir", str(tmp_path / "work"), "--workers", "2"]
    made = CliRunner().invoke(app, synth)  # the README's command
    assert made.exit_code == 0, made.output
    vid = s3.cat(f"{BUCKET}/run/LATEST").decode().strip()
    root = f"{BUCKET}/run/versions/{vid}"
    assert f"shards:  {url}/versions/{vid}  (24 samples in 12 shards" in made.output
    assert f"latest:  {url}/LATEST -> {vid}" in made.output
    keys = s3.find(f"{BUCKET}/run")
    assert not [k for k in keys if ".tmp-" in k]  # every temporary key was moved onto its final one
    names = {k.removeprefix(root + "/") for k in keys if k.startswith(root)}
    assert {"dataset.json", "samples.parquet", "shards.parquet", "rejects.parquet", "scenes.png", "report.md"} <= names
    tars = sorted(n for n in names if n.endswith(".tar"))
    assert len(tars) == 12
    assert "![scenes](scenes.png)" in s3.cat(f"{root}/report.md").decode()  # the report shows the staged sheets

    run_synth(config, str(tmp_path / "local"), workers=2)  # the same config on a local disk: the same bytes
    assert {n: s3.cat(f"{root}/{n}") for n in tars} == _tars(tmp_path / "local")

    ok = CliRunner().invoke(app, ["validate", url])  # the run URL: its LATEST version
    assert ok.exit_code == 0, ok.output
    assert f"ok: 24 samples in {url}/versions/{vid}" in ok.output

    # an interrupted version (no dataset.json, one shard lost) is resumed, by Dask worker processes writing to S3
    # themselves: only the missing shard is written again
    first = s3.info(f"{root}/{tars[0]}")["LastModified"]
    s3.rm([f"{root}/dataset.json", f"{root}/{tars[5]}"])
    s3.rm(f"{BUCKET}/run/LATEST")
    time.sleep(1.1)  # S3 times have 1 s resolution
    again = run_synth(config, url, workers=2, work_dir=str(tmp_path / "work"), task_runner="dask")  # workers write S3
    assert again["status"] == "resume" and again["version"] == vid and again["validated"] == 24
    s3.invalidate_cache()
    assert s3.info(f"{root}/{tars[0]}")["LastModified"] == first  # skipped, not rewritten
    assert s3.info(f"{root}/{tars[5]}")["LastModified"] > first
    assert s3.cat(f"{root}/{tars[5]}") == _tars(tmp_path / "local")[tars[5]]
    assert run_synth(config, url, workers=2, work_dir=str(tmp_path / "work"))["status"] == "unchanged"

    train = tiny_train_config("eel").model_dump(mode="json") | {"device": "cpu"}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    out = tmp_path / "train"
    args = ["train", "--config", str(tmp_path / "train.yaml"), "--shards", url, "--out-dir", str(out), "--fresh"]
    trained = CliRunner().invoke(app, args)
    assert trained.exit_code == 0, trained.output
    metrics = yaml.safe_load((out / "metrics.json").read_text())
    assert metrics["shards"] == f"{url}/versions/{vid}" and metrics["steps"] == 4
    rank = yaml.safe_load((out / "ranks" / "rank0.json").read_text())
    assert sorted(rank["shards"]) == tars  # streamed every shard from S3
    assert read_checkpoint(out / "model.pt")["shards"] == f"{url}/versions/{vid}"

    s3.pipe(f"{root}/{tars[3]}", s3.cat(f"{root}/{tars[3]}")[:-1024])  # truncated behind the manifest's back
    bad = CliRunner().invoke(app, ["validate", url])
    assert bad.exit_code == 1 and f"{tars[3]}: sha256 differs from shards.parquet" in bad.output


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_version_that_fails_validation_is_not_complete_and_the_next_run_resumes_it(where, tmp_path, monkeypatch):
    """``dataset.json`` (what makes a version complete for every reader) appears only after validation: a version
    that failed it is neither published nor taken by a reader that falls back to the newest complete version. On a
    local disk and on a non-local filesystem (fsspec's in-memory one: the flow runs with threads, in this process)."""
    import uuid

    import tasks.synth.version as version_module
    from flows.synth import run_synth
    from tasks.storage import Store
    from tasks.versions import resolve_version

    url = f"memory://af-{uuid.uuid4().hex[:8]}/run" if where == "memory" else str(tmp_path / "run")
    config, work = _config(tmp_path), str(tmp_path / "work") if where == "memory" else None
    monkeypatch.setattr(
        version_module, "validate_shard_set", lambda shard_dir: (0, [f"{shard_dir}: an injected problem"])
    )
    with pytest.raises(RuntimeError, match="1 validation problems"):
        run_synth(config, url, workers=2, work_dir=work)
    store = Store(url)
    (vid,) = store.listdir("versions")
    assert store.isfile(f"versions/{vid}/shards.parquet") and not store.isfile(f"versions/{vid}/dataset.json")
    assert "LATEST" not in store.listdir() and "shards" not in store.listdir()
    with pytest.raises(FileNotFoundError, match="neither a shard version nor a run directory with a complete"):
        resolve_version(url)
    monkeypatch.undo()
    res = run_synth(config, url, workers=2, work_dir=work)
    assert res["status"] == "resume" and res["version"] == vid and store.read_text("LATEST") == f"{vid}\n"
    assert resolve_version(url) == str(store.path(f"versions/{vid}")) == res["shard_dir"]
    assert res["report"] == str(store.path(f"versions/{vid}/report.md")) and store.isfile(f"versions/{vid}/report.md")
