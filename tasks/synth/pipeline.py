"""Stage functions of the synthesis run, each pure in its inputs and explicit about where it writes.

``flows/synth.py`` wires these into the Prefect flow; the CLI and the benchmark call them directly.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import shutil
from pathlib import Path

from data_manifests.parquet import SAMPLE_SCHEMA, SHARD_SCHEMA
from schemas import COCO_CITYSCAPES_OVERLAP, RejectRecord, SynthConfig
from schemas.registries import OBJECT_SOURCES
from tasks import CODE_VERSION
from tasks.object_bank import OBJECT_MANIFEST, BankObject, write_object_bank
from tasks.runtime import check_stop
from tasks.sample_format import DATASET, REJECTS, SAMPLES, SHARDS
from tasks.scenes import SceneRef, index_scenes
from tasks.shards import PARTIAL_DIR, write_json_atomic, write_rejects, write_table
from tasks.synth.coco import canonical_class
from tasks.synth.object_sources import BankContext
from tasks.synth.saliency import LazyMasker

log = logging.getLogger(__name__)

BANK_STAMP = "bank.json"


def prepare_scenes(cfg: SynthConfig, run_dir: str | Path) -> tuple[list[SceneRef], list[RejectRecord]]:
    """Index the configured scene source (a source that makes files, e.g. rendered demo scenes or pseudo labels,
    writes them under ``run_dir/scenes``)."""
    return index_scenes(cfg, run_dir)


def select_sources(cfg: SynthConfig, sources: list[str] | None = None) -> SynthConfig:
    """The config restricted to the object ``sources`` named (others switched off). A source that is named but
    not configured is an error: a run never silently does less than asked."""
    if sources is None:
        return cfg
    for name in sources:
        OBJECT_SOURCES.check_name(name)
    oc = cfg.objects
    missing = [s for s in sources if OBJECT_SOURCES.get(s).with_(oc) is None]
    if missing:
        raise ValueError(f"object sources {missing} were asked for but the config has no section for them")
    for name, source in OBJECT_SOURCES.items():
        if name in sources:
            oc = oc.model_copy(update=source.with_(oc))
        elif source.configured(oc):
            oc = oc.model_copy(update=source.without(oc))
    return SynthConfig.model_validate(cfg.model_copy(update={"objects": oc}).model_dump())


def _bank_hash(ctx: BankContext) -> str:
    """Identity of a bank: its config, what each configured source reads beyond it (names and sizes of source
    files, the generated objects it takes from the store, the scenes patches are cut from)."""
    cfg = ctx.cfg
    sources = [x for _, source in _configured(cfg) for x in source.identity(ctx)]
    unused = {k for k in ("exclude_classes", "sources") if not getattr(cfg.objects, k)}
    payload = {
        "sources": sources,
        "objects": cfg.objects.model_dump(mode="json", exclude=unused),
        "saliency": cfg.saliency.model_dump(mode="json", exclude={"model_home"}),
        "placement_excluded": sorted(ctx.excluded),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _configured(cfg: SynthConfig) -> list[tuple[str, object]]:
    return [(name, source) for name, source in OBJECT_SOURCES.items() if source.configured(cfg.objects)]


def _excluded_classes(cfg: SynthConfig) -> set[str]:
    """Classes never accepted as anomalies, from any source (photos are filtered like COCO instances)."""
    names = cfg.objects.coco.exclude_categories if cfg.objects.coco else COCO_CITYSCAPES_OVERLAP
    return {canonical_class(n) for n in names} | {"rider"}  # rider: a Cityscapes class with no COCO twin


def build_object_bank(
    cfg: SynthConfig,
    bank_dir: str | Path,
    masker=None,
    generated: str | Path | None = None,
    scenes: list[SceneRef] | None = None,
) -> Path:
    """Extract objects from every configured source (``OBJECT_SOURCES``, in registry order) into a bank; reuse a
    bank built from the same config.

    ``masker`` (soft mask from RGB) defaults to rembg with ``cfg.saliency``; it is created only if a
    photo without a mask needs it. ``generated``: the diffusion object store whose accepted objects join
    the bank (read by the ``diffusion`` source when configured). ``scenes``: what the ``patches`` source cuts from.
    """
    bank_dir = Path(bank_dir)
    stamp = bank_dir / BANK_STAMP
    ctx = BankContext(
        cfg=cfg,
        bank_dir=bank_dir,
        masker=masker or LazyMasker(cfg.saliency.model, cfg.saliency.model_home),
        excluded=_excluded_classes(cfg),
        generated=Path(generated) if generated is not None else None,
        scenes=list(scenes or []),
    )
    h = _bank_hash(ctx)
    if (bank_dir / OBJECT_MANIFEST).is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("hash") == h:
        log.info("object bank %s is up to date (hash %s)", bank_dir, h)
        return bank_dir
    oc = cfg.objects
    objects: list[BankObject] = []
    rejects: list[RejectRecord] = []
    for name, source in _configured(cfg):
        check_stop(f"before the {name} objects of the object bank; run the same command again (it starts over)")
        got, rej = source.extract(ctx)
        objects += got
        rejects += rej
    held_out = {canonical_class(c) for c in oc.exclude_classes}
    out = [o for o in objects if canonical_class(o.record.class_name) in held_out]
    rejects += [
        RejectRecord(stage="bank", item=o.record.object_id, reason="excluded_class", detail=o.record.class_name)
        for o in out
    ]
    objects = [o for o in objects if canonical_class(o.record.class_name) not in held_out]
    if not objects:
        bank_dir.mkdir(parents=True, exist_ok=True)
        write_rejects(bank_dir / REJECTS, rejects)
        reasons = ", ".join(sorted({r.reason for r in rejects})) or "no sources configured"
        raise ValueError(
            f"object bank is empty: every candidate object was rejected ({reasons}); see {bank_dir}/rejects.parquet"
        )
    write_object_bank(bank_dir, objects, rejects, oc.objects_per_shard)
    write_json_atomic(stamp, {"hash": h, "objects": len(objects), "rejects": len(rejects)})
    log.info("object bank %s: %d objects, %d rejected", bank_dir, len(objects), len(rejects))
    return bank_dir


class TooFewSamplesError(RuntimeError):
    """A synthesis run made too few samples to be a dataset (the message says why)."""


def check_yield(out_dir: Path, cfg: SynthConfig, made: int, rejects: list[RejectRecord]) -> None:
    planned = cfg.planned_samples()
    need = max(1, math.ceil(cfg.min_sample_fraction * planned))
    if made >= need:
        return
    why = "no reject was recorded"
    if rejects:
        (stage, reason), n = collections.Counter((r.stage, r.reason) for r in rejects).most_common(1)[0]
        example = next(r for r in rejects if (r.stage, r.reason) == (stage, reason))
        why = f"most common reject: {stage}/{reason} ({n} of {len(rejects)}), e.g. {example.item}: {example.detail}"
    raise TooFewSamplesError(
        f"{out_dir}: {made} of {planned} samples were made, fewer than {need} "
        f"(min_sample_fraction {cfg.min_sample_fraction}); the version is not published and LATEST is unchanged. "
        f"{why}"
    )


def finalize_shard_set(
    out_dir: str | Path,
    cfg: SynthConfig,
    records: list[dict],
    extra_rejects: list[RejectRecord],
    version: dict | None = None,
    dataset_name: str = DATASET,
) -> dict:
    """Write samples/shards/rejects parquet and dataset.json (as ``dataset_name``: the flow writes it under a hidden
    name and renames it once the set is validated) from the shard records; drop the scratch dir.
    A run that made fewer than ``cfg.min_sample_fraction`` of its samples raises ``TooFewSamplesError`` first:
    nothing is written, so the version stays incomplete and is never published."""
    out_dir = Path(out_dir)
    records = sorted(records, key=lambda r: r["shard"])
    rows = [row for r in records for row in r["rows"]]
    rejects = list(extra_rejects) + [RejectRecord(**x) for r in records for x in r["rejects"]]
    check_yield(out_dir, cfg, len(rows), rejects)
    write_table(out_dir / SAMPLES, rows, SAMPLE_SCHEMA)
    write_table(
        out_dir / SHARDS, [{k: r[k] for k in ("shard", "sha256", "samples", "bytes")} for r in records], SHARD_SCHEMA
    )
    write_rejects(out_dir / REJECTS, rejects)
    summary = {
        "name": cfg.name,
        "config_hash": cfg.content_hash(),
        "code_version": CODE_VERSION,
        "seed": cfg.seed,
        "samples": len(rows),
        "shards": len(records),
        "rejects": len(rejects),
        **({"conditions": dict(collections.Counter(r["condition"] for r in rows))} if cfg.weather else {}),
        **(version or {}),
        "config": cfg.model_dump(mode="json"),
    }
    write_json_atomic(out_dir / dataset_name, summary)
    shutil.rmtree(out_dir / PARTIAL_DIR, ignore_errors=True)
    return summary
