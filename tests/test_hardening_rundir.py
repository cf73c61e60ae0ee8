"""A run directory that cannot be written: a file, read-only, or on a full disk. Each stops the run with one line
(``RunDirError``, a ``BadInputError``: the command line prints it without a traceback) that names the path and the
problem, and leaves nothing half-written behind; a full disk keeps the finished shards, so the same command resumes.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from schemas import SynthConfig
from tasks.imageio import BadInputError, atomic_path, write_bytes_atomic, write_gray
from tasks.layout import LATEST
from tasks.runlock import run_lock
from tasks.sample_format import DATASET
from tasks.shards import write_json_atomic, write_table, write_tar_shard
from tasks.storage import RunDirError, Store
from tasks.synth import writer as writer_module
from tasks.synth.version import make_version
from tasks.versions import list_versions, plan_version, publish_version
from tests.helpers import tiny_synth_config

ENOSPC = OSError(errno.ENOSPC, "No space left on device")
FULL = r"no space left on device \(\d+(\.\d+)? [kMGT]?B free on /[^)]*\); free space and run the same command again to resume"


def _one_line(e: pytest.ExceptionInfo, pattern: str) -> None:
    """The error is a user error the command line prints as one line, and says ``pattern`` (the whole line)."""
    assert isinstance(e.value, BadInputError)
    assert "\n" not in str(e.value)
    assert re.fullmatch(pattern, str(e.value)), str(e.value)


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _half_written(root: Path) -> list[str]:
    """Files being written: ``.partial/*.partial`` shards, ``.name.*.partial`` and ``.name.tmp-*`` temporaries."""
    return [
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and re.search(r"\.partial$|\.tmp-", p.name)
    ]


# ---------------------------------------------------------------- a file where the run directory should be


def test_a_run_dir_that_is_a_file_is_one_line_naming_it_before_anything_is_written(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"not a run")
    for enter in (lambda: make_version(SynthConfig(), str(f)), lambda: run_lock(f).__enter__()):
        with pytest.raises(RunDirError) as e:
            enter()
        _one_line(e, re.escape(f"{f}: the run directory is a file, not a directory"))
    back = pickle.loads(pickle.dumps(e.value))  # as a Dask worker sends it back
    assert type(back) is RunDirError and str(back) == str(e.value) and back.path == str(f)
    with pytest.raises(RunDirError) as e:  # a write into it, without the lock
        Store(f).write_bytes("LATEST", b"v0001\n")
    _one_line(e, re.escape(f"{f}/LATEST: cannot write here ({f} is a file, not a directory)"))
    assert f.read_bytes() == b"not a run" and _files(tmp_path) == ["file"]
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "gone")
    with pytest.raises(RunDirError) as e:
        make_version(SynthConfig(), str(dangling))
    _one_line(e, re.escape(f"{dangling}: the run directory is a link to {tmp_path}/gone, which does not exist"))


def test_a_run_dir_under_a_file_is_one_line_naming_both(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"not a folder")
    run = f / "runs" / "demo"
    with pytest.raises(RunDirError) as e:
        make_version(SynthConfig(), str(run))
    _one_line(e, re.escape(f"{run}: cannot make the run directory ({f} is a file, not a directory)"))
    with pytest.raises(RunDirError) as e:
        write_bytes_atomic(run / "x.json", b"{}")
    _one_line(e, re.escape(f"{run}/x.json: cannot write here ({f} is a file, not a directory)"))
    assert f.read_bytes() == b"not a folder" and _files(tmp_path) == ["file"]


# ---------------------------------------------------------------- a read-only run directory


def _read_only(run: Path, monkeypatch) -> None:
    """``run`` refuses new entries: chmod 0o555, or, as root (whom the mode does not stop), ``os.open`` and
    ``os.mkdir`` refusing to create anything directly in it as the kernel would (EACCES)."""
    if os.geteuid() != 0:
        run.chmod(0o555)  # the fixture puts the mode back
        return

    def refused(path) -> bool:
        p = Path(os.path.abspath(os.fsdecode(path)))
        return p.parent == run and not p.exists()

    real_open, real_mkdir = os.open, os.mkdir

    def guarded_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and "dir_fd" not in kwargs and refused(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if refused(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


@pytest.fixture
def read_only_run(tmp_path, monkeypatch):
    run = tmp_path / "ro"
    run.mkdir()
    yield run, lambda: _read_only(run, monkeypatch)
    monkeypatch.undo()
    run.chmod(0o755)


@pytest.mark.parametrize("left_lock", [False, True], ids=["fresh", "lock-of-an-earlier-run"])
def test_a_read_only_run_dir_stops_at_the_lock_naming_it(read_only_run, left_lock):
    run, make_read_only = read_only_run
    if left_lock:  # the lock file of an earlier run can still be opened; writing beside it cannot
        (run / ".lock").touch()
    before = _files(run)
    make_read_only()
    with pytest.raises(RunDirError) as e:
        make_version(SynthConfig(), str(run))  # before any scene or object-bank work
    _one_line(e, re.escape(f"{run}: cannot write here (permission denied)"))
    assert _files(run) == before


# ---------------------------------------------------------------- a full disk


@pytest.mark.parametrize(
    ("code", "problem"),
    [
        (errno.ENOSPC, FULL),
        (errno.EDQUOT, FULL.replace("no space left on device", "disk quota exceeded")),
        (errno.EROFS, r"cannot write here \(read-only file system at /[^)]*\)"),
        (errno.EACCES, r"cannot write here \(permission denied\)"),
    ],
)
def test_the_atomic_writers_name_the_file_and_the_problem_and_leave_no_temporary_file(
    tmp_path, monkeypatch, code, problem
):
    real_write_bytes = Path.write_bytes

    def fail_after_some_bytes(path):
        real_write_bytes(Path(path), b"half")  # what had been written when the disk filled
        raise OSError(code, os.strerror(code))

    out = tmp_path / "out"
    table = pa.schema([("key", pa.string())])
    writes = {
        "bytes": lambda p: write_bytes_atomic(p, b"{}"),
        "gray": lambda p: write_gray(p, np.zeros((4, 4), np.uint8)),
        "json": lambda p: write_json_atomic(p, {"a": 1}),
        "parquet": lambda p: write_table(p, [{"key": "a"}], table),
        "store": lambda p: Store(p.parent).write_bytes(p.name, b"x"),
        "store-put": lambda p: Store(p.parent).put_file(tmp_path / "src.bin", p.name),
    }
    (tmp_path / "src.bin").write_bytes(b"payload")

    def full_write_bytes(self, data):
        real_write_bytes(self, data[:1])
        raise OSError(code, os.strerror(code))

    def full_parquet(table, where, *args, **kwargs):
        fail_after_some_bytes(where)

    def full_copy(self, src, dst, *args, **kwargs):
        fail_after_some_bytes(dst)

    monkeypatch.setattr(Path, "write_bytes", full_write_bytes)
    monkeypatch.setattr(pq, "write_table", full_parquet)
    monkeypatch.setattr(type(Store(tmp_path).fs), "copy", full_copy)
    for name, write in writes.items():
        final = out / f"{name}.bin"
        with pytest.raises(RunDirError) as e:
            write(final)
        _one_line(e, re.escape(str(final)) + ": " + problem)
        assert _files(out) == [], name  # no temporary file, nothing under the final name
    with pytest.raises(RunDirError) as e:  # whatever the block writes with
        with atomic_path(out / "block.bin") as tmp:
            fail_after_some_bytes(tmp)
    _one_line(e, re.escape(str(out / "block.bin")) + ": " + problem)
    assert _files(out) == []


def test_a_full_disk_in_a_shard_stops_the_run_naming_it_keeps_finished_shards_and_the_same_command_resumes(
    tmp_path, monkeypatch
):
    cfg = tiny_synth_config(tmp_path)  # 10 samples, 4 a shard: shards 0, 1 and 2
    run = tmp_path / "run"
    real_write = wds.ShardWriter.write

    def disk_full_in_shard_1(self, obj):
        if "shard-000001" in self.pattern and self.count >= 1:  # its first sample is in the file already
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, obj)

    monkeypatch.setattr(wds.ShardWriter, "write", disk_full_in_shard_1)
    with pytest.raises(RunDirError) as e:
        make_version(cfg, str(run))
    (v,) = list_versions(run)
    _one_line(e, re.escape(f"{v.path}/shard-000001.tar") + ": " + FULL)
    assert _half_written(run) == []  # no .partial/*.partial, no hidden temporary file
    assert (v.path / "shard-000000.tar").is_file() and (v.path / ".parts/shard-000000.tar.json").is_file()
    assert not (v.path / "shard-000001.tar").exists() and not (run / LATEST).exists()

    # a write error while a sample is composed is not that sample's fault: the run stops, nothing is quarantined
    monkeypatch.setattr(wds.ShardWriter, "write", real_write)
    real_load = writer_module.load_scene

    def cache_disk_full(ref, **kw):
        raise RunDirError(Path(ref.image).parent / "cache.png", "no space left on device")

    monkeypatch.setattr(writer_module, "load_scene", cache_disk_full)
    with pytest.raises(RunDirError, match="cache.png: no space left on device"):
        make_version(cfg, str(run))
    assert not (v.path / "shard-000001.tar").exists() and _half_written(run) == []

    monkeypatch.setattr(writer_module, "load_scene", real_load)
    summary = make_version(cfg, str(run)).summary  # the same command, with space again: resumes the version
    assert summary["status"] == "resume" and summary["version"] == v.id
    assert summary["samples"] == 10 and summary["rejects"] == 0
    assert (run / LATEST).read_text().strip() == v.id and _half_written(run) == []


def test_write_tar_shard_leaves_no_partial_file_on_any_error(tmp_path):
    final = tmp_path / "shard-000000.tar"
    with pytest.raises(ValueError, match="sample key 'a.b'"):
        write_tar_shard(final, [{"__key__": "ok", "txt": b"1"}, {"__key__": "a.b", "txt": b"2"}])
    assert [f for f in _files(tmp_path) if f != ".partial"] == []


def test_a_full_disk_when_a_version_is_planned_or_published_names_the_path_and_leaves_nothing_half_made(
    tmp_path, monkeypatch
):
    run = tmp_path / "run"
    (run / "versions").mkdir(parents=True)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "mkdir", full)
        with pytest.raises(RunDirError) as e:
            plan_version(run, "ab" * 32)
    _one_line(e, re.escape(f"{run}/versions/v0001-abababab") + ": " + FULL)
    assert _files(run) == ["versions"]
    with monkeypatch.context() as m:
        m.setattr(Path, "write_bytes", full)
        with pytest.raises(RunDirError) as e:
            plan_version(run, "ab" * 32)
    _one_line(e, re.escape(f"{run}/versions/v0001-abababab/.content") + ": " + FULL)
    assert _files(run) == ["versions"]  # no empty version folder that the next one would be numbered past

    plan = plan_version(run, "ab" * 32)
    (Path(plan.version.path) / DATASET).write_text("{}")
    with monkeypatch.context() as m:
        m.setattr(os, "replace", full)
        with pytest.raises(RunDirError) as e:
            publish_version(run, plan.version)
    _one_line(e, re.escape(f"{run}/shards") + ": " + FULL)
    assert _half_written(run) == [] and not (run / ".shards.tmp").is_symlink() and not (run / LATEST).exists()
