"""One writer per run directory.

Two ``anomalyforge synth`` runs into one run directory would share its scenes, object bank and versions: one run's
retention could delete the other's version in progress, and the scenes of one would be composited under the
other's config. A run therefore holds the run directory's lock while it writes:

- on a local disk, an OS lock (``filelock``, ``flock``) on ``<run_dir>/.lock``: the OS releases it when the
  holder dies, so a killed run never leaves a lock that blocks the next one; ``.lock.json`` beside it says who
  holds it (host, pid, start time, command) for the message a second run prints;
- on object storage, which has no locks, a *lease*: ``<run_dir>/.lease.json`` with the holder and an expiry that a
  background thread renews (every ``lease_s / 3``). A lease past its expiry, or one held by a process of this host
  that no longer exists, is stale and taken over. Object stores offer no compare-and-swap through fsspec, so two
  runs starting within the same second may both write a lease; the one whose lease is read back wins and the
  other stops before writing anything.

A second run waits up to ``wait`` seconds (default: none) and then stops with ``RunLockedError`` naming the holder.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from tasks.runtime import request_stop
from tasks.storage import RunDirError, Store, check_run_dir, writing

log = logging.getLogger(__name__)

LOCK = ".lock"
HOLDER = ".lock.json"
LEASE = ".lease.json"

#: run directories held, by (path, thread) -> depth: the flow and ``make_version`` both ask for the lock
_HELD: dict[tuple[str, int], int] = {}
_HELD_GUARD = threading.Lock()


class RunLockedError(RuntimeError):
    """The run directory is being written by another run; the message names it and the holder."""


def _me(token: str) -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
        "token": token,
    }


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "a run that has not said who it is yet"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}" + (
        f" ({holder['command']})" if holder.get("command") else ""
    )


def _read_json(store: Store, rel: str) -> dict | None:
    try:
        return json.loads(store.read_text(rel))
    except (FileNotFoundError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _stale(holder: dict, now: float) -> str | None:
    """Why a lease is stale, or None when it is live."""
    expires = holder.get("expires")
    if not isinstance(expires, int | float):
        return "it has no expiry"
    if expires < now:
        return f"its lease expired {now - expires:.0f} s ago"
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int) and pid > 0 and not _pid_alive(pid):
        return "its process no longer exists"
    return None


@contextmanager
def run_lock(run_dir: str | Path, wait: float = 0.0, lease_s: float = 120.0) -> Iterator[None]:
    """Hold ``run_dir`` for this thread (re-entrant: the flow and ``make_version`` it calls share one hold); see the
    module docstring. Raises ``RunLockedError`` naming the holder when another run holds it for more than
    ``wait`` s."""
    store = Store(run_dir)
    key = (str(Path(store.path()).resolve()) if store.local else store.url, threading.get_ident())
    with _HELD_GUARD:
        nested = key in _HELD
        _HELD[key] = _HELD.get(key, 0) + 1
    try:
        if nested:
            yield
        else:
            with (_local_lock if store.local else _lease)(store, wait, lease_s):
                yield
    finally:
        with _HELD_GUARD:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]


def check_writable(run_dir: str | Path) -> None:
    """Make the local run directory ``run_dir`` and its lock file, or stop with a one-line ``RunDirError`` naming it:
    a file (or under one), no permission, a read-only file system, a full disk. What taking the lock does first, so
    a run directory that cannot be written stops a run before any scene or object-bank work; a caller may do it
    earlier still (before a flow starts). Nothing to check on an object store."""
    store = Store(run_dir)
    if not store.local:
        return
    root = Path(store.path())
    check_run_dir(root)  # a file, or under one
    with writing(root):
        root.mkdir(parents=True, exist_ok=True)
        os.close(os.open(root / LOCK, os.O_WRONLY | os.O_CREAT, 0o644))


@contextmanager
def _local_lock(store: Store, wait: float, lease_s: float) -> Iterator[None]:
    root = Path(store.path())
    check_writable(root)
    lock = FileLock(root / LOCK, timeout=wait, is_singleton=False)
    try:
        with writing(root):
            lock.acquire()
    except Timeout:
        raise RunLockedError(
            f"{root} is being written by another run ({describe_holder(_read_json(store, HOLDER))}); wait for it "
            "to finish or use another --run-dir"
        ) from None
    try:
        previous = _read_json(store, HOLDER)
        if previous is not None:  # its holder did not release it: killed
            log.warning(
                "%s: the lock of %s was left by a run that was killed; its unfinished version is resumed or kept",
                root,
                describe_holder(previous),
            )
        try:  # the first file written in the run directory: says whether it can be written at all
            store.write_bytes(HOLDER, json.dumps(_me(uuid.uuid4().hex)).encode())
        except RunDirError as e:
            raise RunDirError(root, e.problem) from e
        yield
    finally:
        try:
            (root / HOLDER).unlink(missing_ok=True)
        finally:
            lock.release()


@contextmanager
def _lease(store: Store, wait: float, lease_s: float) -> Iterator[None]:
    token = uuid.uuid4().hex
    me = _me(token)

    def write_lease() -> None:
        store.write_bytes(LEASE, json.dumps(me | {"expires": time.time() + lease_s}).encode())

    deadline = time.monotonic() + wait
    while True:
        holder = _read_json(store, LEASE)
        why = _stale(holder, time.time()) if holder else None
        if holder is None or why:
            if holder is not None:
                log.warning("%s: taking over the lease of %s: %s", store.path(), describe_holder(holder), why)
            write_lease()
            time.sleep(min(1.0, lease_s / 10))  # a run that wrote its lease at the same moment: one read-back wins
            if (_read_json(store, LEASE) or {}).get("token") == token:
                break
            holder = _read_json(store, LEASE)
        if time.monotonic() >= deadline:
            raise RunLockedError(
                f"{store.path()} is being written by another run ({describe_holder(holder)}; lease in "
                f"{store.path(LEASE)}); wait for it to finish or use another --run-dir"
            )
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
    done = threading.Event()

    def renew() -> None:
        while not done.wait(lease_s / 3):
            holder = _read_json(store, LEASE)
            if holder is not None and holder.get("token") != token:  # expired while this run was stalled
                log.error(
                    "%s: the lease was taken over by %s; this run stops", store.path(LEASE), describe_holder(holder)
                )
                request_stop()
                return
            try:
                write_lease()
            except Exception as e:  # noqa: BLE001 - the next renewal may get through; the lease lasts lease_s
                log.warning("%s: could not renew the lease: %s", store.path(LEASE), e)

    renewer = threading.Thread(target=renew, name="run-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()
        if (_read_json(store, LEASE) or {}).get("token") == token:
            store.rm(LEASE)
