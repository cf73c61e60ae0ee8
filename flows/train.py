"""The ``train`` flow: any registered anomaly method trained on a shard version over a frozen segmenter. Wiring
only: resolve the version, (demo profile) pre-train a closed-set segmenter, train, evaluate. The deployment
``train/method`` (prefect.yaml) takes the method name and the shard version as parameters.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from models.methods import get_method
from schemas import load_train_config
from tasks.layout import RunLayout
from tasks.runtime import configure_process
from tasks.storage import is_url
from tasks.train.pretrain import segmenter_checkpoint
from tasks.train.trainer import train_method
from tasks.versions import resolve_version

segmenter_task = task(segmenter_checkpoint, name="frozen-segmenter", cache_policy=NO_CACHE)
train_task = task(train_method, name="train-method", task_run_name="{cfg.method.name}", cache_policy=NO_CACHE)


def default_out_dir(version: str, method: str) -> str:
    """``<run_dir>/train/<method>-<version id>`` for a resolved local version."""
    if is_url(version):
        raise ValueError("out_dir is required for a remote shard version")
    return str(RunLayout.of_version(version).train(method, Path(version).name))


def segmenters_dir(out: Path, explicit: bool) -> Path:
    """Where the demo profile pre-trains (and reuses) its closed-set segmenter: inside an ``explicit`` out dir
    (``<out_dir>/segmenters``: a run writes nothing beside the directory it was given), else beside the default
    out dirs, ``<run_dir>/train/segmenters``, shared by every method trained on that run."""
    return out / "segmenters" if explicit else out.parent / "segmenters"


def train_direct(
    config_path: str, shards: str, out_dir: str | None, method: str | None, overrides: dict | None, resume: bool
) -> dict | None:
    """What the flow runs, without Prefect: one process of a multi-process launch (``accelerate launch``), where
    every process trains and one flow per process would be N runs of one job. The summary on rank 0, else None."""
    configure_process()
    cfg = load_train_config(config_path, overrides, method)
    version = resolve_version(shards)
    out = Path(out_dir or default_out_dir(version, cfg.method.name))
    main = int(os.environ.get("RANK", "0")) == 0
    log = print if main else lambda *_: None  # one log, not N
    result = train_method(cfg, version, out, resume, True, log, segmenters_dir(out, out_dir is not None))
    return _summary(result, out) if main else None


def _summary(result, out: Path) -> dict:
    m = result.metrics
    return {"model": str(result.model), "metrics": str(out / "metrics.json"), "out_dir": str(out)} | {
        k: m.get(k) for k in ("auroc", "ap", "fpr95", "first_loss", "last_loss", "steps")
    }


@flow(name="train")
def train(
    config_path: str = "configs/train.yaml",
    shards: str = "runs/demo",
    out_dir: str | None = None,
    method: str | None = None,
    overrides: dict | None = None,
    resume: bool = True,
) -> dict:
    """``shards``: a shard version directory, a run directory (its latest version) or an fsspec URL;
    ``method``: a registered method (its defaults unless the config's ``method:`` names it)."""
    configure_process()  # a deployment's worker starts the program here
    log = get_run_logger()
    cfg = load_train_config(config_path, overrides, method)
    cfg = cfg.for_kind(get_method(cfg.method.name).segmenter_kind)  # the segmenter of the kind the method needs
    version = resolve_version(shards)
    out = Path(out_dir or default_out_dir(version, cfg.method.name))
    seg_ckpt = segmenter_task(cfg, version, out, True, log.info, segmenters_dir(out, out_dir is not None))
    cfg = cfg.model_copy(update={"segmenter": cfg.segmenter.model_copy(update={"checkpoint": seg_ckpt})})
    result = train_task(cfg, version, out, resume, True, log.info)
    m = result.metrics
    create_table_artifact(
        table=[{k: m.get(k) for k in ("method", "steps", "auroc", "ap", "fpr95", "closed_set_agreement")}],
        key=f"train-{cfg.method.name.replace('_', '-')}",
        description=f"{cfg.method.name} on {version}",
    )
    log.info("model %s, metrics %s", result.model, out / "metrics.json")
    return _summary(result, out)
