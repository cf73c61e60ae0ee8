"""Making one shard-set version: scenes -> object bank -> version plan -> shards -> manifest -> validation -> publish
+ retention -> report. A plain function, called by the ``synth`` flow (which adds Prefect tasks, artifacts and
logging through a ``StageRunner``), by the tests and by ``make bench-synth``.

A version whose content (config + bank + scenes) equals the latest one is not made again; an interrupted version is
resumed by running the same thing again. ``dataset.json`` (what makes a version complete for every reader) is written
under a hidden name and put in place only once the version validates.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from schemas import ConfigError, RejectRecord, SynthConfig
from tasks.imageio import BadInputError, encode_gray_png, encode_rgb
from tasks.layout import RunLayout
from tasks.object_bank import BankObject
from tasks.runlock import run_lock
from tasks.runtime import Interrupted, check_stop
from tasks.sample_format import DATASET, REJECTS
from tasks.scenes import load_scene, scene_identity
from tasks.shards import PARTS_DIR, read_rejects
from tasks.storage import Store, free_space, human_bytes
from tasks.synth.compositor import compositor_for
from tasks.synth.pipeline import build_object_bank, finalize_shard_set, prepare_scenes
from tasks.synth.plan import count_shards, iter_samples
from tasks.synth.report import REPORT_FILES, write_report
from tasks.synth.sheets import scene_sheet, weather_sheet
from tasks.synth.validate import validate_shard_set
from tasks.synth.writer import claim_shard_dir, write_shard
from tasks.versions import plan_version, prune_versions, publish_version

log = logging.getLogger(__name__)

PENDING_DATASET = f".{DATASET}.pending"


class StageRunner:
    """How the stages of a version run. This one: in this process, one after another, shards in order. The flow's
    runner makes each stage a Prefect task, submits the shard tasks to its task runner (threads or Dask) and logs to
    Prefect; ``stage`` and ``shards`` must return what the plain calls return."""

    def stage(self, name: str, fn: Callable, *args, **kwargs):
        return fn(*args, **kwargs)

    def shards(self, version_id: str, calls: list[tuple]) -> Iterator[dict]:
        """``write_shard(*args)`` for each of ``calls``, yielding the shard records as they finish (any order)."""
        for args in calls:
            yield write_shard(*args)

    def log(self, message: str) -> None:
        log.info(message)


@dataclass
class VersionResult:
    summary: dict  # dataset.json of the version, plus status, timings, paths
    bank: list[BankObject]
    rejects: list[RejectRecord]
    timings: dict[str, float] = field(default_factory=dict)


def check_space(cfg: SynthConfig, scenes: list, shard_dir: str | Path, missing: int) -> None:
    """Refuse (``ConfigError``) to write ``missing`` more samples when they cannot fit on the disk of ``shard_dir``:
    that many times the size of one (the first readable scene and its label, encoded as the shards encode them).
    Object stores report no free space; they are not checked."""
    store = Store(shard_dir)
    if not store.local or missing <= 0:
        return
    for ref in scenes[:8]:
        try:
            scene = load_scene(ref, max_unknown_label_fraction=1.0)
            break
        except BadInputError:
            continue
    else:
        return  # no readable scene: the composite stage quarantines every sample and says why
    fmt = cfg.shards.image_format
    per_sample = len(encode_rgb(scene.image, fmt, cfg.shards.jpeg_quality)) + 2 * len(encode_gray_png(scene.label))
    per_sample += 2048  # meta and tar headers
    need = missing * per_sample * 1.1
    free, mount = free_space(store.path())
    if need > free:
        h, w = scene.label.shape
        raise ConfigError(
            f"num_samples={cfg.num_samples} needs about {human_bytes(need)} more ({missing} samples x ~"
            f"{human_bytes(per_sample)} each at {w}x{h} {fmt}) but {mount} has {human_bytes(free)} free; lower "
            "num_samples or free space"
        )


def _written_shards(shards_at) -> int:
    """Shards of an unfinished version that are complete on disk (each has its ``.tar.json`` beside it)."""
    return sum(n.endswith(".tar.json") for n in shards_at.listdir(PARTS_DIR))


def _retention(run_dir: str, keep: int, published: str, runner: StageRunner) -> list[str]:
    """``prune_versions`` after publishing: a failure to delete is a warning (the new version is out already)."""
    try:
        removed = prune_versions(run_dir, keep, protect=published)
    except OSError as e:
        runner.log(f"retention (keep {keep}) failed, old versions stay: {e}")
        return []
    if removed:
        runner.log(f"retention (keep {keep}): removed {', '.join(removed)}")
    return removed


def make_version(
    cfg: SynthConfig,
    run_dir: str,
    work_dir: str | Path | None = None,
    keep_versions: int = 5,
    generation: dict | None = None,
    runner: StageRunner | None = None,
    timings: dict[str, float] | None = None,
) -> VersionResult:
    """Synthesize a new shard-set version of ``cfg`` under ``run_dir/versions/`` (``LATEST`` and, on a local disk,
    the ``run_dir/shards`` symlink name the latest); ``run_dir`` is a local directory or an fsspec URL.

    ``generation``: what the diffusion stage (run before, by the flow) reported; its objects are read from
    ``<work>/generated``. ``keep_versions``: retention of complete versions. Holds the run directory's lock
    (``tasks.runlock``) throughout: a second run into the same directory stops with a message naming this one."""
    with run_lock(run_dir):
        return _make_version(cfg, run_dir, work_dir, keep_versions, generation, runner, timings)


def _make_version(
    cfg: SynthConfig,
    run_dir: str,
    work_dir: str | Path | None,
    keep_versions: int,
    generation: dict | None,
    runner: StageRunner | None,
    timings: dict[str, float] | None,
) -> VersionResult:
    runner = runner or StageRunner()
    timings = dict(timings or {})
    remote = not Store(run_dir).local
    run = RunLayout.of(run_dir, work_dir)
    work, bank_dir, store = run.work, run.objects, run.generated

    t = time.perf_counter()
    scenes, scene_rejects = runner.stage("prepare-scenes", prepare_scenes, cfg, work)
    timings["scenes"] = time.perf_counter() - t
    runner.log(f"{len(scenes)} scenes ({len(scene_rejects)} rejected)")

    t = time.perf_counter()
    runner.stage("build-object-bank", build_object_bank, cfg, bank_dir, generated=store, scenes=scenes)
    compositor = compositor_for(cfg, bank_dir)  # the bank read once: the one in-process shard tasks share
    bank = compositor.bank
    bank_rejects = read_rejects(bank_dir / REJECTS)
    timings["object bank"] = time.perf_counter() - t
    runner.log(f"object bank: {len(bank)} objects, {len(bank_rejects)} rejected")
    check_stop("after the object bank, before any shard; run the same command again (the bank is kept)")

    bank_hash = hashlib.sha256("\n".join(o.record.object_id for o in bank).encode()).hexdigest()[:16]
    scenes_hash = scene_identity(scenes)  # a fixed or replaced scene file makes a new version
    content_hash = hashlib.sha256(f"{compositor.config_hash}:{bank_hash}:{scenes_hash}".encode()).hexdigest()
    plan = plan_version(run_dir, content_hash)
    shard_dir, shards_at = plan.version.path, Store(plan.version.path)
    stage = run.staging(plan.version.id) if remote else Path(shard_dir)  # manifests and sheets, then uploaded
    runner.log(f"version {plan.version.id} ({plan.status}), parent {plan.parent}")
    if plan.status == "unchanged":
        summary = json.loads(shards_at.read_text(DATASET))
    else:
        t = time.perf_counter()
        claim_shard_dir(shard_dir, compositor.config_hash)
        ids = [s.scene_id for s in scenes]
        n_shards = count_shards(cfg.num_samples, cfg.weather, cfg.shards.samples_per_shard)
        done = _written_shards(shards_at)  # an interrupted run's
        check_space(cfg, scenes, shard_dir, cfg.planned_samples() - done * cfg.shards.samples_per_shard)
        calls = [(shard_dir, i, scenes, cfg, bank_dir) for i in range(n_shards)]  # each plans its own part
        records = []
        try:
            for rec in runner.shards(plan.version.id, calls):
                records.append(rec)
        except Interrupted:
            raise Interrupted(  # counted on disk: a worker may have finished one after the stop was seen
                f"{_written_shards(shards_at)} of {len(calls)} shards of {plan.version.id} are written and kept; run the "
                "same command again to resume"
            ) from None
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
        runner.stage("scenes-sheet", scene_sheet, stage / "scenes.png", scenes, cfg)  # before the manifest
        if cfg.weather is not None:  # before the manifest: a finished version always has its contact sheet
            t = time.perf_counter()
            first = list(itertools.islice(iter_samples(ids, cfg.num_samples, cfg.seed, cfg.weather), 256))
            runner.stage("weather-contact-sheet", weather_sheet, stage / "weather.png", scenes, first, compositor)
            timings["weather contact sheet"] = time.perf_counter() - t
        # dataset.json under a hidden name until validated
        rejects = scene_rejects + bank_rejects
        summary = runner.stage(
            "finalize-manifest", finalize_shard_set, stage, cfg, records, rejects, version, PENDING_DATASET
        )
        if remote:  # hidden files stay behind
            t = time.perf_counter()
            shards_at.upload_dir(stage)
            timings["upload manifests"] = time.perf_counter() - t
    t = time.perf_counter()
    checked, problems = runner.stage("validate-shards", validate_shard_set, shard_dir)
    timings["validate"] = time.perf_counter() - t
    if problems:
        raise RuntimeError(f"{len(problems)} validation problems in {shard_dir}:\n" + "\n".join(problems[:20]))
    previews = [store / "previews" / f"{b}.jpg" for b in (generation or {}).get("batches", [])]
    with shards_at.open(REJECTS) as f:
        rejects = read_rejects(f)
    if plan.status == "unchanged":  # a published version keeps the report of the run that made it
        report = shards_at.path("report.md")
    else:  # the report and every sheet before dataset.json: a complete version always has them
        report = runner.stage(
            "write-report", write_report, stage, shard_dir, summary, bank, rejects, timings, generation, previews
        )
        if remote:
            shards_at.upload_dir(stage, only=REPORT_FILES)
            report = shards_at.path(report.name)
        # the version is complete from here on
        if remote:
            shards_at.put_file(stage / PENDING_DATASET, DATASET)
            (stage / PENDING_DATASET).unlink()
        else:
            os.replace(stage / PENDING_DATASET, stage / DATASET)
    publish_version(run_dir, plan.version)  # LATEST moves last: nothing after it can fail the run
    removed = _retention(run_dir, keep_versions, plan.version.id, runner)
    for vid in removed if remote else []:  # their staged files on this machine
        shutil.rmtree(run.staging(vid), ignore_errors=True)
    summary = summary | {"status": plan.status, "generation": generation, "removed_versions": removed}
    summary |= {"timings": {k: round(v, 3) for k, v in timings.items()}}
    latest = run.latest if remote else run.latest_link
    summary |= {"shard_dir": str(shard_dir), "latest": str(latest), "report": str(report), "validated": checked}
    runner.log(f"{checked} samples validated; version {plan.version.id} in {shard_dir}; report {report}")
    return VersionResult(summary, bank, rejects, timings)
