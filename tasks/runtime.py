"""Process-wide settings, applied once where a program starts (the CLI, a flow run, a benchmark), never when a
module is imported: a library that changes global state on import surprises whoever imports it."""

from __future__ import annotations

import os


def configure_process() -> None:
    """OpenCV single-threaded (parallelism comes from shard tasks and data-loader workers; nested thread pools
    only thrash), and a Prefect temporary-server start-up wait that a busy 2-core machine can meet (the
    default 20 s is often too short; a user's own setting wins). Idempotent."""
    import cv2

    cv2.setNumThreads(1)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
