"""Process-wide settings, applied once where a program starts (the CLI, a flow run, a benchmark), never when a
module is imported: a library that changes global state on import surprises whoever imports it."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import cv2


def configure_process() -> None:
    """OpenCV single-threaded (parallelism comes from shard tasks and data-loader workers; nested thread pools
    only thrash); a Prefect temporary-server start-up wait that a busy 2-core machine can meet (the default
    20 s is often too short); and the Prefect server's telemetry off (on a fresh PREFECT_HOME its first write
    races the database set-up and logs "database is locked"). A user's own settings win. Idempotent; must run
    before Prefect is imported, which reads its settings once; flows call it again first thing."""
    cv2.setNumThreads(1)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    reclaim_stop_handlers()  # a flow run starts here: SIGTERM stops after the current step again


# ---------------------------------------------------------------- Ctrl-C and SIGTERM: stop after the current step


class Interrupted(Exception):
    """The user asked the program to stop (Ctrl-C, SIGTERM); raised after the current step or shard, with what
    was kept and how to resume. The command line exits 130 with this one line."""


class StoppedAtOnce(BaseException):
    """A second Ctrl-C / SIGTERM: stop wherever the program is. Not a ``KeyboardInterrupt``, which click turns into
    "Aborted!" and exit 1; what finished before it is kept all the same (every file is written atomically)."""


_STOP = threading.Event()
_INSTALLED = False


def stop_requested() -> bool:
    return _STOP.is_set()


def request_stop() -> None:
    """What the first Ctrl-C does (tests call it to stand in for one)."""
    _STOP.set()


def clear_stop() -> None:
    _STOP.clear()
    _FIRST.clear()


def check_stop(message: str) -> None:
    """Raise ``Interrupted(message)`` when a stop was asked for: the long loops call it between steps."""
    if _STOP.is_set():
        raise Interrupted(message)


#: a repeat within this many seconds is the same request: a launcher (torchrun) forwards the terminal's Ctrl-C to
#: worker processes that the terminal already reached
SAME_REQUEST_S = 1.0
_FIRST: list[float] = []


def _on_signal(signum: int, frame) -> None:
    if _STOP.is_set():
        if _FIRST and time.monotonic() - _FIRST[0] < SAME_REQUEST_S:
            return
        raise StoppedAtOnce  # the second one: stop at once
    _FIRST[:] = [time.monotonic()]
    _STOP.set()
    name = signal.Signals(signum).name
    print(
        f"\n{name}: stopping after the current step or shard (send it again to stop at once)",
        file=sys.stderr,
        flush=True,
    )


def install_stop_handlers() -> None:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP set the stop flag that ``check_stop`` reads, so a long command finishes its
    current step or shard, keeps what it made and exits 130; a second signal stops at once. For the command line
    (a library never installs signal handlers of its own accord); main thread only."""
    global _INSTALLED
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal was closed
        signal.signal(sig, _on_signal)
    _INSTALLED = True


def reclaim_stop_handlers() -> None:
    """At the start of a flow run: Prefect swaps in a SIGTERM handler of its own that aborts the run at once; when
    the command line installed ``install_stop_handlers``, SIGTERM stops after the current step again."""
    if _INSTALLED and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)


def ignore_interrupts(_worker_id: int = 0) -> None:
    """A data-loader worker's ``worker_init_fn``: Ctrl-C reaches every process of the terminal's group, and a worker
    it kills would fail the step the main process is finishing; the main process stops the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
