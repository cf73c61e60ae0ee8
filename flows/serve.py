"""What one machine needs to run the deployments: a Prefect server (SQLite), the work pools, the
deployments of ``prefect.yaml`` and a worker per pool (``make serve`` / ``anomalyforge serve``).

``LocalStack`` starts them as child processes and stops every one of them on exit; the end-to-end test
uses the same code. For several machines, see the README: one server (PostgreSQL), workers pointed at it
with ``PREFECT_API_URL``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOLS = ("cpu", "gpu")
GPU_TAG = "gpu"  # generation batches carry it; the tag concurrency limit is one per GPU


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect() -> list[str]:
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe)] if exe.is_file() else [shutil.which("prefect") or "prefect"]


class LocalStack:
    """Server + pools + deployments + workers on loopback; a context manager that cleans up after itself."""

    def __init__(
        self,
        port: int | None = None,
        home: str | Path | None = None,
        gpus: int | None = None,
        log_dir: str | Path | None = None,
        env: dict[str, str] | None = None,
    ):
        self.port = port or free_port()
        self.home = Path(home or ROOT / ".cache" / "prefect").resolve()
        self.log_dir = Path(log_dir or self.home / "logs")
        self.gpus = gpus
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ) | (env or {})
        self.env |= {
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": self.env.get("PREFECT_UI_ENABLED", "true"),
            # the schedule of the nightly deployment (prefect.yaml reads these)
            "ANOMALYFORGE_NIGHTLY_CRON": self.env.get("ANOMALYFORGE_NIGHTLY_CRON", "0 2 * * *"),
            "ANOMALYFORGE_NIGHTLY_TZ": self.env.get("ANOMALYFORGE_NIGHTLY_TZ", "UTC"),
        }

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [*_prefect(), *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and res.returncode != 0:
            raise RuntimeError(
                f"prefect {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
            )
        return res

    def start(self, timeout: float = 180) -> LocalStack:
        self.home.mkdir(parents=True, exist_ok=True)
        server = self._spawn(
            "server", [*_prefect(), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None:
                raise RuntimeError(f"prefect server exited with {server.returncode}; see {self.log_dir / 'server.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"prefect server not healthy after {timeout:.0f} s; see {self.log_dir / 'server.log'}"
                )
            time.sleep(0.5)
        for pool in POOLS:
            self.run("work-pool", "create", pool, "--type", "process", "--overwrite")
        gpus = self.gpus if self.gpus is not None else _gpu_count()
        self.run("concurrency-limit", "create", GPU_TAG, str(max(1, gpus)), check=False)
        self.run("--no-prompt", "deploy", "--all")
        for pool in POOLS:
            self._spawn(f"worker-{pool}", [*_prefect(), "worker", "start", "--pool", pool, "--type", "process"])
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _gpu_count() -> int:
    try:
        import torch  # only here: the server and the workers it starts never need torch themselves

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch / no driver: CPU only
        return 0
