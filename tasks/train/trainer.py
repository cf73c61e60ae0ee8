"""Training any registered anomaly method (``models.methods``) on a shard version, over a frozen segmenter (the
configured one, or the demo profile's closed-set network, ``tasks.train.pretrain``): ``restore`` (model, optimizer,
schedule, an interrupted run's checkpoint) -> ``loop`` (the steps, evaluations, checkpoints) -> ``finish`` (the
final metrics and ``model.pt``).

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
import yaml
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from models.methods import MethodSpec, TrainingProgress, get_method
from schemas import TrainConfig
from tasks.checkpoints import method_model, read_checkpoint, save_atomic, save_method
from tasks.metrics import MetricsUndefinedError
from tasks.runtime import Interrupted, stop_requested
from tasks.scoring import TensorScorer, evaluate_samples
from tasks.seeding import training_seeds
from tasks.shardset import ShardSplit, shard_urls
from tasks.train.data import check_crop, check_rank_splits, check_splits, rank_shards, train_loader
from tasks.train.extras import ExtraData, build_extras
from tasks.train.optim import build_optimizer, poly_schedule
from tasks.train.pretrain import segmenter_checkpoint

Log = Callable[[str], None]


# ---- pieces ----------------------------------------------------------------------------------------------------


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


# ---- the trainer ------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    out_dir: Path
    model: Path
    metrics: dict
    steps: int
    first_loss: float | None
    last_loss: float | None


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


@dataclass
class Session:
    """What a training run holds between ``restore``, ``loop`` and ``finish``."""

    cfg: TrainConfig
    spec: MethodSpec
    version: str
    out_dir: Path
    accelerator: Accelerator
    model: nn.Module  # prepared by accelerate (DDP-wrapped in a multi-process run)
    inner: nn.Module  # the model itself
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    segmenter_checkpoint: Path
    urls: list[str]
    total: int  # steps of all processes together
    start: int  # the step this run starts (resumes) at

    @property
    def last(self) -> Path:
        return self.out_dir / "checkpoints" / "last.pt"


@dataclass
class LoopResult:
    step: int
    losses: list[float]
    data_wait_s: float
    elapsed_s: float
    metrics: dict  # the last evaluation (main process), empty when none ran


def restore(
    cfg: TrainConfig, version: str, out_dir: Path, resume: bool, progress: bool, log: Log, segmenters_dir=None
) -> Session:
    """The frozen segmenter (pre-trained first in the demo profile, in ``segmenters_dir``: ``segmenter_checkpoint``),
    the method's model, optimizer and schedule, restored from ``checkpoints/last.pt`` when it was written by this
    config on this version."""
    spec = get_method(cfg.method.name)
    urls = shard_urls(version)
    n_train, _ = check_splits(version, cfg.val_fraction)
    check_crop(version, cfg.crop)  # before a step pads a too-large crop with void
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.device == "cpu")
    check_rank_splits(version, cfg.val_fraction, accelerator.num_processes)  # before any process waits for another
    with accelerator.main_process_first():  # the demo profile's closed-set network is trained once, then shared
        seg_ckpt = segmenter_checkpoint(
            cfg, version, out_dir, progress and accelerator.is_main_process, log, segmenters_dir
        )

    torch.manual_seed(cfg.seed)
    model = method_model(spec, cfg.method, cfg.segmenter, seg_ckpt)
    wd = cfg.weight_decay if cfg.method.weight_decay is None else cfg.method.weight_decay
    optimizer = build_optimizer(spec.param_groups(cfg.method, model), cfg.method, wd)
    if cfg.max_steps is not None:
        total = cfg.max_steps
    else:
        total = max(1, math.ceil(cfg.epochs * n_train / (cfg.batch_size * accelerator.num_processes)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(total, cfg.poly_power, cfg.lr_warmup))

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
    return Session(
        cfg, spec, version, out_dir, accelerator, model, inner, optimizer, scheduler, seg_ckpt, urls, total, start
    )


def loop(run: Session, progress: bool) -> LoopResult:
    """Steps ``run.start`` .. ``run.total``: each process streams its own shards; every ``eval_every`` steps the
    main process evaluates on the held-in split and writes ``checkpoints/last.pt`` (what ``restore`` resumes), and
    between evaluations every ``checkpoint_minutes``. A stop (Ctrl-C, SIGTERM: ``tasks.runtime``) writes it after
    the current step and raises ``Interrupted``."""
    cfg, spec, accelerator = run.cfg, run.spec, run.accelerator
    seeds = training_seeds(cfg.seed, run.start, accelerator.process_index)
    extras = build_extras(spec.extras(cfg.method), run.version, seeds.extras)
    stream_cfg = cfg.model_copy(update={"seed": seeds.stream})  # a resumed run sees new samples
    loader = train_loader(run.urls, stream_cfg, accelerator.process_index, accelerator.num_processes)
    gen = torch.Generator().manual_seed(seeds.loss)

    history = run.out_dir / "history.jsonl"
    run.model.train()
    bar = tqdm(
        total=run.total,
        initial=run.start,
        desc=f"train {cfg.method.name}",
        unit="step",
        disable=not (progress and accelerator.is_main_process),
    )
    losses: list[float] = []
    wait = 0.0
    t_start = t_prev = time.perf_counter()
    step = run.start
    metrics: dict = {}
    saved_at = time.monotonic()
    for x, y, batch_extras in with_extras(loader, extras, accelerator.device):
        if step >= run.total:
            break
        wait += time.perf_counter() - t_prev
        x, y = x.to(accelerator.device), y.to(accelerator.device)
        with accelerator.autocast():
            parts = spec.loss(cfg.method, run.model, x, y, batch_extras, gen, TrainingProgress(step, run.total))
        loss = parts["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"step {step}: loss is {loss.item()} ({ {k: v.item() for k, v in parts.items()} })"
            )
        run.optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        run.optimizer.step()
        run.scheduler.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
        if accelerator.is_main_process and (step % 10 == 0 or step == run.total):
            row = {"step": step, "lr": run.scheduler.get_last_lr()[0], "data_wait_s": round(wait, 3)}
            _write_history(history, row | {k: v.item() for k, v in parts.items()})
        if _agree(accelerator, stop_requested()) and step < run.total:  # every process stops after this step
            _stop(run, step, bar, together=True)
        if step % cfg.eval_every == 0 or step == run.total:
            if accelerator.is_main_process:
                try:
                    metrics = evaluate(run.inner, spec, cfg, run.version, accelerator.device)
                except Interrupted:  # asked during the evaluation: the step itself is done and kept
                    _stop(run, step, bar, together=False)
                _write_history(history, {"step": step, "eval": metrics})
                _save_last(run, step)
            accelerator.wait_for_everyone()
            saved_at = time.monotonic()
        elif time.monotonic() - saved_at >= cfg.checkpoint_minutes * 60:
            if accelerator.is_main_process:
                _save_last(run, step)
            saved_at = time.monotonic()
        t_prev = time.perf_counter()
    bar.close()
    return LoopResult(step, losses, wait, time.perf_counter() - t_start, metrics)


def _save_last(run: Session, step: int) -> None:
    """``checkpoints/last.pt``: what ``restore`` resumes from (main process only)."""
    save_atomic(
        {
            "step": step,
            "config_hash": run.cfg.content_hash(),
            "shards": run.version,
            "head": {k: v.cpu() for k, v in run.inner.trainable_state_dict().items()},
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
        },
        run.last,
    )


def _stop(run: Session, step: int, bar, together: bool) -> None:
    """Checkpoint ``step`` (main process) and raise ``Interrupted`` saying how to resume. ``together``: every process
    stops here (``_agree``), and they wait for the save, so none exits (and has the launcher kill the rest) before
    it is written; otherwise (a stop during the main process's evaluation) the launcher stops the others."""
    if run.accelerator.is_main_process:
        _save_last(run, step)
    if together:
        run.accelerator.wait_for_everyone()
    bar.close()
    raise Interrupted(
        f"{run.cfg.method.name} at step {step}/{run.total}; checkpoint {run.last}; run the same command again to resume"
    )


def _agree(accelerator: Accelerator, flag: bool) -> bool:
    """``flag`` of any process, on every process (a stop asked of one process stops them all after one step)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([float(flag)], device=accelerator.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def finish(run: Session, done: LoopResult) -> TrainResult:
    """Every process's rank record; then (main process) the final metrics and ``model.pt``, written last: its
    presence means "finished"."""
    accelerator, spec, cfg = run.accelerator, run.spec, run.cfg
    if accelerator.num_processes > 1:
        # DDP all-reduces gradients, so parameters agree; batch-norm running statistics are rank 0's, broadcast at
        # each forward, and each process's last step moved its own. Broadcast them once more: every process then
        # holds the head rank 0 saves.
        for buf in run.inner.buffers():
            dist.broadcast(buf.data, src=0)
    own_shards = rank_shards(run.urls, accelerator.process_index, accelerator.num_processes)
    _write_rank_record(
        run.out_dir, accelerator.process_index, accelerator.num_processes, own_shards, done.step,
        spec.head_state(run.inner),
    )  # fmt: skip

    model_path = run.out_dir / "model.pt"
    metrics = done.metrics
    if accelerator.is_main_process:
        if not metrics:
            metrics = evaluate(run.inner, spec, cfg, run.version, accelerator.device)
        summary = metrics | {
            "method": cfg.method.name,
            "steps": done.step,
            "first_loss": done.losses[0] if done.losses else None,
            "last_loss": float(np.mean(done.losses[-10:])) if done.losses else None,
            "data_wait_fraction": done.data_wait_s / max(done.elapsed_s, 1e-9),
            "shards": run.version,
            "segmenter_checkpoint": str(run.segmenter_checkpoint),
        }
        (run.out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        save_method(model_path, spec, run.inner, cfg, run.segmenter_checkpoint, run.version)
        metrics = summary
    return TrainResult(run.out_dir, model_path, metrics, done.step, metrics.get("first_loss"), metrics.get("last_loss"))


def train_method(
    cfg: TrainConfig,
    version: str | Path,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    log: Log = print,
    segmenters_dir: str | Path | None = None,
) -> TrainResult:
    """Train ``cfg.method`` on ``version``; outputs under ``out_dir`` (module docstring). With ``resume``, a run
    whose model was already trained with this config on this version is returned as it is, and an interrupted
    one continues from ``checkpoints/last.pt``. ``segmenters_dir``: where a demo closed-set segmenter is
    pre-trained and reused (default ``<out_dir>/../segmenters``, shared by sibling out dirs)."""
    out_dir = Path(out_dir)
    version = str(version)
    cfg = cfg.for_kind(get_method(cfg.method.name).segmenter_kind)  # the segmenter of the kind the method needs
    if resume and (done := _finished(out_dir, cfg, version)) is not None:
        log(f"{cfg.method.name}: reusing {done.model} (same config and shards)")
        return done
    run = restore(cfg, version, out_dir, resume, progress, log, segmenters_dir)
    return finish(run, loop(run, progress))
