"""The ``synth`` flow: object sources + scenes -> placed, harmonized composites -> a new shard-set version.

Stages: (diffusion objects, as a subflow or on the GPU pool through ``run_deployment``) -> object bank ->
version plan -> one Prefect task per shard -> manifest -> validation -> publish + retention -> report and
artifacts. A version whose content (config + bank) equals the latest one is not made again; an
interrupted version is resumed by running the same thing again.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from flows.generate import generate_objects
from schemas import SynthConfig, load_config
from tasks.runtime import configure_process
from tasks.sample_format import DATASET, REJECTS
from tasks.scenes import scene_identity
from tasks.shards import read_rejects
from tasks.storage import Store
from tasks.synth.pipeline import build_object_bank, finalize_shard_set, prepare_scenes, select_sources
from tasks.synth.report import REPORT_FILES, write_report
from tasks.synth.synthesize import (
    claim_shard_dir,
    compositor_for,
    plan_samples,
    scene_sheet,
    split_into_shards,
    weather_sheet,
    write_shard,
)
from tasks.synth.validate import validate_shard_set
from tasks.versions import LATEST, LATEST_LINK, plan_version, prune_versions, publish_version

prepare_scenes_task = task(prepare_scenes, name="prepare-scenes", cache_policy=NO_CACHE)
build_bank_task = task(build_object_bank, name="build-object-bank", cache_policy=NO_CACHE)
finalize_task = task(finalize_shard_set, name="finalize-manifest", cache_policy=NO_CACHE)
validate_task = task(validate_shard_set, name="validate-shards", cache_policy=NO_CACHE)
weather_sheet_task = task(weather_sheet, name="weather-contact-sheet", cache_policy=NO_CACHE)
scene_sheet_task = task(scene_sheet, name="scenes-sheet", cache_policy=NO_CACHE)
report_task = task(write_report, name="write-report", cache_policy=NO_CACHE)
write_shard_task = task(write_shard, name="write-shard", task_run_name="shard-{shard_index:06d}", cache_policy=NO_CACHE)


def _generate(cfg: SynthConfig, store: Path, deployment: str | None) -> dict:
    """Run the generation here (subflow) or on the deployment's work pool, and wait for it."""
    if not deployment:
        return generate_objects(cfg.model_dump(mode="json"), str(store))
    from prefect.deployments import run_deployment
    from prefect.runtime import flow_run

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


PENDING_DATASET = f".{DATASET}.pending"


def default_work_dir(run_url: str) -> Path:
    """The local directory of a remote run's scenes, object bank and staged files (``$ANOMALYFORGE_CACHE``, default
    ``~/.cache/anomalyforge``, then ``runs/<the URL as a name>-<its hash>``)."""
    cache = Path(os.environ.get("ANOMALYFORGE_CACHE") or Path.home() / ".cache" / "anomalyforge")
    tag = hashlib.sha256(run_url.encode()).hexdigest()[:8]  # s3://a/b_c and s3://a_b/c share a readable name
    return cache / "runs" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', run_url)}-{tag}"


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
    its scenes, object bank and staged files on this machine (default: ``default_work_dir``).
    """
    configure_process()  # a deployment's worker starts the program here
    cfg: SynthConfig = select_sources(load_config(config_path, overrides, scenes), sources)
    log = get_run_logger()
    remote = not Store(run_dir).local
    # scenes, object bank, generated objects (and a remote run's staged files) on this machine
    work = Path(work_dir) if work_dir else default_work_dir(Store(run_dir).url) if remote else Path(run_dir)
    bank_dir, store = work / "objects", work / "generated"
    timings: dict[str, float] = {}

    generation = None
    if cfg.objects.diffusion is not None:
        t = time.perf_counter()
        generation = _generate(cfg, store, generation_deployment)
        timings["generate objects"] = time.perf_counter() - t

    t = time.perf_counter()
    scenes_, scene_rejects = prepare_scenes_task(cfg, work)
    timings["scenes"] = time.perf_counter() - t
    log.info("%d scenes (%d rejected)", len(scenes_), len(scene_rejects))

    t = time.perf_counter()
    build_bank_task(cfg, bank_dir, generated=store, scenes=scenes_)
    compositor = compositor_for(cfg, bank_dir)  # the bank read once: the one the thread runner's shard tasks share
    bank = compositor.bank
    bank_rejects = read_rejects(bank_dir / "rejects.parquet")
    timings["object bank"] = time.perf_counter() - t
    log.info("object bank: %d objects, %d rejected", len(bank), len(bank_rejects))

    bank_hash = hashlib.sha256("\n".join(o.record.object_id for o in bank).encode()).hexdigest()[:16]
    scenes_hash = scene_identity(scenes_)  # a fixed or replaced scene file makes a new version
    content_hash = hashlib.sha256(f"{compositor.config_hash}:{bank_hash}:{scenes_hash}".encode()).hexdigest()
    plan = plan_version(run_dir, content_hash)
    shard_dir, shards_at = plan.version.path, Store(plan.version.path)
    stage = work / "staging" / plan.version.id if remote else Path(shard_dir)  # manifests and sheets, then uploaded
    log.info("version %s (%s), parent %s", plan.version.id, plan.status, plan.parent)
    if plan.status == "unchanged":
        summary = json.loads(shards_at.read_text(DATASET))
    else:
        t = time.perf_counter()
        claim_shard_dir(shard_dir, compositor.config_hash)
        plans = plan_samples([s.scene_id for s in scenes_], cfg.num_samples, cfg.seed, cfg.weather)
        shards = split_into_shards(plans, cfg.shards.samples_per_shard)
        progress = create_progress_artifact(0.0, description=f"{plan.version.id}: {len(shards)} shards")
        futures = [write_shard_task.submit(shard_dir, i, part, scenes_, cfg, bank_dir) for i, part in enumerate(shards)]
        records = []
        for fut in tqdm(as_completed(futures), total=len(futures), desc="shards", unit="shard"):
            rec = fut.result()
            records.append(rec)
            update_progress_artifact(progress, 100.0 * len(records) / len(futures))
            log.info("%s: %d samples%s", rec["shard"], rec["samples"], " (already done)" if rec.get("skipped") else "")
        timings["composite + shards"] = time.perf_counter() - t
        version = {
            "version": plan.version.id,
            "parent_version": plan.parent,
            "content_hash": content_hash,
            "bank_hash": bank_hash,
            "scenes_hash": scenes_hash,
            "objects": len(bank),
            "objects_by_source": dict(collections.Counter(o.record.source for o in bank)),
        }
        scene_sheet_task(stage / "scenes.png", scenes_, cfg)  # before the manifest, like the weather sheet
        if cfg.weather is not None:  # before the manifest: a finished version always has its contact sheet
            t = time.perf_counter()
            weather_sheet_task(stage / "weather.png", scenes_, plans, compositor)
            timings["weather contact sheet"] = time.perf_counter() - t
        # dataset.json (what makes a version complete for every reader) under a hidden name until validated
        summary = finalize_task(stage, cfg, records, scene_rejects + bank_rejects, version, PENDING_DATASET)
        if remote:  # hidden files stay behind
            t = time.perf_counter()
            shards_at.upload_dir(stage)
            timings["upload manifests"] = time.perf_counter() - t
    t = time.perf_counter()
    checked, problems = validate_task(shard_dir)
    timings["validate"] = time.perf_counter() - t
    if problems:
        raise RuntimeError(f"{len(problems)} validation problems in {shard_dir}:\n" + "\n".join(problems[:20]))
    if plan.status != "unchanged":  # the version is complete from here on
        if remote:
            shards_at.put_file(stage / PENDING_DATASET, DATASET)
            (stage / PENDING_DATASET).unlink()
        else:
            os.replace(stage / PENDING_DATASET, stage / DATASET)
    publish_version(run_dir, plan.version)
    removed = prune_versions(run_dir, keep_versions, protect=plan.version.id)
    if removed:
        log.info("retention (keep %d): removed %s", keep_versions, ", ".join(removed))
    for vid in removed if remote else []:  # their staged files on this machine
        shutil.rmtree(work / "staging" / vid, ignore_errors=True)
    previews = [store / "previews" / f"{b}.jpg" for b in (generation or {}).get("batches", [])]
    with shards_at.open(REJECTS) as f:
        rejects = read_rejects(f)
    if plan.status == "unchanged":  # a published version keeps the report of the run that made it
        report = shards_at.path("report.md")
    else:
        report = report_task(stage, shard_dir, summary, bank, rejects, timings, generation, previews)
        if remote:
            shards_at.upload_dir(stage, only=REPORT_FILES)
            report = shards_at.path(report.name)
    summary = summary | {"status": plan.status, "generation": generation, "removed_versions": removed}
    summary |= {"timings": {k: round(v, 3) for k, v in timings.items()}}
    latest = Store(run_dir).path(LATEST if remote else LATEST_LINK)
    summary |= {"shard_dir": str(shard_dir), "latest": str(latest), "report": str(report), "validated": checked}
    _artifacts(summary, bank, rejects, timings, report)
    log.info("%d samples validated; version %s in %s; report %s", checked, plan.version.id, shard_dir, report)
    return summary


def dask_runner(address: str | None = None, workers: int = 2):
    """prefect-dask's ``DaskTaskRunner``: on the cluster at ``address`` (``tcp://host:8786``), else on a local
    cluster of ``workers`` processes with one thread each."""
    from prefect_dask import DaskTaskRunner

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
