"""Every path of a run directory, in one place. A run directory (a local folder or an fsspec URL) holds::

    versions/<vNNNN-hash>/     shard-set versions (shards, manifests, report; complete once dataset.json is there)
    LATEST                     the id of the published version
    shards -> versions/<id>    the same as a symlink (local runs only)
    compare/                   make compare: tables, charts, and models/ (the trained heads it reuses)
    train/<method>-<id>/       anomalyforge train on a version of this run (its default output)

and, on this machine (the run directory itself when it is local, else a work directory):

    scenes/                    rendered demo scenes, the pseudo-label cache, video frames
    objects/                   the object bank
    generated/                 the diffusion object store
    staging/<id>/              a remote version's manifests and sheets before they are uploaded

A plain shard directory (no ``versions/``: ``<dir>/dataset.json`` beside the shards) belongs to the folder it sits in.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tasks.storage import Store, is_url

VERSIONS = "versions"
LATEST = "LATEST"
LATEST_LINK = "shards"


def default_work_dir(run_url: str) -> Path:
    """The local directory of a remote run's scenes, object bank and staged files (``$ANOMALYFORGE_CACHE``, default
    ``~/.cache/anomalyforge``, then ``runs/<the URL as a name>-<its hash>``)."""
    cache = Path(os.environ.get("ANOMALYFORGE_CACHE") or Path.home() / ".cache" / "anomalyforge")
    tag = hashlib.sha256(run_url.encode()).hexdigest()[:8]  # s3://a/b_c and s3://a_b/c share a readable name
    return cache / "runs" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', run_url)}-{tag}"


@dataclass(frozen=True)
class RunLayout:
    """The paths of the run at ``root`` (a local path or an fsspec URL); ``work`` is where its local parts live."""

    root: str
    work: Path

    @classmethod
    def of(cls, run_dir: str | Path, work_dir: str | Path | None = None) -> RunLayout:
        """The run at ``run_dir``; a remote run keeps its local parts in ``work_dir`` (default
        ``default_work_dir``), a local one in itself."""
        store = Store(run_dir)
        root = store.url if not store.local else str(run_dir)
        if work_dir:
            return cls(root, Path(work_dir))
        return cls(root, Path(run_dir) if store.local else default_work_dir(store.url))

    @classmethod
    def candidates_for_version(cls, version: str | Path) -> list[RunLayout]:
        """The runs a local ``version`` may belong to, most likely first: ``<run>/versions/<id>`` (a versioned run)
        and the folder a plain shard directory sits in."""
        if is_url(version):
            raise ValueError(f"{version}: the run of a remote version cannot be guessed; name its paths explicitly")
        v = Path(version)
        return [cls.of(v.parent.parent), cls.of(v.parent)]

    @classmethod
    def of_version(cls, version: str | Path) -> RunLayout:
        """The run of a local version made by ``anomalyforge synth`` (``<run>/versions/<id>``)."""
        return cls.candidates_for_version(version)[0]

    # ---------------------------------------------------------------- in the run directory (local or remote)
    @property
    def latest(self) -> str:
        return _join(self.root, LATEST)

    @property
    def latest_link(self) -> str:
        return _join(self.root, LATEST_LINK)

    def compare(self, versus: list[str] | tuple[str, ...] = ()) -> Path:
        """``make compare``'s folder: ``compare/``, or ``compare-vs-<a>-<b>`` when other versions are compared."""
        return Path(self.root) / ("compare-vs-" + "-".join(versus) if versus else "compare")

    @property
    def compare_models(self) -> Path:
        return self.compare() / "models"

    def train(self, method: str, version_id: str) -> Path:
        return Path(self.root) / "train" / f"{method}-{version_id}"

    # ---------------------------------------------------------------- on this machine
    @property
    def scenes(self) -> Path:
        return self.work / "scenes"

    @property
    def objects(self) -> Path:
        return self.work / "objects"

    @property
    def generated(self) -> Path:
        return self.work / "generated"

    def staging(self, version_id: str) -> Path:
        return self.work / "staging" / version_id


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if is_url(root) else str(Path(root).joinpath(*parts))
