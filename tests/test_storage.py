"""``tasks.storage.Store`` (local paths and fsspec URLs) and shard versions on a non-local filesystem (fsspec's
in-memory one: no server, no disk)."""

from __future__ import annotations

import hashlib
import io
import json
import uuid

import fsspec
import pytest

from tasks.sample_format import DATASET
from tasks.storage import HashingReader, Store, is_url
from tasks.versions import (
    LATEST,
    latest_version,
    list_versions,
    plan_version,
    prune_versions,
    publish_version,
    resolve_version,
)


@pytest.fixture
def mem_url():
    url = f"memory://af-{uuid.uuid4().hex[:8]}/run"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path, mem_url) -> Store:
    return Store(tmp_path / "s" if request.param == "local" else mem_url)


def test_is_url_tells_urls_from_paths():
    assert is_url("s3://b/run") and is_url("memory://x") and not is_url("runs/demo") and not is_url("/abs/p")


def test_a_store_reads_back_what_it_wrote_and_lists_names_directly_under_a_folder(store):
    store.write_bytes("a/b.bin", b"\x00\x01")
    store.write_bytes("a/c/d.txt", b"deep")
    store.write_bytes("top.json", b"{}")
    assert store.read_bytes("a/b.bin") == b"\x00\x01" and store.read_text("a/c/d.txt") == "deep"
    assert store.listdir("a") == ["b.bin", "c"] and store.listdir("nope") == []
    assert store.isfile("a/b.bin") and not store.isfile("a/c") and store.isdir("a/c") and store.size("top.json") == 2
    assert store.listdir("top.json") == []  # a file has nothing under it
    store.rm("a")
    assert not store.exists("a") and store.listdir() == ["top.json"]
    store.rm("a")  # nothing there: no error
    with pytest.raises(FileNotFoundError, match="nope.bin does not exist"):
        store.read_bytes("nope.bin")


def test_a_write_that_fails_leaves_no_object_under_the_final_name_and_no_temporary_one(mem_url, monkeypatch):
    store = Store(mem_url)
    store.write_bytes("shard.tar", b"old")

    def broken_move(*a, **k):
        raise OSError("connection reset")

    monkeypatch.setattr(store.fs, "mv", broken_move)
    with pytest.raises(OSError, match="connection reset"):
        store.write_bytes("shard.tar", b"new and longer")
    with pytest.raises(OSError, match="connection reset"):
        store.write_bytes("fresh.tar", b"never whole")
    assert store.read_bytes("shard.tar") == b"old"  # the reader still sees the old, whole object
    assert store.listdir() == ["shard.tar"]  # neither fresh.tar nor a .tmp- key


def test_upload_dir_writes_every_visible_file_or_just_those_named_and_never_hidden_ones(tmp_path, mem_url):
    src = tmp_path / "stage"
    (src / "sub").mkdir(parents=True)
    (src / ".partial").mkdir()
    for name in (".dataset.json.pending", "samples.parquet", "sub/x.png", ".partial/half.tar", "report.md"):
        (src / name).write_bytes(name.encode())
    store = Store(mem_url)
    assert store.upload_dir(src, "v1") == ["report.md", "samples.parquet", "sub/x.png"]
    assert store.read_text("v1/sub/x.png") == "sub/x.png"
    assert store.listdir("v1") == ["report.md", "samples.parquet", "sub"]  # nothing hidden, no .tmp- key
    assert store.upload_dir(src, "v2", only={"report.md", "generated.jpg"}) == ["report.md"]
    assert store.listdir("v2") == ["report.md"]


def test_put_file_copies_a_local_file_under_its_name(store, tmp_path):
    (tmp_path / "f.tar").write_bytes(b"tar bytes")
    store.put_file(tmp_path / "f.tar", "deep/f.tar")
    assert store.read_bytes("deep/f.tar") == b"tar bytes" and store.listdir("deep") == ["f.tar"]


def test_the_hashing_reader_hashes_the_whole_stream_even_what_was_not_read():
    data = bytes(range(256)) * 5000
    r = HashingReader(io.BytesIO(data))
    assert r.read(10) == data[:10]
    assert r.hexdigest() == hashlib.sha256(data).hexdigest() and r.bytes == len(data)


def _complete(v, content_hash):
    Store(v.path).write_bytes(DATASET, json.dumps({"content_hash": content_hash, "parent_version": None}).encode())


def test_versions_on_a_remote_filesystem_plan_resume_publish_resolve_and_prune(mem_url):
    """The lifecycle ``tests/test_diffusion.py`` checks on a local disk, where there are no directories or
    symlinks: ``LATEST`` alone names the latest version and a run URL resolves through it."""
    a = plan_version(mem_url, "a" * 64)
    assert a.status == "new" and a.version.path == f"{mem_url}/versions/v0001-aaaaaaaa"
    assert plan_version(mem_url, "a" * 64).status == "resume"  # .content marker, no dataset.json yet
    with pytest.raises(FileNotFoundError, match="run is neither a shard version nor a run directory"):
        resolve_version(mem_url)
    with pytest.raises(ValueError, match="not complete"):
        publish_version(mem_url, a.version)
    _complete(a.version, "a" * 64)
    publish_version(mem_url, a.version)
    run = Store(mem_url)
    assert run.read_text(LATEST) == "v0001-aaaaaaaa\n" and "shards" not in run.listdir()
    assert plan_version(mem_url, "a" * 64).status == "unchanged"
    assert resolve_version(mem_url) == a.version.path == resolve_version(a.version.path)
    ids = []
    for h in "bcd":
        p = plan_version(mem_url, h * 64)
        assert p.parent == (ids[-1] if ids else a.version.id)
        _complete(p.version, h * 64)
        publish_version(mem_url, p.version)
        ids.append(p.version.id)
    assert [v.id for v in list_versions(mem_url)] == [a.version.id, *ids] and latest_version(mem_url).id == ids[-1]
    assert resolve_version(mem_url).endswith(ids[-1])
    assert prune_versions(mem_url, keep=2) == [a.version.id, ids[0]]
    assert [v.id for v in list_versions(mem_url)] == ids[1:] and run.listdir(f"versions/{ids[0]}") == []
    run.write_bytes(LATEST, f"{ids[1]}\n".encode())  # the published version is older than the newest complete one
    assert prune_versions(mem_url, keep=1) == [] and resolve_version(mem_url).endswith(ids[1])


def test_a_run_whose_latest_names_a_missing_version_is_an_error_naming_both(mem_url):
    Store(mem_url).write_bytes(LATEST, b"v0007-deadbeef\n")
    with pytest.raises(FileNotFoundError, match=r"LATEST names v0007-deadbeef, which is not a complete version"):
        resolve_version(mem_url)


def test_an_unreadable_manifest_is_a_problem_naming_it_not_a_crash(mem_url):
    from tasks.synth.validate import validate_shard_set

    store = Store(mem_url)
    for name in ("shards.parquet", "samples.parquet"):
        store.write_bytes(name, b"not parquet")
    checked, problems = validate_shard_set(mem_url)
    assert checked == 0 and len(problems) == 1
    assert problems[0].startswith(f"{mem_url}/shards.parquet: not a readable parquet table")


def _version_with_shards(url, shard_samples: dict[str, int]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def table(rows):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        return buf.getvalue()

    store = Store(url)
    store.write_bytes("shards.parquet", table([{"shard": s} for s in shard_samples]))
    keys = [{"key": f"{s[:-4]}-{i}", "shard": s} for s, n in shard_samples.items() for i in range(n)]
    store.write_bytes("samples.parquet", table(keys))
    store.write_bytes(DATASET, b"{}")


def test_a_multi_process_run_whose_process_would_get_no_training_sample_stops_before_it_starts(mem_url):
    """Rank 1 of 2 would stream shard-1 and shard-3, which hold no sample (every sample of theirs was
    quarantined): its stream would never yield and rank 0 would wait for it in the all-reduce forever."""
    from tasks.shardset import ShardDataError
    from tasks.train.data import check_rank_splits

    _version_with_shards(mem_url, {"shard-0.tar": 3, "shard-1.tar": 0, "shard-2.tar": 2, "shard-3.tar": 0})
    check_rank_splits(mem_url, 0.0, 1)  # one process streams all four
    with pytest.raises(ShardDataError, match=r"shards of process 1 of 2 \(shard-1.tar, shard-3.tar\) hold no training"):
        check_rank_splits(mem_url, 0.0, 2)
    with pytest.raises(ShardDataError, match=r"process 1 of 3 \(shard-1.tar\)"):  # 0: shard-0, -3; 1: shard-1
        check_rank_splits(mem_url, 0.0, 3)
    _version_with_shards(mem_url, {"shard-0.tar": 3, "shard-1.tar": 0, "shard-2.tar": 2, "shard-3.tar": 1})
    check_rank_splits(mem_url, 0.0, 2)  # rank 1 has shard-3's sample
