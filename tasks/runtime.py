"""Process-wide settings, applied once where a program starts (the CLI, a flow run, a benchmark), never when a
module is imported: a library that changes global state on import surprises whoever imports it."""

from __future__ import annotations

import os

import cv2


def configure_process() -> None:
    """OpenCV single-threaded (parallelism comes from shard tasks and data-loader workers; nested thread pools
    only thrash); a Prefect temporary-server start-up wait that a busy 2-core machine can meet (the default
    20 s is often too short); and the Prefect server's telemetry off (on a fresh PREFECT_HOME its first write
    races the database set-up and logs "database is locked"). A user's own settings win. Idempotent; must run
    before Prefect is imported, which reads its settings once."""
    cv2.setNumThreads(1)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
