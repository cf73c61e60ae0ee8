"""Training any registered anomaly method (``models.methods``) on a shard version, over a frozen segmenter; and,
for the demo profile, the closed-set pre-training of a small segmenter on the same shards.

One trainer for all methods: the method's spec builds the head, computes the loss on a batch, names its
parameter groups and any extra per-step data (``tasks.train.extras``), and scores the validation images; the
trainer never asks which method it runs. ``accelerate`` places the model, runs mixed precision and multi-GPU;
each process streams its own shards (seeded by rank), so batches are never dispatched from one process.

Outputs of ``train_method`` under ``out_dir``::

    checkpoints/last.pt     model head + optimizer + scheduler + step (resume); written atomically
    model.pt                the trained head and how to rebuild the model (``tasks.checkpoints.load_method``)
    history.jsonl           one line per logged step (losses, lr) and per evaluation (metrics)
    metrics.json            the final evaluation on the held-in validation split
    config.yaml             the TrainConfig that produced all this
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from models.methods import MethodSpec, TrainingProgress, get_method
from models.segmenters import FrozenSegmenter, build_segmenter
from schemas import TrainConfig
from tasks.checkpoints import frozen_segmenter, read_checkpoint, save_atomic, save_method
from tasks.labels import ANOMALY, NUM_TRAIN_CLASSES, VOID
from tasks.metrics import MetricsUndefinedError
from tasks.scoring import TensorScorer, evaluate_samples
from tasks.seeding import training_seeds
from tasks.segmentation_metrics import ConfusionMatrix
from tasks.shardset import ShardSplit, shard_urls, validation_samples
from tasks.train.data import check_rank_splits, check_splits, rank_shards, train_loader
from tasks.train.extras import ExtraData, build_extras
from tasks.train.optim import build_optimizer

Log = Callable[[str], None]


# ---- pieces ----------------------------------------------------------------------------------------------------


def poly_schedule(total_steps: int, power: float) -> Callable[[int], float]:
    """lr factor (1 − step / total)^power."""
    return lambda step: max(0.0, 1.0 - min(step, total_steps) / total_steps) ** power


def method_scorer(spec: MethodSpec, method_cfg, model: nn.Module, device) -> TensorScorer:
    """A trained method as a scorer of uint8 images (its own score; predictions for the closed-set numbers)."""
    return TensorScorer(lambda x, size: spec.infer(method_cfg, model, x, size), device)


@torch.no_grad()
def evaluate(model: nn.Module, spec: MethodSpec, cfg: TrainConfig, version: str, device, progress=False) -> dict:
    """The method's metrics on the held-in validation composites (the benchmark scoring loop over the ``shards``
    benchmark), and how often ŷ keeps the frozen network's class on inlier pixels (RPL's promise: close to 1)."""
    was_training = model.training
    model.eval()
    # val_fraction 0: no held-out split, the training composites themselves are scored
    split = ShardSplit("held-in" if cfg.val_fraction > 0 else "train", "shards", version, cfg.val_fraction)
    result = {"method": cfg.method.name}
    try:
        scorer = method_scorer(spec, cfg.method, model, device)
        m = evaluate_samples(scorer, split.samples(cfg.val_limit), split.name, progress=progress)["metrics"]
        result |= {k: m[k] for k in ("images", "auroc", "ap", "fpr95", "f1_components", "closed_set_agreement", "miou")}
    except MetricsUndefinedError as e:  # no anomaly (or no inlier) pixel in the split; bad data still raises
        result["metrics_error"] = str(e)
    model.train(was_training)
    return result


def with_extras(loader: Iterable, extras: dict[str, ExtraData], device) -> Iterator[tuple]:
    """(x, y, extras of that batch) for each batch of ``loader``. The extras of the next batch are made in a
    background thread while the current step runs (SLEEG's patch pasting is CPU work a GPU should not wait
    for); providers are still called one batch after the other, in order, so a seed fixes what they give."""
    if not extras:
        for x, y in loader:
            yield x, y, {}
        return

    def make(x, y):
        return {name: e.batch(x, y, device) for name, e in extras.items()}  # the CPU batch

    with ThreadPoolExecutor(1, thread_name_prefix="extras") as pool:
        it = iter(loader)
        nxt = next(it, None)
        fut = pool.submit(make, *nxt) if nxt is not None else None
        while nxt is not None:
            x, y = nxt
            ready = fut.result()
            nxt = next(it, None)
            fut = pool.submit(make, *nxt) if nxt is not None else None
            yield x, y, ready


def _write_history(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _accelerator(cfg: TrainConfig):
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.device == "cpu")


# ---- closed-set pre-training (demo profile) -------------------------------------------------------------------


def pretrain_closed_set(
    cfg: TrainConfig, version: str | Path, out_path: Path, progress: bool = True, log: Log = print
) -> Path:
    """Train ``cfg.segmenter`` from scratch on the shards' inlier labels (anomaly pixels are ignored, so the
    network never learns them) and save its state dict. This is what the demo runs when no real
    Cityscapes-trained weights are configured: a weak but honest closed-set segmenter to freeze."""
    if out_path.is_file():
        log(f"closed-set segmenter: reusing {out_path}")
        return out_path
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
    check_splits(version, cfg.val_fraction)
    loader = train_loader(urls, cfg.model_copy(update={"batch_size": pc.batch_size}))
    bar = tqdm(total=pc.steps, desc=f"pre-train {seg.name} (closed set)", unit="step", disable=not progress)
    losses = []
    for step, (x, y) in enumerate(loader):
        if step >= pc.steps:
            break
        y = y.masked_fill(y == ANOMALY, VOID)
        logits = net(seg.normalize(x))
        loss = F.cross_entropy(logits, y, ignore_index=VOID)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bar.close()
    save_atomic({k: v.detach().cpu() for k, v in net.state_dict().items()}, out_path)
    miou = _closed_set_miou(seg, urls, cfg)
    summary = {"steps": pc.steps, "first_loss": losses[0], "last_loss": float(np.mean(losses[-20:])), "val_miou": miou}
    out_path.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    log(f"closed-set segmenter: {out_path} (loss {losses[0]:.3f} → {summary['last_loss']:.3f}, val mIoU {miou:.3f})")
    return out_path


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


# ---- the trainer ------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    out_dir: Path
    model: Path
    metrics: dict
    steps: int
    first_loss: float | None
    last_loss: float | None


def segmenter_checkpoint(cfg: TrainConfig, version: str | Path, out_dir: Path, progress: bool, log: Log) -> Path:
    """The configured checkpoint, or (demo profile) one pre-trained on this version's shards."""
    if cfg.segmenter.checkpoint is not None:
        return Path(cfg.segmenter.checkpoint)
    tag = json.dumps([cfg.segmenter.model_dump(mode="json"), cfg.seed, cfg.crop, cfg.val_fraction, str(version)])
    h = hashlib.sha256(tag.encode()).hexdigest()[:10]
    return pretrain_closed_set(
        cfg, version, out_dir.parent / "segmenters" / f"{cfg.segmenter.name}-{h}.pt", progress, log
    )


def head_digest(head: dict[str, torch.Tensor]) -> str:
    """sha256 of a head's tensors (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for k in sorted(head):
        t = head[k].detach().cpu().contiguous()
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _write_rank_record(out_dir: Path, rank: int, world: int, shards: list[str], steps: int, head: dict) -> None:
    """``ranks/rank<r>.json``: the shards process ``r`` streamed, its steps, and the digest of its head at the end
    (every process holds the same head in a correct multi-process run; rank 0's is the one saved)."""
    record = {"rank": rank, "world": world, "shards": [Path(u).name for u in shards], "steps": steps}
    record["head_sha256"] = head_digest(head)
    path = out_dir / "ranks" / f"rank{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))


def _finished(out_dir: Path, cfg: TrainConfig, version: str) -> TrainResult | None:
    """The result of an earlier run of this config on this version, if its model and metrics are there."""
    model_path, metrics_path = out_dir / "model.pt", out_dir / "metrics.json"
    if not (model_path.is_file() and metrics_path.is_file()):
        return None
    try:
        state = read_checkpoint(model_path)
        metrics = json.loads(metrics_path.read_text())
    except (ValueError, OSError):
        return None
    if state.get("config_hash") != cfg.content_hash() or state.get("shards") != str(version):
        return None
    return TrainResult(
        out_dir, model_path, metrics, metrics["steps"], metrics.get("first_loss"), metrics.get("last_loss")
    )


def train_method(
    cfg: TrainConfig,
    version: str | Path,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    log: Log = print,
) -> TrainResult:
    """Train ``cfg.method`` on ``version``; outputs under ``out_dir`` (module docstring). With ``resume``, a run
    whose model was already trained with this config on this version is returned as it is, and an interrupted
    one continues from ``checkpoints/last.pt``."""
    out_dir = Path(out_dir)
    version = str(version)
    spec = get_method(cfg.method.name)
    if resume and (done := _finished(out_dir, cfg, version)) is not None:
        log(f"{cfg.method.name}: reusing {done.model} (same config and shards)")
        return done
    urls = shard_urls(version)
    n_train, _ = check_splits(version, cfg.val_fraction)
    accelerator = _accelerator(cfg)
    check_rank_splits(version, cfg.val_fraction, accelerator.num_processes)  # before any process waits for another
    with accelerator.main_process_first():  # the demo profile's closed-set network is trained once, then shared
        seg_ckpt = segmenter_checkpoint(cfg, version, out_dir, progress and accelerator.is_main_process, log)

    torch.manual_seed(cfg.seed)
    model = spec.build(cfg.method, frozen_segmenter(cfg.segmenter, seg_ckpt))
    wd = cfg.weight_decay if cfg.method.weight_decay is None else cfg.method.weight_decay
    optimizer = build_optimizer(spec.param_groups(cfg.method, model), cfg.method, wd)

    if cfg.max_steps is not None:
        total = cfg.max_steps
    else:
        total = max(1, math.ceil(cfg.epochs * n_train / (cfg.batch_size * accelerator.num_processes)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(total, cfg.poly_power))

    start = 0
    last = out_dir / "checkpoints" / "last.pt"
    if resume and last.is_file():
        state = read_checkpoint(last)
        if state["config_hash"] == cfg.content_hash() and state.get("shards") == version:
            spec.load_head(model, state["head"], str(last))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start = int(state["step"])
            log(f"resuming from {last} at step {start}/{total}")
        else:
            log(f"{last} was written by another config or for other shards: starting over")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    # the scheduler is not prepared: accelerate would step it num_processes times per step, while ``total`` already
    # counts steps of all processes together
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(model)
    rank = accelerator.process_index
    seeds = training_seeds(cfg.seed, start, rank)
    extras = build_extras(spec.extras(cfg.method), version, seeds.extras)
    stream_cfg = cfg.model_copy(update={"seed": seeds.stream})  # a resumed run sees new samples
    own_shards = rank_shards(urls, rank, accelerator.num_processes)
    loader = train_loader(urls, stream_cfg, rank, accelerator.num_processes)
    gen = torch.Generator().manual_seed(seeds.loss)

    history = out_dir / "history.jsonl"
    model.train()
    bar = tqdm(
        total=total,
        initial=start,
        desc=f"train {cfg.method.name}",
        unit="step",
        disable=not (progress and accelerator.is_main_process),
    )
    losses: list[float] = []
    wait = 0.0
    t_start = t_prev = time.perf_counter()
    step = start
    metrics: dict = {}
    for x, y, batch_extras in with_extras(loader, extras, accelerator.device):
        if step >= total:
            break
        wait += time.perf_counter() - t_prev
        x, y = x.to(accelerator.device), y.to(accelerator.device)
        with accelerator.autocast():
            parts = spec.loss(cfg.method, model, x, y, batch_extras, gen, TrainingProgress(step, total))
        loss = parts["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"step {step}: loss is {loss.item()} ({ {k: v.item() for k, v in parts.items()} })"
            )
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
        if accelerator.is_main_process and (step % 10 == 0 or step == total):
            row = {"step": step, "lr": scheduler.get_last_lr()[0], "data_wait_s": round(wait, 3)}
            _write_history(history, row | {k: v.item() for k, v in parts.items()})
        if step % cfg.eval_every == 0 or step == total:
            if accelerator.is_main_process:
                metrics = evaluate(inner, spec, cfg, version, accelerator.device)
                _write_history(history, {"step": step, "eval": metrics})
                save_atomic(
                    {
                        "step": step,
                        "config_hash": cfg.content_hash(),
                        "shards": version,
                        "head": {k: v.cpu() for k, v in inner.trainable_state_dict().items()},
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                    },
                    last,
                )
            accelerator.wait_for_everyone()
        t_prev = time.perf_counter()
    bar.close()
    if accelerator.num_processes > 1:
        # DDP all-reduces gradients, so parameters agree; batch-norm running statistics are rank 0's, broadcast at
        # each forward, and each process's last step moved its own. Broadcast them once more: every process then
        # holds the head rank 0 saves.
        for buf in inner.buffers():
            dist.broadcast(buf.data, src=0)
    _write_rank_record(out_dir, rank, accelerator.num_processes, own_shards, step, spec.head_state(inner))

    model_path = out_dir / "model.pt"
    if accelerator.is_main_process:
        if not metrics:
            metrics = evaluate(inner, spec, cfg, version, accelerator.device)
        summary = metrics | {
            "method": cfg.method.name,
            "steps": step,
            "first_loss": losses[0] if losses else None,
            "last_loss": float(np.mean(losses[-10:])) if losses else None,
            "data_wait_fraction": wait / max(time.perf_counter() - t_start, 1e-9),
            "shards": version,
            "segmenter_checkpoint": str(seg_ckpt),
        }
        (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        save_method(model_path, spec, inner, cfg, seg_ckpt, version)  # last: its presence means "finished"
        metrics = summary
    return TrainResult(out_dir, model_path, metrics, step, metrics.get("first_loss"), metrics.get("last_loss"))
