"""The frozen segmenter a method trains over: the configured checkpoint, or (the demo profile, no weights) a small
closed-set segmenter trained first on the clean scenes the shards were composited on, once per (segmenter, seed,
crop, split, version)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from models.segmenters import FrozenSegmenter, build_segmenter
from schemas import TrainConfig
from tasks.checkpoints import resolve_segmenter_checkpoint, save_atomic
from tasks.labels import ANOMALY, NUM_TRAIN_CLASSES, VOID
from tasks.runtime import Interrupted, stop_requested
from tasks.segmentation_metrics import ConfusionMatrix
from tasks.shardset import shard_urls, validation_samples
from tasks.train.data import check_crop, check_splits, train_loader
from tasks.train.extras import AnomalyMix
from tasks.train.optim import poly_schedule

Log = Callable[[str], None]


def segmenter_checkpoint(
    cfg: TrainConfig,
    version: str | Path,
    out_dir: Path,
    progress: bool,
    log: Log,
    segmenters_dir: str | Path | None = None,
) -> Path:
    """The configured checkpoint, or (demo profile) one pre-trained on this version's shards, saved (and reused)
    in ``segmenters_dir``: by default ``<out_dir>/../segmenters``, shared by sibling out dirs (the methods of one
    run, ``<run_dir>/train/<method>-<version>``); the train flow passes ``<out_dir>/segmenters`` for an explicit
    ``--out-dir``, so nothing is written beside it."""
    if cfg.segmenter.checkpoint is not None:
        return resolve_segmenter_checkpoint(cfg.segmenter.checkpoint)
    tag = json.dumps(
        [cfg.segmenter.model_dump(mode="json"), cfg.seed, cfg.crop, cfg.val_fraction, str(version), "clean scenes"]
    )
    h = hashlib.sha256(tag.encode()).hexdigest()[:10]
    where = Path(segmenters_dir) if segmenters_dir is not None else Path(out_dir).parent / "segmenters"
    return pretrain_closed_set(cfg, version, where / f"{cfg.segmenter.name}-{h}.pt", progress, log)


def pretrain_closed_set(
    cfg: TrainConfig, version: str | Path, out_path: Path, progress: bool = True, log: Log = print
) -> Path:
    """Train ``cfg.segmenter`` from scratch with its own loss (``supervised_loss``) on the clean scenes of the
    version's scene source, cropped and flipped like the shards, so it never sees a pasted object; and save its
    state dict. Where those scenes are not at hand (a remote version), on the composites with their anomaly pixels
    void: a per-pixel network ignores them, but a mask-classification one learns them as "no object" (warned).
    This is what the demo runs when no real Cityscapes-trained weights are configured: a weak but honest
    closed-set segmenter to freeze."""
    if out_path.is_file():
        log(f"closed-set segmenter: reusing {out_path}")
        return out_path
    check_splits(version, cfg.val_fraction)
    check_crop(version, cfg.crop)
    torch.manual_seed(cfg.seed)
    seg = build_segmenter(cfg.segmenter.name, **cfg.segmenter.options)
    net = seg.net
    for p in net.parameters():
        p.requires_grad_(True)
    net.train()
    pc = cfg.segmenter.pretrain
    opt = torch.optim.Adam(net.parameters(), lr=pc.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_schedule(pc.steps, 0.9))
    urls = shard_urls(version)
    loader = train_loader(urls, cfg.model_copy(update={"batch_size": pc.batch_size}))
    clean = clean_scenes(str(version), cfg.seed, log)
    bar = tqdm(total=pc.steps, desc=f"pre-train {seg.name} (closed set)", unit="step", disable=not progress)
    losses = []
    for step, (x, y) in enumerate(loader):
        if step >= pc.steps:
            break
        if clean is not None:
            x, y = clean.batch(x, y, "cpu")
        loss = seg.supervised_loss(x, y.masked_fill(y == ANOMALY, VOID))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if stop_requested() and step + 1 < pc.steps:
            bar.close()
            raise Interrupted(
                f"closed-set pre-training of {seg.name} at step {step + 1}/{pc.steps} (it is short and starts "
                "over); run the same command again"
            )
    bar.close()
    save_atomic({k: v.detach().cpu() for k, v in net.state_dict().items()}, out_path)
    miou = _closed_set_miou(seg, urls, cfg)
    summary = {
        "steps": pc.steps,
        "data": "composites" if clean is None else "clean scenes",
        "first_loss": losses[0],
        "last_loss": float(np.mean(losses[-20:])),
        "val_miou": miou,
    }
    out_path.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    log(f"closed-set segmenter: {out_path} (loss {losses[0]:.3f} → {summary['last_loss']:.3f}, val mIoU {miou:.3f})")
    return out_path


def clean_scenes(version: str, seed: int, log: Log) -> AnomalyMix | None:
    """A provider that replaces every sample by a clean scene of the version's scene source (AnomalyMix with
    probability 0), or None where those scenes cannot be found here."""
    try:
        return AnomalyMix(version, seed, probability=0.0)
    except FileNotFoundError as e:
        log(
            f"closed-set pre-training on the composites, anomaly pixels void (a mask-classification network learns "
            f"them as no object): {e}"
        )
        return None


@torch.no_grad()
def _closed_set_miou(seg: FrozenSegmenter, urls: list[str], cfg: TrainConfig) -> float:
    seg.freeze()
    cm = ConfusionMatrix(NUM_TRAIN_CLASSES)
    for s in validation_samples(urls, cfg.val_fraction, cfg.val_limit):
        x = torch.from_numpy(s["image"]).permute(2, 0, 1)[None].float().div(255)
        pred = seg(x).argmax(1)[0].numpy().astype(np.uint8)
        label = s["label"].copy()
        label[label == ANOMALY] = VOID
        cm.update(pred, label)
    return float(cm.compute()["miou"])
