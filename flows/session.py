"""What the command line sets up around a flow run, and only the command line (a deployment's worker runs flows
under Prefect's own rules): Prefect's temporary server, started to survive a busy machine and Ctrl-C; the full log
in a file, with the product's own user errors on the console as one line instead of Prefect's tracebacks; and
Ctrl-C / SIGTERM that stop after the current step (``tasks.runtime``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from unittest import mock

from tasks.runtime import install_stop_handlers

#: log files kept in the log folder (the oldest go first)
KEEP_LOGS = 50


class TemporaryServerError(RuntimeError):
    """Prefect's temporary server did not start; the message says which setting to raise."""


def log_dir() -> Path:
    return Path(os.environ.get("ANOMALYFORGE_CACHE") or Path.home() / ".cache" / "anomalyforge") / "logs"


class _UserErrorFilter(logging.Filter):
    """Drops, from a console handler, the records about a user error (a traceback, a "Finished in state Failed"
    line naming it): the command line prints it as one line, and the log file keeps everything."""

    def __init__(self, user_errors: tuple[type[BaseException], ...]):
        super().__init__("anomalyforge-user-errors")
        self.user_errors = user_errors
        self.names = tuple(t.__name__ for t in user_errors)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.user_errors):
            return False
        if "Failed(" in (msg := record.getMessage()):
            return not any(f"{n}:" in msg or f"{n}(" in msg for n in self.names)
        return True


def route_logs(command: str, user_errors: tuple[type[BaseException], ...]) -> Path:
    """Prefect's log records (flow and task runs, tracebacks and all) and every warning also into
    ``<cache>/logs/<command>-<time>-<pid>.log``; console handlers leave out the records about ``user_errors``. Call
    after Prefect is imported (it configures logging then). Returns the log file."""
    folder = log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for old in sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)[:-KEEP_LOGS]:
        old.unlink(missing_ok=True)
    path = folder / f"{command}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    quiet = _UserErrorFilter(user_errors)
    loggers = [root, *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.addFilter(quiet)
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect"):  # their records reach the file through root
        logging.getLogger(name).setLevel(min(logging.getLogger(name).getEffectiveLevel(), logging.INFO))
    return path


def start_temporary_server(attempts: int = 2, log: Path | None = None) -> None:
    """Start Prefect's temporary API server now (when no ``PREFECT_API_URL`` is set), the way its client would on
    first use, but in a session of its own, so Ctrl-C in the terminal reaches this program and not the server a
    stopping run still reports to (closing the terminal is a SIGHUP this program handles like Ctrl-C, and Prefect
    stops the server at exit); with a second try, at twice the wait, when a busy machine was too slow. The server's
    own output (its tracebacks when it is stopped with events still in flight) goes to ``log`` when given."""
    from prefect.server.api import server as server_module
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if PREFECT_API_URL.value():
        return
    server = server_module.SubprocessASGIServer()
    if server.running:
        return
    wait = int(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    popen = subprocess.Popen

    def own_session(*args, **kwargs):
        if log is not None:
            with open(log, "ab") as f:  # the child keeps its own descriptor
                return popen(*args, **kwargs, start_new_session=True, stdout=f, stderr=subprocess.STDOUT)
        return popen(*args, **kwargs, start_new_session=True)

    for attempt in range(1, attempts + 1):
        server = server_module.SubprocessASGIServer()  # a stopped one leaves Prefect's table: the next is new
        limit = wait * attempt
        print(f"starting Prefect's temporary server (waiting up to {limit} s)", file=sys.stderr, flush=True)
        t = time.monotonic()
        try:
            with mock.patch.object(server_module.subprocess, "Popen", own_session):
                server.start(timeout=limit)
            return
        except RuntimeError as e:
            if "Timed out" not in str(e):
                raise
            server.stop()
            print(f"  no answer after {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    raise TemporaryServerError(
        f"Prefect's temporary server did not answer within {wait} s, nor {wait * attempts} s on a second try (a busy "
        f"machine?): raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (now {wait}), or run a server "
        "(`anomalyforge serve` or `prefect server start`) and set PREFECT_API_URL"
    )


def prepare(command: str, user_errors: tuple[type[BaseException], ...], server: bool = True) -> Path:
    """Everything a long command needs before its flow runs; returns the log file. ``server=False``: a process that
    runs no flow (a rank of a multi-process training launch)."""
    install_stop_handlers()
    path = route_logs(command, user_errors)
    if server:
        start_temporary_server(log=path)
    return path
