"""Versioned shard sets under one run directory.

Layout::

    <run_dir>/versions/v0001-<hash8>/   a complete shard set (its dataset.json says version, parent, hashes)
    <run_dir>/versions/v0002-<hash8>/   ...
    <run_dir>/shards -> versions/v0002-<hash8>   the latest complete version (symlink, replaced atomically)
    <run_dir>/LATEST                    its id, for tools that do not follow symlinks (and object stores)

``run_dir`` is a local directory or any fsspec URL (``s3://bucket/run``, ``tasks.storage``); an object store has
no symlinks, so there ``LATEST`` alone says which version is the latest, and every file is written atomically
(temporary key, then moved), so a reader never sees part of one.

A version is complete once its ``dataset.json`` is there; the synth flow puts it there only after the set has been
validated. A version's ``content_hash`` covers the config, the object bank and the scenes: everything its bytes
depend on.
A run whose content equals the latest version makes no new version; an interrupted version with the same
content is resumed in place; anything else starts version n+1 with the latest as its parent. Retention
keeps the newest ``keep`` complete versions (never the latest or the published one) and never touches a version
that is not complete: it may be another writer's in progress, or a killed run's that the same config resumes
(``anomalyforge synth`` holds the run directory's lock, ``tasks.runlock``, so only one run writes at a time).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tasks.layout import LATEST, LATEST_LINK, VERSIONS
from tasks.sample_format import DATASET
from tasks.storage import Store, writing

_NAME = re.compile(r"^v(\d{4,})-([0-9a-f]{8})$")


@dataclass(frozen=True)
class Version:
    id: str
    number: int
    path: Path | str  # a local Path, or the version's URL on an object store
    complete: bool
    content_hash: str | None  # full hash, from dataset.json (complete) or the .content marker


def _read_content(v: Store) -> str | None:
    if v.isfile(DATASET):
        return json.loads(v.read_text(DATASET)).get("content_hash")
    return v.read_text(".content").strip() if v.isfile(".content") else None


def list_versions(run_dir: str | Path) -> list[Version]:
    run = Store(run_dir)
    out = []
    for name in run.listdir(VERSIONS):
        m = _NAME.match(name)
        if m and run.isdir(f"{VERSIONS}/{name}"):
            v = run.child(f"{VERSIONS}/{name}")
            out.append(Version(name, int(m.group(1)), v.path(), v.isfile(DATASET), _read_content(v)))
    return sorted(out, key=lambda v: v.number)


def latest_version(run_dir: str | Path) -> Version | None:
    done = [v for v in list_versions(run_dir) if v.complete]
    return done[-1] if done else None


def resolve_version(shards: str | Path) -> str:
    """A version (directory or URL), or a run (→ the version its ``LATEST`` names; a run without one: its newest
    complete version). A local version comes back as an absolute path, a remote one as its URL."""
    store = Store(shards)
    if store.isfile(DATASET):
        return str(Path(store.path()).resolve()) if store.local else store.url
    if store.isfile(LATEST):
        vid = store.read_text(LATEST).strip()
        v = store.child(f"{VERSIONS}/{vid}")
        if not v.isfile(DATASET):
            raise FileNotFoundError(
                f"{store.path(LATEST)} names {vid}, which is not a complete version ({DATASET} missing)"
            )
        return str(Path(v.path()).resolve()) if v.local else v.url
    v = latest_version(shards)
    if v is None:
        why = (
            "does not exist"
            if not store.exists()
            else "is neither a shard version nor a run directory with a complete version"
        )
        raise FileNotFoundError(f"{store.path()} {why}")
    return str(Path(v.path).resolve()) if store.local else str(v.path)


@dataclass(frozen=True)
class VersionPlan:
    version: Version
    parent: str | None
    status: str  # "new" | "resume" | "unchanged"


def plan_version(run_dir: str | Path, content_hash: str) -> VersionPlan:
    """Where a run with ``content_hash`` writes (see the module docstring)."""
    versions = list_versions(run_dir)
    latest = latest_version(run_dir)
    if latest is not None and latest.content_hash == content_hash:
        return VersionPlan(latest, _parent_of(latest), "unchanged")
    for v in reversed(versions):
        if not v.complete and v.content_hash == content_hash:
            return VersionPlan(v, latest.id if latest else None, "resume")
    n = (versions[-1].number + 1) if versions else 1
    vid = f"v{n:04d}-{content_hash[:8]}"
    v = Store(run_dir).child(f"{VERSIONS}/{vid}")
    if v.exists():
        raise FileExistsError(f"{v.path()} exists but is not a version (no {DATASET}, no .content); move it away")
    if v.local:
        with writing(v.path()):
            Path(v.path()).mkdir(parents=True)
    try:
        v.write_bytes(".content", (content_hash + "\n").encode())
    except BaseException:
        if v.local:  # no empty version folder left behind to be numbered past
            with contextlib.suppress(OSError):
                Path(v.path()).rmdir()
        raise
    return VersionPlan(Version(vid, n, v.path(), False, content_hash), latest.id if latest else None, "new")


def _parent_of(v: Version) -> str | None:
    return json.loads(Store(v.path).read_text(DATASET)).get("parent_version") if v.complete else None


def publish_version(run_dir: str | Path, version: Version) -> None:
    """Point ``LATEST`` (and, on a local disk, the ``shards`` symlink) at a complete version, each replaced
    atomically."""
    run = Store(run_dir)
    if not Store(version.path).isfile(DATASET):
        raise ValueError(f"{version.path} is not complete (no {DATASET}); not publishing it")
    if run.local:
        run_dir = Path(run.path())
        link, tmp = run_dir / LATEST_LINK, run_dir / f".{LATEST_LINK}.tmp"
        if link.exists() and not link.is_symlink():
            raise FileExistsError(
                f"{link} exists and is not a symlink (a shard set from an older layout?); move it away"
            )
        with writing(link):
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            try:
                tmp.symlink_to(Path(VERSIONS) / version.id)
                os.replace(tmp, link)
            finally:
                if tmp.is_symlink():
                    tmp.unlink()
    run.write_bytes(LATEST, (version.id + "\n").encode())


def prune_versions(run_dir: str | Path, keep: int, protect: str | None = None) -> list[str]:
    """Delete complete versions older than the newest ``keep``; never the latest, the one ``LATEST`` names,
    ``protect``, or a version that is not complete. Returns the ids removed."""
    if keep < 1:
        raise ValueError(f"retention must keep at least 1 version, got {keep}")
    complete = [v for v in list_versions(run_dir) if v.complete]
    run = Store(run_dir)
    published = run.read_text(LATEST).strip() if run.isfile(LATEST) else None
    removed = []
    for v in complete[: max(0, len(complete) - keep)]:
        if v.id in {complete[-1].id, published, protect}:
            continue
        run.rm(f"{VERSIONS}/{v.id}")
        removed.append(v.id)
    return removed
