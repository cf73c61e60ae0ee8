"""The ``train`` flow: an anomaly method (EEL, RPL, RPL + CoroCL) trained on a shard version over a frozen
segmenter. Wiring only: resolve the version, (demo profile) pre-train a closed-set segmenter, train, evaluate.
Deployments ``train/eel`` and ``train/rpl`` (prefect.yaml) take the shard version as a parameter.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from schemas.config import load_train_config
from tasks.train import resolve_version, segmenter_checkpoint, train_method

segmenter_task = task(segmenter_checkpoint, name="frozen-segmenter", cache_policy=NO_CACHE)
train_task = task(train_method, name="train-method", task_run_name="{cfg.method}", cache_policy=NO_CACHE)


def default_out_dir(version: str, method: str) -> str:
    """``<run_dir>/train/<method>-<version id>`` for a resolved local version."""
    if "://" in version:
        raise ValueError("out_dir is required for a remote shard version")
    v = Path(version)
    return str(v.parent.parent / "train" / f"{method}-{v.name}")


@flow(name="train")
def train(
    config_path: str = "configs/train_eel.yaml",
    shards: str = "runs/demo",
    out_dir: str | None = None,
    method: str | None = None,
    overrides: dict | None = None,
    resume: bool = True,
) -> dict:
    """``shards``: a shard version directory, a run directory (its latest version) or an fsspec URL."""
    log = get_run_logger()
    over = dict(overrides or {})
    if method:
        over["method"] = method
    cfg = load_train_config(config_path, over)
    version = resolve_version(shards)
    out = Path(out_dir or default_out_dir(version, cfg.method))
    seg_ckpt = segmenter_task(cfg, version, out, True, log.info)
    cfg = cfg.model_copy(update={"segmenter": cfg.segmenter.model_copy(update={"checkpoint": seg_ckpt})})
    result = train_task(cfg, version, out, resume, True, log.info)
    m = result.metrics
    create_table_artifact(
        table=[{k: m.get(k) for k in ("method", "steps", "auroc", "ap", "fpr95", "closed_set_agreement")}],
        key=f"train-{cfg.method}",
        description=f"{cfg.method} on {version}",
    )
    log.info("model %s, metrics %s", result.model, out / "metrics.json")
    return {"model": str(result.model), "metrics": str(out / "metrics.json"), "out_dir": str(out)} | {
        k: m.get(k) for k in ("auroc", "ap", "fpr95", "first_loss", "last_loss", "steps")
    }
