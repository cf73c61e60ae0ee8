"""The ``synth`` flow: object sources + scenes -> placed, harmonized composites -> a new shard-set version.

Wiring only: the diffusion objects (a subflow, or on the GPU pool through ``run_deployment``), then
``tasks.synth.version.make_version`` (object bank -> version plan -> shards -> manifest -> validation -> publish +
retention -> report) with each stage a Prefect task and one task per shard on the flow's task runner (threads or
Dask), then the run's artifacts.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from tqdm import tqdm

from flows.generate import generate_objects
from schemas import SynthConfig, load_config
from tasks.layout import RunLayout
from tasks.runlock import run_lock
from tasks.runtime import Interrupted, configure_process, stop_requested
from tasks.synth.pipeline import select_sources
from tasks.synth.version import StageRunner, make_version
from tasks.synth.writer import write_shard

__all__ = ["run_synth", "synth"]

write_shard_task = task(write_shard, name="write-shard", task_run_name="shard-{shard_index:06d}", cache_policy=NO_CACHE)


class PrefectStages(StageRunner):
    """Each stage a Prefect task of the running flow; shard tasks submitted to the flow's task runner (threads or
    Dask), with a progress artifact and a progress bar; messages to the run's log."""

    def __init__(self) -> None:
        self.logger = get_run_logger()

    def stage(self, name: str, fn: Callable, *args, **kwargs):
        return task(fn, name=name, cache_policy=NO_CACHE)(*args, **kwargs)

    def shards(self, version_id: str, calls: list[tuple]) -> Iterator[dict]:
        """As they finish; a stop request (Ctrl-C) is seen here within a second even when the shard tasks run
        where the flag is not (Dask workers): the shards not started are cancelled."""
        progress = create_progress_artifact(0.0, description=f"{version_id}: {len(calls)} shards")
        pending = [write_shard_task.submit(*args) for args in calls]
        with tqdm(total=len(pending), desc="shards", unit="shard") as bar:
            while pending:
                done, not_done = wait(pending, timeout=1.0)
                for fut in done:  # finished shards are counted as kept, also when a stop came meanwhile
                    rec = fut.result()
                    bar.update()
                    update_progress_artifact(progress, 100.0 * bar.n / len(calls))
                    skipped = " (already done)" if rec.get("skipped") else ""
                    self.log(f"{rec['shard']}: {rec['samples']} samples{skipped}")
                    yield rec
                pending = list(not_done)
                if stop_requested():
                    for fut in pending:
                        fut.wrapped_future.cancel()
                    raise Interrupted(f"{version_id}: stopped")  # make_version says what was kept

    def log(self, message: str) -> None:
        self.logger.info(message)


def _generate(cfg: SynthConfig, store: Path, deployment: str | None) -> dict:
    """Run the generation here (subflow) or on the deployment's work pool, and wait for it."""
    if not deployment:
        return generate_objects(cfg.model_dump(mode="json"), str(store))
    key = f"{flow_run.get_id() or 'local'}"
    fr = run_deployment(
        deployment,
        parameters={"config": cfg.model_dump(mode="json"), "store_dir": str(store.resolve()), "run_key": key},
        timeout=None,  # wait for it
    )
    if not fr.state or not fr.state.is_completed():
        raise RuntimeError(f"generation deployment {deployment!r} ended {fr.state.name if fr.state else 'unknown'}")
    return json.loads((store / "runs" / f"{key}.json").read_text())


def _artifacts(summary: dict, bank, rejects, timings: dict, report: Path) -> None:
    by_class = collections.Counter(o.record.class_name for o in bank)
    by_source = collections.Counter((o.record.class_name, o.record.source) for o in bank)
    create_table_artifact(
        [
            {"class": c, "objects": n, "sources": ", ".join(sorted(s for (k, s) in by_source if k == c))}
            for c, n in sorted(by_class.items())
        ],
        key="synth-objects-per-class",
        description="object bank of this version, per class",
    )
    reasons = collections.Counter(f"{r.stage}/{r.reason}" for r in rejects)
    gen = summary.get("generation")
    md = [
        f"# synth `{summary['name']}`: version `{summary['version']}` ({summary['status']})",
        "",
        f"- parent version: `{summary.get('parent_version')}`; config `{summary['config_hash']}`, "
        f"bank `{summary['bank_hash']}`",
        f"- {summary['samples']} samples in {summary['shards']} shards at `{summary['shard_dir']}`",
        f"- object bank: {len(bank)} objects in {len(by_class)} classes",
        *(
            [f"- conditions: {', '.join(f'{c} {n}' for c, n in summary['conditions'].items())} (weather.png)"]
            if summary.get("conditions")
            else []
        ),
        *(
            [
                f"- generated this run: {gen['planned']} images, {gen['accepted']} accepted, {gen['rejected']} "
                f"rejected, {gen.get('images_per_s', 0):.3g} images/s"
            ]
            if gen
            else []
        ),
        "",
        "| rejects by reason | count |",
        "|---|---:|",
        *([f"| {k} | {v} |" for k, v in sorted(reasons.items())] or ["| none | 0 |"]),
        "",
        "| stage | seconds |",
        "|---|---:|",
        *[f"| {k} | {v:.2f} |" for k, v in timings.items()],
        "",
        f"Report with pictures (composites, objects, generated images and masks): `{report}`",
    ]
    create_markdown_artifact("\n".join(md), key="synth-summary", description="synth run summary")


@flow(name="synth")
def synth(
    config_path: str = "configs/demo.yaml",
    run_dir: str = "runs/demo",
    overrides: dict | None = None,
    sources: list[str] | None = None,
    scenes: str | None = None,
    generation_deployment: str | None = None,
    keep_versions: int = 5,
    work_dir: str | None = None,
) -> dict:
    """Synthesize a new shard-set version under ``run_dir/versions/`` (``LATEST`` and, on a local disk, the
    ``run_dir/shards`` symlink name the latest).

    ``run_dir``: a local directory or an fsspec URL (``s3://bucket/run``): shards, manifests and ``LATEST`` are
    written there atomically; ``sources``: object sources to use among those configured (diffusion, coco, files,
    demo, patches; default all); ``scenes``: "demo", or a root for the config's scene source, instead of its own;
    ``generation_deployment``: run the diffusion step as that deployment (e.g. ``generate-objects/gpu``) instead
    of in this process; ``keep_versions``: retention of complete versions; ``work_dir``: where a remote run keeps
    its scenes, object bank and staged files on this machine (default: ``tasks.layout.default_work_dir``).
    """
    configure_process()  # a deployment's worker starts the program here
    cfg: SynthConfig = select_sources(load_config(config_path, overrides, scenes), sources)
    timings: dict[str, float] = {}
    generation = None
    with run_lock(run_dir):  # one writer per run directory, from the generation on
        if cfg.objects.diffusion is not None:
            t = time.perf_counter()
            generation = _generate(cfg, RunLayout.of(run_dir, work_dir).generated, generation_deployment)
            timings["generate objects"] = time.perf_counter() - t
        res = make_version(cfg, run_dir, work_dir, keep_versions, generation, PrefectStages(), timings)
    _artifacts(res.summary, res.bank, res.rejects, res.timings, res.summary["report"])
    return res.summary


def dask_runner(address: str | None = None, workers: int = 2):
    """prefect-dask's ``DaskTaskRunner``: on the cluster at ``address`` (``tcp://host:8786``), else on a local
    cluster of ``workers`` processes with one thread each."""
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "processes": True, "threads_per_worker": 1})


#: task runners by name (``anomalyforge synth --task-runner``): (workers, Dask address) -> runner
TASK_RUNNERS = {
    "threads": lambda workers, address: ThreadPoolTaskRunner(max_workers=workers),
    "dask": lambda workers, address: dask_runner(address, workers),
}


def run_synth(
    config_path: str,
    run_dir: str,
    overrides: dict | None = None,
    workers: int | None = None,
    task_runner: str = "threads",
    dask_address: str | None = None,
    **params,
) -> dict:
    """Run the flow with ``task_runner``: a thread pool of ``workers`` shard tasks (default: the config's
    ``workers``), or Dask (``dask_address``, or a local cluster of ``workers`` processes)."""
    if task_runner not in TASK_RUNNERS:
        raise ValueError(f"unknown task runner {task_runner!r}; one of {', '.join(TASK_RUNNERS)}")
    n = workers or load_config(config_path, overrides).workers
    runner = TASK_RUNNERS[task_runner](n, dask_address)
    return synth.with_options(task_runner=runner)(config_path, run_dir, overrides, **params)
