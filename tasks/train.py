"""Training anomaly methods (RPL, RPL + CoroCL, DiffEEL's EEL on RPL) on a shard version, over a frozen
segmenter; and, for the demo profile, the closed-set pre-training of a small segmenter on the same shards.

One trainer for all methods: the method only chooses the loss (``method_loss``) and whether CoroCL's projector
and object context exist. ``accelerate`` places the model, runs mixed precision and multi-GPU; each process
streams its own shards (seeded by rank), so batches are never dispatched from one process.

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
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from models.losses import corocl_loss, rpl_eel_loss, rpl_loss
from models.rpl import ResidualAnomalyModel
from models.scores import anomaly_score
from models.segmenters import FrozenSegmenter, build_segmenter
from schemas.config import TrainConfig
from tasks.checkpoints import frozen_segmenter, read_checkpoint, save_atomic, save_method
from tasks.labels import ANOMALY, NUM_TRAIN_CLASSES, VOID, to_eval_labels
from tasks.metrics import PixelMetrics
from tasks.shards import DATASET
from tasks.train_data import context_batch, count_samples, shard_urls, train_loader, validation_samples

Log = Callable[[str], None]


# ---- pieces ----------------------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig, segmenter: FrozenSegmenter) -> ResidualAnomalyModel:
    projector = cfg.projector_dim if cfg.method == "rpl_corocl" else None
    return ResidualAnomalyModel.create(segmenter, cfg.residual_dim, projector)


def param_groups(model: ResidualAnomalyModel, cfg: TrainConfig) -> list[dict]:
    """The residual's ASPP and bottleneck at ``lr``; the newly initialised layers (output projection, projector)
    at ``lr × head_lr_mult`` (RPL's fine-tune / retrain split)."""
    new = list(model.residual.out.parameters()) + (list(model.projector.parameters()) if model.projector else [])
    new_ids = {id(p) for p in new}
    base = [p for p in model.residual.parameters() if id(p) not in new_ids]
    return [{"params": base, "lr": cfg.lr}, {"params": new, "lr": cfg.lr * cfg.head_lr_mult}]


def poly_schedule(total_steps: int, power: float) -> Callable[[int], float]:
    """lr factor (1 − step / total)^power."""
    return lambda step: max(0.0, 1.0 - min(step, total_steps) / total_steps) ** power


def method_loss(cfg: TrainConfig, out, labels, ctx_out=None, ctx_labels=None, gen=None) -> dict[str, torch.Tensor]:
    if cfg.method == "eel":
        return rpl_eel_loss(out.logits, out.frozen_logits, labels, cfg.lam, cfg.alpha)
    parts = rpl_loss(out.logits, out.frozen_logits, labels, cfg.entropy_t, cfg.out_weight)
    if cfg.method == "rpl_corocl":
        parts["corocl"] = corocl_loss(
            out.embeddings, labels, ctx_out.embeddings, ctx_labels, cfg.tau, cfg.max_views, gen
        )
        parts["loss"] = parts["loss"] + parts["corocl"]
    return parts


@torch.no_grad()
def evaluate(model: ResidualAnomalyModel, urls: list[str], cfg: TrainConfig, device, progress: bool = False) -> dict:
    """PixelMetrics of the method's score on the held-in validation composites, and how often ŷ keeps the
    frozen network's class on inlier pixels (RPL's promise: close to 1)."""
    was_training = model.training
    model.eval()
    metrics = PixelMetrics()
    agree = total = images = 0
    kw = {"alpha": cfg.alpha} if cfg.score == "eel" else {}

    def scored():
        for s in validation_samples(urls, cfg.val_fraction, cfg.val_limit):
            x = torch.from_numpy(s["image"]).permute(2, 0, 1)[None].float().div(255).to(device)
            out = model(x)
            score = anomaly_score(out.logits.float(), cfg.score, cfg.smoothing, **kw)[0].cpu().numpy()
            yield s, out, score

    for s, out, score in tqdm(scored(), desc="evaluate", unit="img", disable=not progress, leave=False):
        label = s["label"]
        metrics.update(score, to_eval_labels(label), name=s["__key__"])
        inlier = torch.from_numpy((label != ANOMALY) & (label != VOID)).to(device)
        same = out.logits.argmax(1)[0] == out.frozen_logits.argmax(1)[0]
        agree += int(same[inlier].sum())
        total += int(inlier.sum())
        images += 1
    if images and metrics.needs_second_pass():  # rare: recount the uncertain bins exactly (tasks.metrics)
        metrics.start_second_pass()
        for s, _, score in scored():
            metrics.update(score, to_eval_labels(s["label"]), name=s["__key__"])
    model.train(was_training)
    result = {"images": images, "closed_set_agreement": agree / total if total else None, "score": cfg.score}
    try:
        m = metrics.compute()
        result |= {k: m[k] for k in ("auroc", "ap", "fpr95")}
    except ValueError as e:  # no anomaly (or no inlier) pixel in the split
        result["metrics_error"] = str(e)
    return result


def _write_history(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.device == "cpu")


def _object_context(version: Path) -> list[np.ndarray]:
    """The object bank next to a version (``<run_dir>/objects``), as RGBA crops for CoroCL's context."""
    from tasks.object_bank import read_object_bank

    # <run>/versions/vNNNN-hash (versioned runs) or <run>/shards (a plain shard directory)
    for cand in (version.parent.parent / "objects", version.parent / "objects"):
        if (cand / "objects.parquet").is_file():
            return [o.rgba for o in read_object_bank(cand)]
    raise FileNotFoundError(f"rpl_corocl needs the object bank of {version} (looked for <run_dir>/objects)")


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
    from tasks.segmentation_metrics import ConfusionMatrix

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


def train_method(
    cfg: TrainConfig,
    version: str | Path,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    log: Log = print,
) -> TrainResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    urls = shard_urls(version)
    seg_ckpt = segmenter_checkpoint(cfg, version, out_dir, progress, log)

    accelerator = _accelerator(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, frozen_segmenter(cfg.segmenter, seg_ckpt))
    optimizer = torch.optim.Adam(param_groups(model, cfg), weight_decay=cfg.weight_decay)

    if cfg.max_steps is not None:
        total = cfg.max_steps
    else:
        n_train, _ = count_samples(version, cfg.val_fraction) if "://" not in str(version) else (None, None)
        if n_train is None:
            raise ValueError("for a remote shard version set max_steps (epochs need the local sample count)")
        total = max(1, math.ceil(cfg.epochs * n_train / (cfg.batch_size * accelerator.num_processes)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(total, cfg.poly_power))

    start = 0
    last = out_dir / "checkpoints" / "last.pt"
    if resume and last.is_file():
        state = read_checkpoint(last)
        if state["config_hash"] == cfg.content_hash():
            model.load_state_dict(state["head"], strict=False)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start = int(state["step"])
            log(f"resuming from {last} at step {start}/{total}")
        else:
            log(f"{last} was written by another config: starting over")

    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    inner = accelerator.unwrap_model(model)
    stream_cfg = cfg.model_copy(update={"seed": cfg.seed * 7919 + start})  # a resumed run sees new samples
    loader = train_loader(urls, stream_cfg, accelerator.process_index, accelerator.num_processes)
    context = _object_context(Path(version)) if cfg.method == "rpl_corocl" else None
    ctx_rng = random.Random(cfg.seed + start)
    gen = torch.Generator().manual_seed(cfg.seed + start)

    history = out_dir / "history.jsonl"
    model.train()
    bar = tqdm(
        total=total,
        initial=start,
        desc=f"train {cfg.method}",
        unit="step",
        disable=not (progress and accelerator.is_main_process),
    )
    losses: list[float] = []
    wait = 0.0
    t_start = t_prev = time.perf_counter()
    step = start
    metrics: dict = {}
    for x, y in loader:
        if step >= total:
            break
        wait += time.perf_counter() - t_prev
        x, y = x.to(accelerator.device), y.to(accelerator.device)
        with accelerator.autocast():
            out = model(x, with_embeddings=cfg.method == "rpl_corocl")
            ctx_out = ctx_y = None
            if context is not None:
                cx, ctx_y = context_batch(context, x.shape[0], cfg.context_size, ctx_rng)
                ctx_out = model(cx.to(accelerator.device), with_embeddings=True)
                ctx_y = ctx_y.to(accelerator.device)
            parts = method_loss(cfg, out, y, ctx_out, ctx_y, gen)
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
                metrics = evaluate(inner, urls, cfg, accelerator.device)
                _write_history(history, {"step": step, "eval": metrics})
                save_atomic(
                    {
                        "step": step,
                        "config_hash": cfg.content_hash(),
                        "head": {k: v.cpu() for k, v in inner.trainable_state_dict().items()},
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                    },
                    last,
                )
            accelerator.wait_for_everyone()
        t_prev = time.perf_counter()
    bar.close()

    model_path = out_dir / "model.pt"
    if accelerator.is_main_process:
        if not metrics:
            metrics = evaluate(inner, urls, cfg, accelerator.device)
        save_method(model_path, inner, cfg, seg_ckpt)
        summary = metrics | {
            "method": cfg.method,
            "steps": step,
            "first_loss": losses[0] if losses else None,
            "last_loss": float(np.mean(losses[-10:])) if losses else None,
            "data_wait_fraction": wait / max(time.perf_counter() - t_start, 1e-9),
            "shards": str(version),
            "segmenter_checkpoint": str(seg_ckpt),
        }
        (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        metrics = summary
    return TrainResult(out_dir, model_path, metrics, step, metrics.get("first_loss"), metrics.get("last_loss"))


def resolve_version(shards: str | Path) -> str:
    """A version directory, a run directory (→ its latest version) or an fsspec URL of a version."""
    s = str(shards)
    if "://" in s:
        return s
    p = Path(s)
    if (p / DATASET).is_file():
        return str(p.resolve())
    from tasks.versions import latest_version

    v = latest_version(p)
    if v is None:
        raise FileNotFoundError(f"{p}: neither a shard version nor a run directory with a complete version")
    return str(v.path.resolve())
