"""The ``generate-objects`` flow: Stable Diffusion objects into the generated-object store (GPU work pool).

One Prefect task per denoising batch (tagged ``gpu``: a tag concurrency limit of one per GPU keeps batches
from sharing a device). The ``synth`` flow calls it as a subflow, or through ``run_deployment`` when the
GPU runs on another machine (deployment ``generate-objects/gpu``).
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from schemas import SynthConfig
from tasks.runtime import configure_process
from tasks.shards import write_json_atomic
from tasks.synth.diffusion import GeneratedStore, load_pipeline, run_batch
from tasks.synth.prompts import load_vocabulary, plan_specs
from tasks.synth.saliency import LazyMasker

generate_batch_task = task(run_batch, name="generate-batch", tags=["gpu"], cache_policy=NO_CACHE)


@flow(name="generate-objects")
def generate_objects(config: dict, store_dir: str, run_key: str = "") -> dict:
    """Generate the specs of ``config['objects']['diffusion']`` that the store does not hold yet.

    ``config`` is a full SynthConfig as JSON (the parent flow passes the config it resolved); the summary
    is returned and also written to ``<store_dir>/runs/<run_key>.json`` for a parent in another process.
    """
    configure_process()  # a deployment's worker starts the program here
    cfg = SynthConfig.model_validate(config)
    dc = cfg.objects.diffusion
    if dc is None:
        raise ValueError("the config has no objects.diffusion section: nothing to generate")
    log = get_run_logger()
    store = GeneratedStore(store_dir)
    vocab = load_vocabulary(dc.vocabulary)
    specs = plan_specs(vocab, dc, cfg.seed, store.done_ids())
    summary: dict = {"planned": len(specs), "accepted": 0, "rejected": 0, "reasons": {}, "batches": [], "seconds": 0.0}
    t0 = time.perf_counter()
    if specs:
        lp = load_pipeline(dc)  # fails fast, naming the model and where it looked, before any work
        log.info(
            "%s on %s (%s): %d new images in batches of %d", lp.family, lp.device, lp.dtype, len(specs), dc.batch_size
        )
        masker = LazyMasker(cfg.saliency.model, cfg.saliency.model_home)
        batches = [specs[i : i + dc.batch_size] for i in range(0, len(specs), dc.batch_size)]
        progress = create_progress_artifact(0.0, description=f"generating {len(specs)} objects")
        reasons: collections.Counter[str] = collections.Counter()
        for k, batch in enumerate(tqdm(batches, desc="generate", unit="batch")):
            rec = generate_batch_task.with_options(task_run_name=f"generate-batch-{k:04d}")(
                lp, batch, dc, masker, cfg.saliency.gate, cfg.objects.max_side, store
            )
            summary["accepted"] += len(rec["objects"])
            summary["rejected"] += len(rec["rejects"])
            reasons.update(r["reason"] for r in rec["rejects"])
            summary["batches"].append(rec["batch"])
            update_progress_artifact(progress, 100.0 * (k + 1) / len(batches))
            log.info(
                "batch %d/%d: %d accepted, %d rejected", k + 1, len(batches), len(rec["objects"]), len(rec["rejects"])
            )
        summary["reasons"] = dict(reasons)
    else:
        log.info("the store already holds every planned object: nothing to generate")
    store.write_manifest()
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary["images_per_s"] = round(summary["planned"] / summary["seconds"], 4) if specs else 0.0
    summary["store_objects"] = len(store.object_ids())
    if run_key:
        write_json_atomic(Path(store_dir) / "runs" / f"{run_key}.json", summary)
    return summary
