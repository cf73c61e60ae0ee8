"""Evaluate a segmentation model + anomaly score on a benchmark, streaming.

Pass 1 runs the model once per image, feeds ``PixelMetrics`` (pooled, and per condition where tagged)
and ``ConfusionMatrix``-free anomaly metrics, and caches each score map as float32 ``.npy`` in a scratch
folder. Pass 2 reads the cached maps to compute SMIYC component metrics at the best-F1 pixel threshold,
which is only known after pass 1. Nothing but one image is ever held in memory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.scores import anomaly_score
from schemas import BenchmarkConfig, EvalConfig
from tasks.benchmarks import EvalDataset, load_benchmark
from tasks.metrics import PixelMetrics
from tasks.segmentation_metrics import DEFAULT_SIZES, ComponentMetrics

Model = Callable[[torch.Tensor], torch.Tensor]


def load_torchscript(path: str | Path, device: str = "cpu") -> torch.jit.ScriptModule:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model not found: {path} (a TorchScript file: torch.jit.save(torch.jit.script(model), path))"
        )
    model = torch.jit.load(str(path), map_location=device)
    model.eval()
    return model


@torch.inference_mode()
def score_image(model: Model, image: np.ndarray, cfg: EvalConfig) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxW float32 anomaly score (higher = anomalous), at the image's resolution."""
    h, w = image.shape[:2]
    x = torch.from_numpy(image).to(cfg.device).permute(2, 0, 1)[None].float() / 255.0
    mean = torch.tensor(cfg.mean, device=cfg.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=cfg.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if cfg.input_size is not None:
        x = F.interpolate(x, size=(cfg.input_size[1], cfg.input_size[0]), mode="bilinear", align_corners=False)
    logits = model(x)
    if logits.ndim != 4 or logits.shape[1] < cfg.num_classes:
        raise ValueError(f"model returned {tuple(logits.shape)}; expected (1, >= {cfg.num_classes}, h, w) logits")
    logits = logits[:, : cfg.num_classes].float()
    if logits.shape[-2:] != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return anomaly_score(logits, cfg.score, cfg.smoothing)[0].cpu().numpy().astype(np.float32)


def second_pass(
    pooled: PixelMetrics, by_condition: dict[str, PixelMetrics], items: list, scratch: Path, ds: EvalDataset
) -> None:
    """Feed the cached scores again to the accumulators whose error bounds exceed their tolerance (rare:
    see ``tasks.metrics``), so that every reported metric is exact to it."""
    todo = [(None, pooled)] if pooled.needs_second_pass() else []
    todo += [(cond, m) for cond, m in by_condition.items() if m.needs_second_pass()]
    if not todo:
        return
    for _, m in todo:
        m.start_second_pass()
    for k, item in enumerate(tqdm(items, desc=f"{ds.name} (2nd pass)", unit="img")):
        score, label = np.load(scratch / f"{k}.npy"), ds.load(item)[1]
        for cond, m in todo:
            if cond is None or item.condition == cond:
                m.update(score, label, name=str(item.image))


def evaluate_dataset(model: Model, spec: BenchmarkConfig, cfg: EvalConfig, on_image=None) -> dict:
    """Metrics of one dataset: pooled pixel metrics, per-condition rows, component metrics, curves."""
    ds: EvalDataset = load_benchmark(spec.kind, spec.root, spec.name, spec.split)
    items = ds.items[: spec.limit] if spec.limit else ds.items
    pooled = PixelMetrics(per_image=cfg.per_image)
    by_condition: dict[str, PixelMetrics] = {}
    scratch = Path(tempfile.mkdtemp(prefix=f"anomalyforge-eval-{ds.name}-"))
    panels = []
    try:
        for k, item in enumerate(tqdm(items, desc=ds.name, unit="img")):
            image, label = ds.load(item)
            score = score_image(model, image, cfg)
            pooled.update(score, label, name=str(item.image))
            if item.condition:
                by_condition.setdefault(item.condition, PixelMetrics()).update(score, label, name=str(item.image))
            np.save(scratch / f"{k}.npy", score)
            if len(panels) < cfg.panels and (label == 1).any():
                panels.append((item.item_id, image, label, score))
            if on_image is not None:
                on_image()
        second_pass(pooled, by_condition, items, scratch, ds)
        result = pooled.compute()
        min_pred, min_gt = DEFAULT_SIZES[spec.track]
        comps = ComponentMetrics(result["f1_threshold"], min_pred, min_gt)
        for k, item in enumerate(items):
            comps.update(np.load(scratch / f"{k}.npy"), ds.load(item)[1])
        result |= comps.compute()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["conditions"] = {}
    for cond, m in sorted(by_condition.items()):
        try:
            result["conditions"][cond] = m.compute()
        except ValueError as e:  # a condition without anomalies: say so instead of a number
            result["conditions"][cond] = {"error": str(e)}
    return {"name": ds.name, "kind": ds.kind, "metrics": result, "curves": pooled.curves(), "panels": panels}
