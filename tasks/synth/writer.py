"""Composites -> shards: encoding a sample, its manifest row, and writing (or resuming) one shard atomically under
``.partial/`` from its plans; ``write_shard`` does it from picklable arguments on any worker."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from schemas import RejectRecord, SynthConfig
from tasks.conditions import CLEAR
from tasks.imageio import BadInputError
from tasks.object_bank import BankObject
from tasks.runtime import check_stop
from tasks.sample_format import SHARD_PATTERN, encode_sample
from tasks.scenes import (
    Scene,
    SceneRef,
    load_scene,
)
from tasks.shards import PARTS_DIR, json_bytes, sha256_of, store_tar_shard
from tasks.storage import RunDirError, Store
from tasks.synth.compositor import Composite, Compositor, compositor_for
from tasks.synth.placement import NoPlacementError
from tasks.synth.plan import SamplePlan, shard_plans

log = logging.getLogger(__name__)


def encode_composite(c: Composite, image_format: str, jpeg_quality: int) -> dict:
    """A composite as the tar members of one sample (``tasks.sample_format``). Fields added after the first shards
    are left out while they are unset (a run without weather writes no condition fields, a labelled scene no
    pseudo-label record), so the shards of older configs keep their bytes."""
    m = c.meta
    exclude: dict = {k: True for k in ("scene_condition", "pseudo_label") if getattr(m, k) is None}
    if m.weather is None and m.condition == CLEAR and all(p.visibility is None for p in m.objects):
        exclude |= {"condition": True, "weather": True, "objects": {"__all__": {"visibility", "visibility_clear"}}}
    meta = m.model_dump_json(exclude=exclude or None).encode()
    return encode_sample(c.meta.key, c.image, c.label, c.mask, meta, image_format, jpeg_quality)


def manifest_row(c: Composite, shard: str, bank: dict[str, BankObject]) -> dict:
    m = c.meta
    return {
        "key": m.key,
        "shard": shard,
        "scene_id": m.scene_id,
        "width": m.width,
        "height": m.height,
        "num_objects": len(m.objects),
        "object_ids": [p.object_id for p in m.objects],
        "classes": [p.class_name for p in m.objects],
        "sources": [bank[p.object_id].record.source for p in m.objects],
        "boxes": [list(p.box) for p in m.objects],
        "anomaly_pixels": int(np.count_nonzero(c.mask)),
        "condition": m.condition,
        "severity": m.weather.severity if m.weather else 0.0,
        "visibility": [p.visibility for p in m.objects] if m.objects and m.objects[0].visibility is not None else None,
        "seed": m.seed,
        "config_hash": m.config_hash,
    }


def part_name(shard_index: int) -> str:
    """The record of a finished shard, relative to its shard set: what a re-run skips."""
    return f"{PARTS_DIR}/{SHARD_PATTERN.format(shard_index)}.json"


def claim_shard_dir(out_dir: str | Path, config_hash: str) -> None:
    """Mark ``out_dir`` (a directory or URL) as holding shards of ``config_hash``; refuse one made by another config.

    Without this, re-running a *changed* config into an old run directory would keep shards of the old one.
    """
    store, stamp = Store(out_dir), f"{PARTS_DIR}/config_hash"
    if store.isfile(stamp):
        old = store.read_text(stamp).strip()
        if old != config_hash:
            raise ValueError(
                f"{store.path()} holds shards of another config (hash {old}, this one is {config_hash}); "
                "use a new run directory, or delete that one to start over"
            )
        return
    store.write_bytes(stamp, config_hash.encode())


def completed_shard(out_dir: str | Path, shard_index: int, config_hash: str) -> dict | None:
    """The record of a shard finished by an earlier run of the same config, if its tar is whole: on a local disk
    its sha256 is checked, on an object store its size (the tar was moved onto its key whole, and validation
    hashes every shard before a version is published)."""
    store = Store(out_dir)
    part, tar = part_name(shard_index), SHARD_PATTERN.format(shard_index)
    if not (store.isfile(part) and store.isfile(tar)):
        return None
    rec = json.loads(store.read_text(part))
    if rec.get("config_hash") != config_hash:
        return None
    whole = sha256_of(store.path(tar)) == rec.get("sha256") if store.local else store.size(tar) == rec.get("bytes")
    return rec if whole else None


def synthesize_shard(
    out_dir: str | Path,
    shard_index: int,
    plans: list[SamplePlan],
    scenes: list[SceneRef],
    compositor: Compositor,
    on_sample=None,
) -> dict:
    """Compose the samples of one shard and write it. A bad scene or placement quarantines that sample.

    Returns the shard record: ``{"shard", "sha256", "samples", "bytes", "rows", "rejects", "seconds"}``;
    the same record is saved beside the shard so a later run can skip it.
    """
    store = Store(out_dir)
    cfg = compositor.cfg.shards
    name = SHARD_PATTERN.format(shard_index)
    t0 = time.perf_counter()
    samples, rows, rejects = [], [], []
    cache: dict[int, Scene] = {}
    made: dict[tuple[int, int], Composite | Exception] = {}  # what the conditions of one composite share
    for plan in plans:
        check_stop(f"{name} before it was written; run the same command again to resume")
        ref = scenes[plan.scene_index]
        try:
            if plan.scene_index not in cache:
                cache.clear()
                cache[plan.scene_index] = load_scene(
                    ref, max_unknown_label_fraction=compositor.cfg.scenes.max_unknown_label_fraction
                )
            scene = cache[plan.scene_index]
            if (plan.scene_index, plan.seed) not in made:
                made.clear()
                try:
                    made[(plan.scene_index, plan.seed)] = compositor.compose(scene, plan)
                except NoPlacementError as e:  # every condition of this composite fails the same way
                    made[(plan.scene_index, plan.seed)] = e
            comp = made[(plan.scene_index, plan.seed)]
            if isinstance(comp, Exception):
                raise comp
            comp = compositor.weathered(comp, scene, plan)
        except RunDirError:  # a file that cannot be written is not this sample's fault: the run stops
            raise
        except (BadInputError, NoPlacementError) as e:
            reason = (e.reason or "bad_scene") if isinstance(e, BadInputError) else "no_placement"
            rejects.append(
                RejectRecord(stage="composite", item=f"{plan.key} ({ref.image})", reason=reason, detail=str(e))
            )
            log.warning("sample %s quarantined: %s", plan.key, e)
            continue
        samples.append(encode_composite(comp, cfg.image_format, cfg.jpeg_quality))
        rows.append(manifest_row(comp, name, compositor.by_id))
        if on_sample is not None:
            on_sample()
    digest, size = store_tar_shard(store, name, samples)
    record = {
        "shard": name,
        "sha256": digest,
        "config_hash": compositor.config_hash,
        "samples": len(samples),
        "bytes": size,
        "rows": rows,
        "rejects": [r.model_dump() for r in rejects],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    store.write_bytes(part_name(shard_index), json_bytes(record))  # after the tar: the record says it is whole
    return record


def write_shard(out_dir: str | Path, shard_index: int, scenes: list[SceneRef], cfg: SynthConfig, bank_dir) -> dict:
    """``synthesize_or_resume`` of shard ``shard_index`` of ``cfg``'s plan, from picklable arguments only (the plan
    part and the bank are made and read by the process that runs it): a shard is a pure function of (config, shard
    index), so any worker of a cluster writes the same bytes. ``out_dir`` may be an object-store URL that every
    worker writes to; the worker must see ``bank_dir`` and the scene files (a shared filesystem)."""
    ids = [s.scene_id for s in scenes]
    plans = shard_plans(ids, cfg.num_samples, cfg.seed, cfg.weather, cfg.shards.samples_per_shard, shard_index)
    return synthesize_or_resume(out_dir, shard_index, plans, scenes, compositor_for(cfg, bank_dir))


def synthesize_or_resume(
    out_dir: str | Path,
    shard_index: int,
    plans: list[SamplePlan],
    scenes: list[SceneRef],
    compositor: Compositor,
    on_sample=None,
) -> dict:
    """The shard's record from an earlier run of the same config (``skipped: True``), or a fresh one."""
    done = completed_shard(out_dir, shard_index, compositor.config_hash)
    if done is not None:
        return done | {"skipped": True}
    return synthesize_shard(out_dir, shard_index, plans, scenes, compositor, on_sample)
