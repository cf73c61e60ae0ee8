"""WebDataset shard writing (atomic, deterministic) and the parquet manifests of a shard set.

A shard is written by ``webdataset.ShardWriter`` (``mtime=0``, fixed owner and mode, so the bytes depend
only on the samples) into ``.partial/`` and renamed to its final name only once closed: a reader never
sees a half-written ``shard-*.tar``.

Shard-set layout::

    shard-000000.tar ...    samples in the format of ``tasks.sample_format``
    samples.parquet         one row per sample (key, shard, scene, objects, boxes, ...)
    shards.parquet          one row per shard (name, sha256, samples, bytes)
    rejects.parquet         quarantined items with stage and reason
    dataset.json            config, config hash, code version, counts
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from data_manifests.parquet import REJECT_SCHEMA
from schemas import RejectRecord
from tasks.imageio import atomic_path
from tasks.storage import Store, writing

PARTIAL_DIR = ".partial"  # shards being written
PARTS_DIR = ".parts"  # records of finished shards, what a re-run skips


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_key(key: str) -> str:
    if "." in key or "/" in key or not key:
        raise ValueError(f"sample key {key!r} must be non-empty and contain no dots or slashes")
    return key


def write_tar_shard(final: str | Path, samples: list[dict]) -> tuple[str, int]:
    """Write ``samples`` (dicts with ``__key__`` and bytes values) to ``final`` atomically.

    Returns (sha256, size in bytes). Any error removes the ``.partial`` file; one about where it goes (a full disk,
    no permission, …) is a one-line ``RunDirError`` naming ``final`` (the shards finished before it stay: the same
    command resumes).
    """
    final = Path(final)
    partial = final.parent / PARTIAL_DIR
    pattern = str(partial / f"{final.name}.%d.partial")
    tmp = Path(pattern % 0)  # no count or size limit is reached: everything goes into the first file
    with writing(final):
        try:
            partial.mkdir(parents=True, exist_ok=True)
            writer = wds.ShardWriter(
                pattern, maxcount=len(samples) + 1, maxsize=float("inf"), verbose=0, mtime=0, mode=0o444, encoder=False
            )
            try:
                for s in samples:
                    check_key(s["__key__"])
                    writer.write(s)
            except BaseException:
                with contextlib.suppress(Exception):  # the first error is the one to report
                    writer.close()
                raise
            writer.close()
            digest = sha256_of(tmp)
            size = tmp.stat().st_size
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    return digest, size


def store_tar_shard(store: Store, name: str, samples: list[dict]) -> tuple[str, int]:
    """``write_tar_shard`` into a local or remote shard set: a remote shard is written to a local temporary
    directory, then uploaded atomically (``Store.put_file``). Returns (sha256, size in bytes)."""
    if store.local:
        return write_tar_shard(store.path(name), samples)
    with tempfile.TemporaryDirectory(prefix="anomalyforge-shard-") as tmp:
        digest, size = write_tar_shard(Path(tmp) / name, samples)
        store.put_file(Path(tmp) / name, name)
    return digest, size


def json_bytes(obj) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def write_json_atomic(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(json_bytes(obj))


def write_table(path: str | Path, rows: list[dict], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path) -> list[dict]:
    """Rows of a parquet file (a path or an open binary file; ``Store.read_parquet`` for a URL)."""
    return pq.read_table(path).to_pylist()


def write_rejects(path: str | Path, rejects: list[RejectRecord]) -> None:
    write_table(path, [r.model_dump() for r in rejects], REJECT_SCHEMA)


def read_rejects(path: str | Path) -> list[RejectRecord]:
    return [RejectRecord(**r) for r in read_table(path)]
