"""The one scoring loop: a scorer over a stream of evaluation images → pixel metrics, component metrics, and
the closed-set numbers, for one score or several of the same forward. The benchmark evaluation (``anomalyforge
eval``, ``make compare``) and the trainer's held-in validation both run it.

Pass 1 scores each image once (every score of it from one forward), feeds each score's ``PixelMetrics`` (pooled,
and per condition where tagged), the closed-set agreement and mIoU accumulators, and caches the score maps and
the label as ``.npy`` in a scratch folder. A second pass over the cache recounts the uncertain bins when an error
bound exceeds the tolerance (rare; see ``tasks.metrics``), and a last one computes the SMIYC component metrics at
the best-F1 pixel threshold, which is only known after pass 1.

Pass 1 is a pipeline, so the network never waits for files: a thread reads and decodes the next images, two
scorer calls run at once (``in_flight``; the network on one batch while the scores of the last are computed at
the label's size, which keeps both cores of a small machine busy; ``batch_size`` images of one size per call),
and a thread updates the metrics and writes the cache, in image order. The stages hand over through bounded
queues: at most ``(2 · in_flight + 1) · batch_size + 5`` images are in memory, never a whole benchmark. A scorer that
is a plain function (no ``batch`` method), or one on an accelerator (its memory holds one batch), is called once at
a time.
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models.methods.base import Inference, classes
from tasks.conditions import ADVERSE, CLEAR, condition_order, split_tag
from tasks.intervals import RESAMPLES, ImageHistograms, image_histogram, percentile_intervals
from tasks.labels import ANOMALY, EVAL_ANOMALY, EVAL_INLIER, NUM_TRAIN_CLASSES, VOID
from tasks.metrics import MetricsUndefinedError, PixelMetrics
from tasks.runtime import check_stop
from tasks.segmentation_metrics import DEFAULT_SIZES, ComponentMetrics, ConfusionMatrix, GroundTruthComponents


@dataclass
class EvalSample:
    item_id: str
    image: np.ndarray  # H×W×3 uint8 RGB
    label: np.ndarray  # H×W uint8: 0 inlier, 1 anomaly, 255 void
    condition: str | None = None
    train_label: np.ndarray | None = None  # H×W trainIds (held-in shards): closed-set mIoU


@dataclass
class ScoredImage:
    score: np.ndarray | dict[str, np.ndarray]  # H×W float32, higher = more anomalous; or several by score name
    pred: np.ndarray | None = None  # H×W closed-set prediction of the scored model
    frozen_pred: np.ndarray | None = None  # H×W prediction of the frozen segmenter (methods over one)

    def maps(self) -> dict[str, np.ndarray]:
        """``{score name: H×W map}``; a single unnamed map is ``"score"``."""
        return dict(self.score) if isinstance(self.score, dict) else {SINGLE: self.score}


COMPONENT_THREADS = min(4, os.cpu_count() or 1)  # images whose component metrics are computed at once
SINGLE = "score"  # the name of a scorer's only, unnamed map
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
    ``run_size`` on ``device``; scores and predictions come back at the image's size. ``batch`` scores several
    images of one size in one forward. An ``Inference`` with ``scores`` gives every one of them, by name."""

    def __init__(self, infer: Infer, device="cpu", multiple: int = 1, input_width=None, input_size=None):
        self.infer, self.device, self.multiple = infer, torch.device(device), multiple
        self.input_width, self.input_size = input_width, input_size

    def __call__(self, image: np.ndarray) -> ScoredImage:
        return self.batch([image])[0]

    @torch.inference_mode()
    def batch(self, images: list[np.ndarray], want_pred: bool = True) -> list[ScoredImage]:
        """Scores of images of one size; ``want_pred=False``: no closed-set prediction unless the model made one
        anyway (an argmax over every class at the label's size is not free)."""
        h, w = images[0].shape[:2]
        x = torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        size = run_size((h, w), self.multiple, self.input_width, self.input_size)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        out = self.infer(x, (h, w))
        maps = {k: v.float().cpu().numpy() for k, v in out.scores.items()} if out.scores else None
        score = out.score.float().cpu().numpy() if maps is None else None
        pred = out.pred if out.pred is not None or not want_pred else classes(out.logits)
        pred = None if pred is None else pred.cpu().numpy().astype(np.uint8)
        frozen = None if out.frozen_pred is None else out.frozen_pred.cpu().numpy().astype(np.uint8)
        return [
            ScoredImage(
                score[i] if maps is None else {k: v[i] for k, v in maps.items()},
                None if pred is None else pred[i],
                None if frozen is None else frozen[i],
            )
            for i in range(len(images))
        ]


def condition_groups(condition: str | None) -> tuple[str, ...]:
    """The per-condition accumulators an image feeds: its condition (``fog``; a tag with a severity, ``fog@0.67``,
    feeds its own and the condition's) and, when that is not clear, ``adverse`` (the clear-vs-adverse split of
    ComsAmy). Untagged images feed none."""
    if not condition:
        return ()
    cond, severity = split_tag(condition)
    groups = (condition,) if severity is None else (condition, cond)
    return groups if cond == CLEAR else (*groups, ADVERSE)


class _ScoreMetrics:
    """The accumulators of one score: pooled and per-condition pixel metrics, its cached maps in ``scratch``."""

    def __init__(self, scratch: Path, per_image: bool):
        self.pooled = PixelMetrics(per_image=per_image)
        self.by_condition: dict[str, PixelMetrics] = {}
        self.scratch = scratch
        scratch.mkdir()
        self.shown: list = []
        self.histograms = ImageHistograms()  # per image, for the bootstrap intervals (made in the component pass)

    def update(self, k: int, score: np.ndarray, s: EvalSample) -> None:
        self.pooled.update(score, s.label, name=s.item_id)
        for group in condition_groups(s.condition):
            self.by_condition.setdefault(group, PixelMetrics()).update(score, s.label, name=s.item_id)
        np.save(self.scratch / f"{k}.npy", score)

    def cached(self, k: int) -> np.ndarray:
        return np.load(self.scratch / f"{k}.npy")


class _Pass1:
    """Pass 1's bookkeeping: every score's accumulators and the closed-set numbers they share."""

    def __init__(self, scratch: Path, per_image: bool, panels: int):
        self.scratch, self.per_image, self.panels = scratch, per_image, panels
        self.scores: dict[str, _ScoreMetrics] = {}
        self.conditions: list[str | None] = []
        self.agree = self.agree_total = 0
        self.confusion = ConfusionMatrix(NUM_TRAIN_CLASSES)
        self.confusion_by: dict[str, ConfusionMatrix] = {}
        self.has_miou = False

    def update(self, k: int, s: EvalSample, out: ScoredImage) -> None:
        maps = out.maps()
        if not self.scores:  # the first image names the scores
            for j, name in enumerate(maps):
                self.scores[name] = _ScoreMetrics(self.scratch / str(j), self.per_image)
        elif maps.keys() != self.scores.keys():
            raise ValueError(f"{s.item_id}: scored {sorted(maps)}, the images before {sorted(self.scores)}")
        for name, score in maps.items():
            self.scores[name].update(k, score, s)
        self.conditions.append(s.condition)
        np.save(self.scratch / f"{k}.label.npy", s.label)
        if out.pred is not None and out.frozen_pred is not None:
            inlier = s.label == EVAL_INLIER
            self.agree += int(np.count_nonzero(out.pred[inlier] == out.frozen_pred[inlier]))
            self.agree_total += int(np.count_nonzero(inlier))
        if out.pred is not None and s.train_label is not None:
            inlier_gt = np.where(s.train_label == ANOMALY, VOID, s.train_label).astype(np.uint8)
            self.confusion.update(out.pred, inlier_gt)
            for group in condition_groups(s.condition):
                self.confusion_by.setdefault(group, ConfusionMatrix(NUM_TRAIN_CLASSES)).update(out.pred, inlier_gt)
            self.has_miou = True
        if self.panels and (s.label == EVAL_ANOMALY).any():
            for name, score in maps.items():
                if len(self.scores[name].shown) < self.panels:
                    self.scores[name].shown.append((s.item_id, s.image, s.label, score))

    def label(self, k: int) -> np.ndarray:
        return np.load(self.scratch / f"{k}.label.npy")


_DONE = object()


class _Stage(threading.Thread):
    """A pipeline stage in a thread of its own; its exception is raised again in the caller by ``check``."""

    def __init__(self, name: str):
        super().__init__(name=name, daemon=True)
        self.error: BaseException | None = None
        self.cancelled = threading.Event()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, q: queue.Queue, item) -> bool:
        """``q.put`` that gives up when the stage is cancelled."""
        while not self.cancelled.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False


class _Reader(_Stage):
    """Reads and decodes the samples ahead of the network, ``depth`` at most."""

    def __init__(self, samples: Iterable[EvalSample], depth: int):
        super().__init__("anomalyforge-eval-read")
        self.samples, self.queue = samples, queue.Queue(maxsize=depth)

    def run(self) -> None:
        try:
            for s in self.samples:
                if not self.put(self.queue, s):
                    return
        except BaseException as e:  # raised again in the caller, at the position it happened
            self.error = e
        self.put(self.queue, _DONE)

    def __iter__(self) -> Iterator[EvalSample]:
        while (s := self.queue.get()) is not _DONE:
            yield s
        self.check()


class _Updater(_Stage):
    """Feeds the scored images to the accumulators, in order, while the network scores the next ones."""

    def __init__(self, acc: _Pass1, depth: int):
        super().__init__("anomalyforge-eval-update")
        self.acc, self.queue = acc, queue.Queue(maxsize=depth)

    def run(self) -> None:
        while (item := self.queue.get()) is not _DONE:
            if self.error is None:
                try:
                    self.acc.update(*item)
                except BaseException as e:
                    self.error = e

    def submit(self, k: int, s: EvalSample, out: ScoredImage) -> None:
        self.check()
        self.queue.put((k, s, out))

    def finish(self) -> None:
        self.queue.put(_DONE)
        self.join()
        self.check()


def _batches(samples: Iterable[EvalSample], size: int) -> Iterator[list[EvalSample]]:
    """Consecutive samples whose images share a size, ``size`` at most per batch, in order."""
    batch: list[EvalSample] = []
    for s in samples:
        if batch and (len(batch) == size or s.image.shape != batch[0].image.shape):
            yield batch
            batch = []
        batch.append(s)
    if batch:
        yield batch


def _score_stream(
    scorer: Scorer, samples: Iterable[EvalSample], acc: _Pass1, batch_size: int, name: str, bar, in_flight: int
) -> None:
    """Pass 1 as the pipeline of the module docstring: ``in_flight`` scorer calls at once (the network on one
    batch while the scores of the last are computed), their results handed on in image order."""
    score_batch = getattr(scorer, "batch", None)
    if score_batch is None:  # a plain callable may keep state between calls: one call at a time, in order
        batch_size = in_flight = 1
    if getattr(getattr(scorer, "device", None), "type", "cpu") != "cpu":  # the accelerator's memory: one batch
        in_flight = 1
    reader, updater = _Reader(samples, batch_size * in_flight + 1), _Updater(acc, 2)

    def run(batch: list[EvalSample]) -> list[ScoredImage]:
        if score_batch is not None:  # a prediction only where a trainId label will use it
            return score_batch([s.image for s in batch], want_pred=any(s.train_label is not None for s in batch))
        return [scorer(batch[0].image)]

    reader.start()
    updater.start()
    k = 0
    pending: collections.deque = collections.deque()
    pool = ThreadPoolExecutor(max(1, in_flight), thread_name_prefix="anomalyforge-eval-score")

    def hand_on() -> None:
        nonlocal k
        batch, future = pending.popleft()
        for s, out in zip(batch, future.result(), strict=True):
            updater.submit(k, s, out)
            k += 1
        bar.update(len(batch))

    try:
        for batch in _batches(reader, batch_size):
            check_stop(f"evaluation on {name} after {k} images (it starts over); run the same command again")
            pending.append((batch, pool.submit(run, batch)))
            if len(pending) >= in_flight:
                hand_on()
        while pending:
            hand_on()
        updater.finish()
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True)
        reader.cancelled.set()
        updater.cancelled.set()
        if updater.is_alive():
            updater.queue.put(_DONE)


def _second_pass(m: _ScoreMetrics, acc: _Pass1, name: str, progress) -> None:
    """Feed the cached scores again to the accumulators whose error bounds exceed their tolerance."""
    todo = [(None, m.pooled)] if m.pooled.needs_second_pass() else []
    todo += [(cond, pm) for cond, pm in m.by_condition.items() if pm.needs_second_pass()]
    if not todo:
        return
    for _, pm in todo:
        pm.start_second_pass()
    for k, cond_k in enumerate(tqdm(acc.conditions, desc=f"{name} (2nd pass)", unit="img", disable=not progress)):
        score, label = m.cached(k), acc.label(k)
        for cond, pm in todo:
            if cond is None or cond in condition_groups(cond_k):
                pm.update(score, label, name=f"{name}#{k}")


def _results(acc: _Pass1, name: str, track: str, progress: bool, bootstrap: int) -> dict[str, dict]:
    """Every score's metrics: the pixel metrics (after a second pass where needed), then one pass over the images
    for the component metrics at each score's best-F1 threshold (the ground-truth components of an image made once
    for all) and the per-image histograms of the bootstrap intervals (``bootstrap`` resamples; 0: none)."""
    pixel = {}
    for score, m in acc.scores.items():
        _second_pass(m, acc, name, progress)
        pixel[score] = m.pooled.compute()
    min_pred, min_gt = DEFAULT_SIZES[track]
    # one operating point per dataset and score: its pooled best-F1 threshold, for the conditions too
    comps = {s: ComponentMetrics(pixel[s]["f1_threshold"], min_pred, min_gt) for s in acc.scores}
    comps_by = {
        s: {g: ComponentMetrics(pixel[s]["f1_threshold"], min_pred, min_gt) for g in m.by_condition}
        for s, m in acc.scores.items()
    }

    def image(k: int) -> dict[str, tuple]:
        label = acc.label(k)
        gt = GroundTruthComponents(label, min_gt)
        out = {}
        for score, m in acc.scores.items():
            cached = m.cached(k)
            out[score] = (comps[score].of_image(cached, gt), image_histogram(cached, label) if bootstrap else None)
        return out

    # images in parallel (OpenCV, NumPy and numba release the GIL), added in image order
    with ThreadPoolExecutor(COMPONENT_THREADS, thread_name_prefix="anomalyforge-eval-components") as pool:
        for cond_k, by_score in zip(acc.conditions, pool.map(image, range(len(acc.conditions))), strict=True):
            for score, (found, histogram) in by_score.items():
                comps[score].add(*found)
                for group in condition_groups(cond_k):
                    comps_by[score][group].add(*found)
                if histogram is not None:
                    acc.scores[score].histograms.append(*histogram)
    return {
        s: _result(m, acc, pixel[s] | comps[s].compute(), comps_by[s], name, bootstrap) for s, m in acc.scores.items()
    }


def _result(m: _ScoreMetrics, acc: _Pass1, result: dict, comps_by: dict, name: str, bootstrap: int) -> dict:
    """One score's result: its pixel and component metrics with their bootstrap intervals, the shared closed-set
    numbers, its conditions."""
    conditions = acc.conditions
    result["images"] = len(conditions)
    result["closed_set_agreement"] = acc.agree / acc.agree_total if acc.agree_total else None
    result["miou"] = float(acc.confusion.compute()["miou"]) if acc.has_miou else None
    resampled = None
    if bootstrap:
        resampled = m.histograms.resampled(resamples=bootstrap)
        result["intervals"] = percentile_intervals(resampled, result)
    result["conditions"] = {}
    by_condition = m.by_condition
    if len(set(by_condition) - {ADVERSE}) < 2:  # one condition only: its row would repeat the pooled one
        by_condition = {}
    elif CLEAR not in by_condition:  # nothing clear to set the adverse images against
        by_condition = {c: pm for c, pm in by_condition.items() if c != ADVERSE}
    for cond, pm in sorted(by_condition.items(), key=lambda kv: condition_order(kv[0])):
        try:
            cm = pm.compute() | comps_by[cond].compute()
        except ValueError as e:  # a condition without anomalies: say so instead of a number
            result["conditions"][cond] = {"error": str(e)}
            continue
        images = [k for k, c in enumerate(conditions) if cond in condition_groups(c)]
        cm["images"] = len(images)
        if bootstrap:
            cm["intervals"] = m.histograms.intervals(cm, images=images, resamples=bootstrap)
        cm["miou"] = float(acc.confusion_by[cond].compute()["miou"]) if cond in acc.confusion_by else None
        result["conditions"][cond] = cm
    out = {"name": name, "metrics": result, "curves": m.pooled.curves(), "panels": m.shown}
    return out | ({"resampled": resampled} if resampled is not None else {})


def evaluate_scores(
    scorer: Scorer,
    samples: Iterable[EvalSample],
    name: str,
    *,
    track: str = "anomaly",
    per_image: bool = False,
    panels: int = 0,
    progress: bool = True,
    total: int | None = None,
    batch_size: int = 1,
    in_flight: int = 2,
    bootstrap: int = RESAMPLES,
) -> dict[str, dict]:
    """Metrics of one dataset for every score the scorer gives (``{score name: result}``, in the scorer's order;
    a scorer of one unnamed map gives ``{"score": result}``). Each result is ``{"name", "metrics", "curves",
    "panels"}``: ``metrics`` holds AUROC, AP, FPR95, best F1 and its threshold (and their error bounds), the SMIYC
    component metrics at that threshold, the closed-set agreement (inlier pixels where the scored model keeps the
    frozen network's class; methods only), the closed-set mIoU (when samples carry trainId labels), the image
    count, and per tagged condition the same pixel, component (at the dataset's threshold) and mIoU numbers, with
    ``adverse`` pooling every condition but clear when both are present. ``batch_size``: images of one size scored
    in one forward (a scorer with a ``batch`` method). ``intervals`` (pooled and per condition): 95 % intervals of
    AUROC, AP and FPR95 from ``bootstrap`` image-level resamples (``tasks.intervals``; 0: none), and the result's
    ``resampled`` the pooled metrics of every resample (seeded: two scores of the same images are paired). A dataset without
    images, anomaly or inlier pixels raises ``MetricsUndefinedError``."""
    scratch = Path(tempfile.mkdtemp(prefix=f"anomalyforge-eval-{name}-"))
    try:
        acc = _Pass1(scratch, per_image, panels)
        with tqdm(desc=name, unit="img", total=total, disable=not progress, leave=False) as bar:
            _score_stream(scorer, samples, acc, max(1, batch_size), name, bar, in_flight)
        if not acc.conditions:
            raise MetricsUndefinedError(f"{name}: no images to evaluate")
        return _results(acc, name, track, progress, bootstrap)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def evaluate_samples(scorer: Scorer, samples: Iterable[EvalSample], name: str, **kw) -> dict:
    """``evaluate_scores`` of a scorer of one score: its result."""
    results = evaluate_scores(scorer, samples, name, **kw)
    if len(results) != 1:
        raise ValueError(f"{name}: the scorer gave {len(results)} scores ({', '.join(results)}); use evaluate_scores")
    return next(iter(results.values()))
