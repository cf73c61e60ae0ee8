"""The one scoring loop: a scorer over a stream of evaluation images → pixel metrics, component metrics, and
the closed-set numbers. The benchmark evaluation (``anomalyforge eval``, ``make compare``) and the trainer's
held-in validation both run it.

Pass 1 scores each image once, feeds ``PixelMetrics`` (pooled, and per condition where tagged), the closed-set
agreement and mIoU accumulators, and caches the score map and label as ``.npy`` in a scratch folder. A second
pass over the cache recounts the uncertain bins when an error bound exceeds the tolerance (rare; see
``tasks.metrics``), and a last one computes the SMIYC component metrics at the best-F1 pixel threshold,
which is only known after pass 1. Only one image is ever held in memory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models.methods.base import Inference
from tasks.conditions import ADVERSE, CLEAR, condition_order
from tasks.labels import ANOMALY, EVAL_ANOMALY, EVAL_INLIER, NUM_TRAIN_CLASSES, VOID
from tasks.metrics import MetricsUndefinedError, PixelMetrics
from tasks.runtime import check_stop
from tasks.segmentation_metrics import DEFAULT_SIZES, ComponentMetrics, ConfusionMatrix


@dataclass
class EvalSample:
    item_id: str
    image: np.ndarray  # H×W×3 uint8 RGB
    label: np.ndarray  # H×W uint8: 0 inlier, 1 anomaly, 255 void
    condition: str | None = None
    train_label: np.ndarray | None = None  # H×W trainIds (held-in shards): closed-set mIoU


@dataclass
class ScoredImage:
    score: np.ndarray  # H×W float32, higher = more anomalous
    pred: np.ndarray | None = None  # H×W closed-set prediction of the scored model
    frozen_pred: np.ndarray | None = None  # H×W prediction of the frozen segmenter (methods over one)


Scorer = Callable[[np.ndarray], ScoredImage]
Infer = Callable[[torch.Tensor, tuple[int, int]], Inference]


def run_size(
    hw: tuple[int, int], multiple: int = 1, input_width: int | None = None, input_size: tuple[int, int] | None = None
) -> tuple[int, int]:
    """(H, W) the network runs at: ``input_size`` (W, H) as given; ``input_width`` keeps the aspect ratio, both
    sides rounded to ``multiple`` (a 1280×720 frame at input_width 1024 runs at 1024×576); else the image's."""
    if input_size is not None:
        return int(input_size[1]), int(input_size[0])
    if input_width is None:
        return hw
    h, w = hw
    m = max(1, multiple)
    rw = max(m, round(input_width / m) * m)
    rh = max(m, round(h * input_width / w / m) * m)
    return rh, rw


class TensorScorer:
    """An ``infer(images in [0, 1], label size) -> Inference`` as a scorer of H×W×3 uint8 images, run at
    ``run_size`` on ``device``; scores and predictions come back at the image's size."""

    def __init__(self, infer: Infer, device="cpu", multiple: int = 1, input_width=None, input_size=None):
        self.infer, self.device, self.multiple = infer, torch.device(device), multiple
        self.input_width, self.input_size = input_width, input_size

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> ScoredImage:
        h, w = image.shape[:2]
        x = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        size = run_size((h, w), self.multiple, self.input_width, self.input_size)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        out = self.infer(x, (h, w))

        def arr(t, dtype):
            return None if t is None else t[0].to("cpu").numpy().astype(dtype)

        return ScoredImage(arr(out.score, np.float32), arr(out.pred, np.uint8), arr(out.frozen_pred, np.uint8))


def condition_groups(condition: str | None) -> tuple[str, ...]:
    """The per-condition accumulators an image feeds: its condition and, when that is not clear, ``adverse``
    (the clear-vs-adverse split of ComsAmy). Untagged images feed none."""
    if not condition:
        return ()
    return (condition,) if condition == CLEAR else (condition, ADVERSE)


def _second_pass(pooled: PixelMetrics, by_condition: dict, conditions: list, scratch: Path, name: str, progress):
    """Feed the cached scores again to the accumulators whose error bounds exceed their tolerance."""
    todo = [(None, pooled)] if pooled.needs_second_pass() else []
    todo += [(cond, m) for cond, m in by_condition.items() if m.needs_second_pass()]
    if not todo:
        return
    for _, m in todo:
        m.start_second_pass()
    for k, cond_k in enumerate(tqdm(conditions, desc=f"{name} (2nd pass)", unit="img", disable=not progress)):
        score, label = np.load(scratch / f"{k}.score.npy"), np.load(scratch / f"{k}.label.npy")
        for cond, m in todo:
            if cond is None or cond in condition_groups(cond_k):
                m.update(score, label, name=f"{name}#{k}")


def evaluate_samples(
    scorer: Scorer,
    samples: Iterable[EvalSample],
    name: str,
    *,
    track: str = "anomaly",
    per_image: bool = False,
    panels: int = 0,
    progress: bool = True,
    total: int | None = None,
) -> dict:
    """Metrics of one dataset: ``{"name", "metrics", "curves", "panels"}``. ``metrics`` holds AUROC, AP, FPR95,
    best F1 and its threshold (and their error bounds), the SMIYC component metrics at that threshold, the
    closed-set agreement (inlier pixels where the scored model keeps the frozen network's class; methods
    only), the closed-set mIoU (when samples carry trainId labels), the image count, and per tagged condition the
    same pixel, component (at the dataset's threshold) and mIoU numbers, with ``adverse`` pooling every condition
    but clear when both are present. A dataset without images, anomaly or inlier pixels raises
    ``MetricsUndefinedError``."""
    pooled = PixelMetrics(per_image=per_image)
    by_condition: dict[str, PixelMetrics] = {}
    conditions: list[str | None] = []
    agree = agree_total = 0
    confusion = ConfusionMatrix(NUM_TRAIN_CLASSES)
    confusion_by: dict[str, ConfusionMatrix] = {}
    has_miou = False
    shown = []
    scratch = Path(tempfile.mkdtemp(prefix=f"anomalyforge-eval-{name}-"))
    try:
        for k, s in enumerate(tqdm(samples, desc=name, unit="img", total=total, disable=not progress, leave=False)):
            check_stop(f"evaluation on {name} after {k} images (it starts over); run the same command again")
            out = scorer(s.image)
            pooled.update(out.score, s.label, name=s.item_id)
            for group in condition_groups(s.condition):
                by_condition.setdefault(group, PixelMetrics()).update(out.score, s.label, name=s.item_id)
            conditions.append(s.condition)
            np.save(scratch / f"{k}.score.npy", out.score)
            np.save(scratch / f"{k}.label.npy", s.label)
            if out.pred is not None and out.frozen_pred is not None:
                inlier = s.label == EVAL_INLIER
                agree += int(np.count_nonzero(out.pred[inlier] == out.frozen_pred[inlier]))
                agree_total += int(np.count_nonzero(inlier))
            if out.pred is not None and s.train_label is not None:
                inlier_gt = np.where(s.train_label == ANOMALY, VOID, s.train_label).astype(np.uint8)
                confusion.update(out.pred, inlier_gt)
                for group in condition_groups(s.condition):
                    confusion_by.setdefault(group, ConfusionMatrix(NUM_TRAIN_CLASSES)).update(out.pred, inlier_gt)
                has_miou = True
            if len(shown) < panels and (s.label == EVAL_ANOMALY).any():
                shown.append((s.item_id, s.image, s.label, out.score))
        if not conditions:
            raise MetricsUndefinedError(f"{name}: no images to evaluate")
        _second_pass(pooled, by_condition, conditions, scratch, name, progress)
        result = pooled.compute()
        min_pred, min_gt = DEFAULT_SIZES[track]
        # one operating point per dataset: the pooled best-F1 threshold, for the conditions too
        comps = ComponentMetrics(result["f1_threshold"], min_pred, min_gt)
        comps_by = {g: ComponentMetrics(result["f1_threshold"], min_pred, min_gt) for g in by_condition}
        for k, cond_k in enumerate(conditions):
            score, label = np.load(scratch / f"{k}.score.npy"), np.load(scratch / f"{k}.label.npy")
            comps.update(score, label)
            for group in condition_groups(cond_k):
                comps_by[group].update(score, label)
        result |= comps.compute()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["images"] = len(conditions)
    result["closed_set_agreement"] = agree / agree_total if agree_total else None
    result["miou"] = float(confusion.compute()["miou"]) if has_miou else None
    result["conditions"] = {}
    if len(set(by_condition) - {ADVERSE}) < 2:  # one condition only: its row would repeat the pooled one
        by_condition = {}
    elif CLEAR not in by_condition:  # nothing clear to set the adverse images against
        by_condition.pop(ADVERSE, None)
    for cond, m in sorted(by_condition.items(), key=lambda kv: condition_order(kv[0])):
        try:
            cm = m.compute() | comps_by[cond].compute()
        except ValueError as e:  # a condition without anomalies: say so instead of a number
            result["conditions"][cond] = {"error": str(e)}
            continue
        cm["images"] = sum(cond in condition_groups(c) for c in conditions)
        cm["miou"] = float(confusion_by[cond].compute()["miou"]) if cond in confusion_by else None
        result["conditions"][cond] = cm
    return {"name": name, "metrics": result, "curves": pooled.curves(), "panels": shown}
