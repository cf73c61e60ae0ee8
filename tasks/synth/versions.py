"""Versioned shard sets under one run directory.

Layout::

    <run_dir>/versions/v0001-<hash8>/   a complete shard set (its dataset.json says version, parent, hashes)
    <run_dir>/versions/v0002-<hash8>/   ...
    <run_dir>/shards -> versions/v0002-<hash8>   the latest complete version (symlink, replaced atomically)
    <run_dir>/LATEST                    its id, for tools that do not follow symlinks

A version's ``content_hash`` covers the config and the object bank, i.e. everything its bytes depend on.
A run whose content equals the latest version makes no new version; an interrupted version with the same
content is resumed in place; anything else starts version n+1 with the latest as its parent. Retention
keeps the newest ``keep`` complete versions (never the latest, never one being written).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tasks.sample_format import DATASET

VERSIONS = "versions"
LATEST = "LATEST"
LATEST_LINK = "shards"
_NAME = re.compile(r"^v(\d{4,})-([0-9a-f]{8})$")


@dataclass(frozen=True)
class Version:
    id: str
    number: int
    path: Path
    complete: bool
    content_hash: str | None  # full hash, from dataset.json (complete) or the .content marker


def _read_content(path: Path) -> str | None:
    ds, marker = path / DATASET, path / ".content"
    if ds.is_file():
        return json.loads(ds.read_text()).get("content_hash")
    return marker.read_text().strip() if marker.is_file() else None


def list_versions(run_dir: str | Path) -> list[Version]:
    root = Path(run_dir) / VERSIONS
    out = []
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        m = _NAME.match(p.name)
        if m and p.is_dir():
            out.append(Version(p.name, int(m.group(1)), p, (p / DATASET).is_file(), _read_content(p)))
    return sorted(out, key=lambda v: v.number)


def latest_version(run_dir: str | Path) -> Version | None:
    done = [v for v in list_versions(run_dir) if v.complete]
    return done[-1] if done else None


def resolve_version(shards: str | Path) -> str:
    """A version directory, a run directory (→ its latest complete version) or an fsspec URL of a version."""
    s = str(shards)
    if "://" in s:
        return s
    p = Path(s)
    if (p / DATASET).is_file():
        return str(p.resolve())
    v = latest_version(p)
    if v is None:
        why = (
            "does not exist"
            if not p.exists()
            else "is neither a shard version nor a run directory with a complete version"
        )
        raise FileNotFoundError(f"{p} {why}")
    return str(v.path.resolve())


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
    path = Path(run_dir) / VERSIONS / vid
    path.mkdir(parents=True, exist_ok=False)
    (path / ".content").write_text(content_hash + "\n")
    return VersionPlan(Version(vid, n, path, False, content_hash), latest.id if latest else None, "new")


def _parent_of(v: Version) -> str | None:
    return json.loads((v.path / DATASET).read_text()).get("parent_version") if v.complete else None


def publish_version(run_dir: str | Path, version: Version) -> None:
    """Point ``shards`` and ``LATEST`` at a complete version (each replaced atomically)."""
    run_dir = Path(run_dir)
    if not (version.path / DATASET).is_file():
        raise ValueError(f"{version.path} is not complete (no {DATASET}); not publishing it")
    link, tmp = run_dir / LATEST_LINK, run_dir / f".{LATEST_LINK}.tmp"
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a symlink (a shard set from an older layout?); move it away")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(Path(VERSIONS) / version.id)
    os.replace(tmp, link)
    latest_tmp = run_dir / f".{LATEST}.tmp"
    latest_tmp.write_text(version.id + "\n")
    os.replace(latest_tmp, run_dir / LATEST)


def prune_versions(run_dir: str | Path, keep: int, protect: str | None = None) -> list[str]:
    """Delete complete versions older than the newest ``keep`` and abandoned incomplete ones older than the
    latest complete version; never the latest or ``protect``. Returns the ids removed."""
    if keep < 1:
        raise ValueError(f"retention must keep at least 1 version, got {keep}")
    versions = list_versions(run_dir)
    latest = latest_version(run_dir)
    complete = [v for v in versions if v.complete]
    doomed = complete[: max(0, len(complete) - keep)]
    if latest is not None:
        doomed += [v for v in versions if not v.complete and v.number < latest.number]
    removed = []
    for v in doomed:
        if latest is not None and v.id == latest.id or v.id == protect:
            continue
        shutil.rmtree(v.path)
        removed.append(v.id)
    return removed
