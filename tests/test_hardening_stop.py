"""Ctrl-C and SIGTERM stop after the current step or shard, keep what was made and say how to resume (exit 130);
checkpoints have a cadence of their own; the command line prints the product's user errors as one line (no Prefect
traceback) and names its options' bad values; Prefect's temporary server gets a second, longer try."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tasks import runtime
from tasks.runtime import Interrupted
from tasks.train import trainer as trainer_module
from tasks.train.trainer import train_method
from tests.helpers import tiny_synth_config, tiny_train_config


@pytest.fixture
def stop_flag():
    runtime.clear_stop()
    yield runtime
    runtime.clear_stop()


def _start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """``anomalyforge`` in a session of its own, as a terminal runs it: Ctrl-C goes to the whole process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
    )


def _wait_for(cond, proc: subprocess.Popen, what: str, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {what} after {limit} s")
        time.sleep(0.2)


def _ctrl_c(proc: subprocess.Popen) -> tuple[int, str, str]:
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: every process of the foreground group
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_training_stops_after_the_current_step_with_a_checkpoint_and_resumes(trained_eel, tmp_path, stop_flag):
    cfg = tiny_train_config("eel").model_copy(update={"max_steps": 6, "eval_every": 100})
    out = tmp_path / "eel"
    saved = []
    real_save = trainer_module._save_last

    def save(run, step):
        real_save(run, step)
        saved.append(step)

    calls = {"n": 0}
    orig_agree = trainer_module._agree

    def agree(accelerator, flag):  # Ctrl-C while step 2 runs
        calls["n"] += 1
        if calls["n"] == 2:
            stop_flag.request_stop()
        return orig_agree(accelerator, stop_flag.stop_requested())

    mp = pytest.MonkeyPatch()
    mp.setattr(trainer_module, "_save_last", save)
    mp.setattr(trainer_module, "_agree", agree)
    try:
        with pytest.raises(Interrupted, match=r"eel at step 2/6; checkpoint .*last.pt; run the same command again"):
            train_method(cfg, trained_eel.version, out, progress=False, log=lambda m: None, segmenters_dir=tmp_path)
    finally:
        mp.undo()
    assert saved == [2] and not (out / "model.pt").exists()
    stop_flag.clear_stop()
    logs = []
    res = train_method(cfg, trained_eel.version, out, progress=False, log=logs.append, segmenters_dir=tmp_path)
    assert any("resuming from" in m and "at step 2/6" in m for m in logs) and res.steps == 6


@pytest.mark.parametrize("minutes, expected", [(1e-9, [1, 2, 3]), (60.0, [3])])
def test_checkpoints_follow_their_own_cadence_between_evaluations(trained_eel, tmp_path, minutes, expected):
    cfg = tiny_train_config("eel").model_copy(update={"max_steps": 3, "eval_every": 100, "checkpoint_minutes": minutes})
    saved = []
    real_save = trainer_module._save_last
    mp = pytest.MonkeyPatch()
    mp.setattr(trainer_module, "_save_last", lambda run, step: (saved.append(step), real_save(run, step)))
    try:
        train_method(cfg, trained_eel.version, tmp_path / "eel", progress=False, log=lambda m: None,
                     segmenters_dir=tmp_path)  # fmt: skip
    finally:
        mp.undo()
    assert saved == expected  # the last one is the final evaluation's


def test_checkpoint_cadence_does_not_change_what_a_model_is():
    a = tiny_train_config("eel")
    assert a.content_hash() == a.model_copy(update={"checkpoint_minutes": 0.5}).content_hash()


def test_a_second_signal_stops_at_once_but_a_forwarded_copy_of_the_first_does_not(stop_flag, monkeypatch):
    runtime._on_signal(signal.SIGINT, None)
    assert runtime.stop_requested()
    runtime._on_signal(signal.SIGINT, None)  # torchrun forwarding the terminal's Ctrl-C a moment later: one request
    monkeypatch.setattr(runtime, "SAME_REQUEST_S", 0.0)
    with pytest.raises(runtime.StoppedAtOnce):
        runtime._on_signal(signal.SIGTERM, None)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--workers", "-3"], r"Invalid value for '--workers': Input should be greater than or equal to 0"),
        (
            ["--task-runner", "bogus"],
            r"Invalid value for '--task-runner': 'bogus' is not a task runner; one of threads, dask",
        ),
    ],
)
def test_bad_option_values_name_the_option(args, expected):
    r = subprocess.run([sys.executable, "-m", "flows.cli", "synth", *args], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    import re

    assert re.search(expected, " ".join(r.stderr.replace("│", " ").split())), r.stderr


def test_the_temporary_server_gets_a_second_longer_try_and_then_names_the_setting(monkeypatch):
    from prefect.server.api import server as server_module

    from flows.session import TemporaryServerError, start_temporary_server

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(server_module.SubprocessASGIServer, "_instances", {})  # none started in this process yet
    tries = []

    def start(self, timeout=None):  # what Prefect's start does when the server does not answer in time
        tries.append((self, timeout))
        if len(tries) % 2:
            raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")
        self.running = True

    def stop(self):  # Prefect's stop forgets the instance
        server_module.SubprocessASGIServer._instances.pop(self._instance_key, None)

    monkeypatch.setattr(server_module.SubprocessASGIServer, "start", start)
    monkeypatch.setattr(server_module.SubprocessASGIServer, "stop", stop)
    start_temporary_server()
    (first, t1), (second, t2) = tries
    assert t2 == 2 * t1 and second is not first and second.running
    assert server_module.SubprocessASGIServer() is second  # the one Prefect's client will use

    def always_late(self, timeout=None):
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    monkeypatch.setattr(server_module.SubprocessASGIServer, "_instances", {})
    monkeypatch.setattr(server_module.SubprocessASGIServer, "start", always_late)
    with pytest.raises(TemporaryServerError, match=r"raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS \(now"):
        start_temporary_server()


@pytest.mark.slow
def test_ctrl_c_during_synth_keeps_the_finished_shards_and_the_same_command_resumes(tmp_path):
    cfg = tiny_synth_config(tmp_path)
    data = cfg.model_dump(mode="json") | {"num_samples": 60}
    data["shards"]["samples_per_shard"] = 2
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    args = ("synth", "--config", str(tmp_path / "c.yaml"), "--run-dir", str(run))
    proc = _start_cli(*args)
    _wait_for(lambda: len(list(run.glob("versions/*/shard-*.tar"))) >= 2, proc, "two shards")
    code, out, err = _ctrl_c(proc)
    assert code == 130, err[-3000:]
    last = err.strip().splitlines()[-2:]  # Prefect says it stops its server after our line
    line = next((x for x in last if x.startswith("stopped: ")), err[-8000:])
    assert " of 30 shards of v0001-" in line and "are written and kept; run the same command again to resume" in line
    assert "(full log: " in line and "Traceback" not in err
    kept = len(list(run.glob("versions/*/shard-*.tar")))
    assert 2 <= kept < 30 and not (run / "LATEST").exists()
    proc = _start_cli(*args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((run / "shards" / "dataset.json").read_text())
    assert summary["samples"] + summary["rejects"] >= 60 and "(resume, parent None)" in out


@pytest.mark.slow
def test_a_locked_run_directory_is_one_line_without_a_prefect_traceback(tmp_path):
    run = tmp_path / "run"
    hold = "import sys, time\nfrom tasks.runlock import run_lock\nwith run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = tiny_synth_config(tmp_path)
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        proc = _start_cli("synth", "--config", str(tmp_path / "c.yaml"), "--run-dir", str(run))
        out, err = proc.communicate(timeout=600)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 1
    assert "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert f"{run} is being written by another run (pid {holder.pid} on " in line
    log = Path(line.rsplit("(full log: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text() and "RunLockedError" in log.read_text()  # the file keeps it all
