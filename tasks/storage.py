"""A directory tree on the local disk or behind any fsspec URL (``s3://bucket/run``, ``gs://…``, ``file://…``).

What a run's shard versions need of storage, and no more: read, list, delete, and write *atomically*. A write
goes to a hidden temporary key beside its final one (``.name.tmp-<random>``) and is moved onto the final key
only once complete: on object stores that is a server-side copy, so a reader listing or opening the final key
never sees part of an object (a crash leaves at most a hidden temporary key, which no reader asks for).

Credentials and endpoints are fsspec's and the cloud SDK's own (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, …;
``FSSPEC_S3_*`` for other s3fs options): nothing here is S3-specific.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from tasks.imageio import BadInputError, write_bytes_atomic


class RunDirError(BadInputError):
    """A run directory, or a file in it, that cannot be written: a file where a directory must be, no permission, a
    read-only file system, a full disk or quota. The message (one line, ``<path>: <problem>``) names the path and the
    problem; as a ``BadInputError`` the command line prints it without a traceback. It stops the run: it is never the
    fault of one sample, so nothing quarantines it."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}", reason="run_dir")
        self.path, self.problem = str(path), problem

    def __reduce__(self):  # to and from a Dask worker
        return type(self), (self.path, self.problem)


def _existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing one of ``path`` and its ancestors when it is not a directory (a file, or a link to one)."""
    found = _existing(path)
    return None if found.is_dir() else found


def _mount(path: Path) -> Path:
    p = _existing(Path(os.path.abspath(path)))
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units (kB, MB, GB, TB, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def free_space(path: str | Path) -> tuple[int, Path]:
    """Free bytes on the disk of ``path`` (or of its nearest existing ancestor), and that mount point."""
    where = _existing(Path(os.path.abspath(path)))
    return shutil.disk_usage(where).free, _mount(where)


def _free(path: Path) -> str:
    try:
        free, mount = free_space(path)
    except OSError:
        return f"unknown space free on {_mount(Path(path))}"
    return f"{human_bytes(free)} free on {mount}"


def check_run_dir(root: str | Path) -> None:
    """Refuse a local run directory that is a file, or one under a file (it could never be made)."""
    root = Path(root)
    blocker = _file_in_the_way(root)
    if blocker is None:
        return
    if blocker.is_symlink() and not blocker.exists():
        raise RunDirError(root, f"the run directory is a link to {os.readlink(blocker)}, which does not exist")
    if blocker == root:
        raise RunDirError(root, "the run directory is a file, not a directory")
    raise RunDirError(root, f"cannot make the run directory ({blocker} is a file, not a directory)")


def _concerns(path: Path, other: Path) -> bool:
    """Whether an error about ``other`` is one about writing ``path``: the path, a file in it (a directory's), a
    temporary file beside it, or a folder above it."""
    return other == path or other.parent in (path, path.parent) or other in path.parents


def write_error(path: str | Path, e: OSError) -> RunDirError | None:
    """What a failed write of ``path`` (a file, or the run directory itself) means for the user, or None when the
    error is not about where it was written (the caller re-raises it as it is)."""
    path = Path(path)
    code = e.errno
    if e.filename and not _concerns(path, Path(os.fsdecode(e.filename))):
        return None  # about another file (an input read while writing): not where this one goes
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
        return RunDirError(path, f"{what} ({_free(path)}); free space and run the same command again to resume")
    if code == errno.EROFS:
        return RunDirError(path, f"cannot write here (read-only file system at {_mount(path)})")
    if code in (errno.EACCES, errno.EPERM):
        return RunDirError(path, "cannot write here (permission denied)")
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_in_the_way(path.parent)
        if blocker is not None:
            return RunDirError(path, f"cannot write here ({blocker} is a file, not a directory)")
    if code == errno.EISDIR and path.is_dir():
        return RunDirError(path, "cannot write here (a directory of that name is in the way)")
    return None


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` of the block that ``write_error`` understands into its ``RunDirError`` naming ``path``."""
    try:
        yield
    except OSError as e:
        err = write_error(path, e)
        if err is None:
            raise
        raise err from e


def is_url(location: str | Path) -> bool:
    """A URL with a protocol (``s3://…``), as opposed to a local path."""
    return "://" in str(location)


class Store:
    """``location`` (a local path or an fsspec URL) and the files under it, addressed by relative names."""

    def __init__(self, location: str | Path):
        s = str(location)
        self.url = s.rstrip("/") if is_url(s) else str(Path(s))
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def path(self, rel: str = "") -> Path | str:
        """Where ``rel`` is: a ``Path`` on the local disk, else its URL (what readers and error messages take)."""
        if self.local:
            return Path(self.root) / rel if rel else Path(self.root)
        return f"{self.url}/{rel}" if rel else self.url

    def child(self, rel: str) -> Store:
        return Store(self.path(rel))

    def _key(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _fresh(self, rel: str = "") -> None:
        # listings of object stores are cached per process; another process (a Dask worker) may have written
        if not self.local:
            self.fs.invalidate_cache(self._key(rel))

    def isfile(self, rel: str) -> bool:
        self._fresh(rel)
        return self.fs.isfile(self._key(rel))

    def isdir(self, rel: str = "") -> bool:
        self._fresh(rel)
        return self.fs.isdir(self._key(rel))

    def exists(self, rel: str = "") -> bool:
        self._fresh(rel)
        return self.fs.exists(self._key(rel))

    def size(self, rel: str) -> int:
        return int(self.fs.size(self._key(rel)))

    def listdir(self, rel: str = "") -> list[str]:
        """The names directly under ``rel``, sorted (none when it does not exist)."""
        self._fresh(rel)
        key = self._key(rel).rstrip("/")
        try:
            entries = [e.rstrip("/") for e in self.fs.ls(key, detail=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        if entries == [key]:  # object stores list a file as itself
            return []
        return sorted({e.rsplit("/", 1)[-1] for e in entries} - {""})

    def open(self, rel: str, mode: str = "rb") -> IO[bytes]:
        if "r" not in mode:
            raise ValueError("Store.open is for reading; write with write_bytes or put_file (atomic)")
        try:
            return self.fs.open(self._key(rel), mode)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{self.path(rel)} does not exist") from e

    def read_bytes(self, rel: str) -> bytes:
        with self.open(rel) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        """A parquet table; an unreadable one is a ``ValueError`` naming it."""
        with self.open(rel) as f:
            try:
                return pq.read_table(f, columns=columns)
            except (pa.ArrowException, OSError) as e:
                raise ValueError(f"{self.path(rel)}: not a readable parquet table ({e})") from e

    def _tmp_key(self, rel: str) -> str:
        head, _, name = rel.rpartition("/")
        return self._key(
            f"{head}/.{name}.tmp-{uuid.uuid4().hex[:12]}" if head else f".{name}.tmp-{uuid.uuid4().hex[:12]}"
        )

    def write_bytes(self, rel: str, data: bytes) -> None:
        """``data`` under ``rel``, atomically (see the module docstring)."""
        if self.local:
            write_bytes_atomic(self.path(rel), data)
            return
        tmp = self._tmp_key(rel)
        try:
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, self._key(rel))
        except BaseException:
            self._discard(tmp)
            raise

    def put_file(self, local: str | Path, rel: str) -> None:
        """Copy the local file ``local`` to ``rel``, atomically."""
        if self.local:
            dest = Path(self.path(rel))
            tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}"
            with writing(dest):
                try:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self.fs.copy(str(local), str(tmp))
                    os.replace(tmp, dest)
                finally:
                    tmp.unlink(missing_ok=True)
            return
        tmp = self._tmp_key(rel)
        try:
            self.fs.put_file(str(local), tmp)
            self.fs.mv(tmp, self._key(rel))
        except BaseException:
            self._discard(tmp)
            raise

    def upload_dir(self, local_dir: str | Path, rel: str = "", only=None) -> list[str]:
        """The files under ``local_dir`` (hidden ones and hidden folders left out; just those named in ``only`` when
        given) to ``rel``, each atomically. Returns the relative names written."""
        local_dir = Path(local_dir)
        files = sorted(
            p.relative_to(local_dir).as_posix()
            for p in local_dir.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(local_dir).parts)
        )
        files = [f for f in files if only is None or f in only]
        for f in files:
            self.put_file(local_dir / f, f"{rel}/{f}" if rel else f)
        return files

    def rm(self, rel: str) -> None:
        """Delete ``rel`` and everything under it (nothing when it does not exist)."""
        self._fresh(rel)
        try:
            self.fs.rm(self._key(rel), recursive=True)
        except FileNotFoundError:
            pass
        self._fresh(rel)

    def _discard(self, key: str) -> None:
        try:
            if self.fs.exists(key):
                self.fs.rm(key)
        except FileNotFoundError:
            pass


class HashingReader:
    """A read-only stream over ``f`` that hashes (sha256) and counts what passes through it: a shard is checked
    against its manifest's digest in the same single pass that reads its samples (one download, not two)."""

    def __init__(self, f: IO[bytes]):
        self._f = f
        self._h = hashlib.sha256()
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._h.update(data)
        self.bytes += len(data)
        return data

    def hexdigest(self) -> str:
        """The digest of the whole stream: what was not read yet is read (and hashed) first."""
        while self.read(1 << 20):
            pass
        return self._h.hexdigest()
