"""The ``synth`` flow: scenes + object bank -> placed, harmonized composites -> validated WebDataset shards.

One Prefect task per stage and per shard (never per image). Shards already finished by an earlier run of
the same config are skipped, so an interrupted run is resumed by running it again.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from schemas import SynthConfig, load_config
from tasks.object_bank import read_object_bank
from tasks.pipeline import (
    build_object_bank,
    finalize_shard_set,
    prepare_scenes,
)
from tasks.report import write_report
from tasks.shards import read_rejects
from tasks.synthesize import (
    Compositor,
    claim_shard_dir,
    plan_samples,
    split_into_shards,
    synthesize_or_resume,
)
from tasks.validate import validate_shard_set

prepare_scenes_task = task(prepare_scenes, name="prepare-scenes", cache_policy=NO_CACHE)
build_bank_task = task(build_object_bank, name="build-object-bank", cache_policy=NO_CACHE)
finalize_task = task(finalize_shard_set, name="finalize-manifest", cache_policy=NO_CACHE)
validate_task = task(validate_shard_set, name="validate-shards", cache_policy=NO_CACHE)
report_task = task(write_report, name="write-report", cache_policy=NO_CACHE)
write_shard_task = task(
    synthesize_or_resume, name="write-shard", task_run_name="shard-{shard_index:06d}", cache_policy=NO_CACHE
)


@flow(name="synth")
def synth(config_path: str = "configs/demo.yaml", run_dir: str = "runs/demo", overrides: dict | None = None) -> dict:
    """Run the synthesis for a YAML config; outputs go under ``run_dir`` (scenes/, objects/, shards/, report.md)."""
    cfg: SynthConfig = load_config(config_path, overrides)
    log = get_run_logger()
    run = Path(run_dir)
    shard_dir, bank_dir = run / "shards", run / "objects"
    timings: dict[str, float] = {}

    t = time.perf_counter()
    scenes, scene_rejects = prepare_scenes_task(cfg, run)
    timings["scenes"] = time.perf_counter() - t
    log.info("%d scenes (%d rejected)", len(scenes), len(scene_rejects))

    t = time.perf_counter()
    build_bank_task(cfg, bank_dir)
    bank = read_object_bank(bank_dir)
    bank_rejects = read_rejects(bank_dir / "rejects.parquet")
    timings["object bank"] = time.perf_counter() - t
    log.info("object bank: %d objects, %d rejected", len(bank), len(bank_rejects))

    t = time.perf_counter()
    compositor = Compositor(cfg, bank)
    claim_shard_dir(shard_dir, compositor.config_hash)
    shards = split_into_shards(
        plan_samples([s.scene_id for s in scenes], cfg.num_samples, cfg.seed), cfg.shards.samples_per_shard
    )
    futures = [write_shard_task.submit(shard_dir, i, plans, scenes, compositor) for i, plans in enumerate(shards)]
    records = []
    for fut in tqdm(as_completed(futures), total=len(futures), desc="shards", unit="shard"):
        rec = fut.result()
        records.append(rec)
        log.info("%s: %d samples%s", rec["shard"], rec["samples"], " (already done)" if rec.get("skipped") else "")
    timings["composite + shards"] = time.perf_counter() - t

    summary = finalize_task(shard_dir, cfg, records, scene_rejects + bank_rejects)
    t = time.perf_counter()
    checked, problems = validate_task(shard_dir)
    timings["validate"] = time.perf_counter() - t
    report = report_task(run, shard_dir, summary, bank, read_rejects(shard_dir / "rejects.parquet"), timings)
    if problems:
        raise RuntimeError(f"{len(problems)} validation problems in {shard_dir}:\n" + "\n".join(problems[:20]))
    log.info("%d samples validated; shards in %s; report %s", checked, shard_dir, report)
    return summary | {"shard_dir": str(shard_dir), "report": str(report), "validated": checked}


def run_synth(config_path: str, run_dir: str, overrides: dict | None = None, workers: int | None = None) -> dict:
    """Run the flow with a thread pool of ``workers`` shard tasks (default: the config's ``workers``)."""
    n = workers or load_config(config_path, overrides).workers
    return synth.with_options(task_runner=ThreadPoolTaskRunner(max_workers=n))(config_path, run_dir, overrides)
