"""Component-level anomaly metrics (SegmentMeIfYouCan) and inlier mIoU.

Component metrics (Chan et al., "SegmentMeIfYouCan", NeurIPS 2021 datasets track). Per image, with the
prediction ``score >= threshold`` (the best-F1 pixel threshold):

* ground-truth components: 8-connected components of the anomaly label; those smaller than ``min_gt``
  pixels become void; predictions inside void are zeroed;
* predicted components: 8-connected components of the prediction, smaller than ``min_pred`` dropped;
* sIoU(k) = |k ∩ K̂| / |(k ∪ K̂) \\ A|, K̂ the union of predicted components touching GT component k and
  A the pixels of K̂ lying on other GT components;
* PPV(k̂) = |k̂ ∩ K| / |k̂|, K the union of GT components touching predicted component k̂;
* for τ in linspace(0.25, 0.75, 11): TP = #GT with sIoU ≥ τ, FN = #GT with sIoU < τ, FP = #pred with
  PPV < τ, counts summed over images, F1(τ) = 2TP / (2TP + FN + FP).

Reported: mean sIoU over GT components, mean PPV over predicted components, mean F1 over τ.
Defaults ``min_pred=500, min_gt=100`` for anomaly-track data; ``50, 10`` for obstacle-track data.
"""

from __future__ import annotations

import cv2
import numba
import numpy as np

from tasks.labels import EVAL_ANOMALY, EVAL_VOID, NUM_TRAIN_CLASSES, VOID

TAUS = np.linspace(0.25, 0.75, 11)
DEFAULT_SIZES = {"anomaly": (500, 100), "obstacle": (50, 10)}  # (min_pred, min_gt)


@numba.njit(cache=True, nogil=True)
def _areas(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixels per label 0..n-1 of an int32 label image: ``np.bincount`` without its int64 copy, and without the
    GIL (the component pass runs images in threads)."""
    out = np.zeros(n, np.int64)
    for v in labels.ravel():
        out[v] += 1
    return out


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count with the background, 8-connected component labels, areas). OpenCV's
    ``connectedComponentsWithStats`` would cost 3× more: it also makes boxes and centroids."""
    m = mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)
    n, lab = cv2.connectedComponents(m, connectivity=8)
    return n, lab, _areas(lab, n)


class GroundTruthComponents:
    """The ground-truth side of one image's component metrics, computed once and shared by every score (and
    threshold) evaluated on it: GT components of at least ``min_gt`` pixels, and the void mask grown by the
    smaller ones."""

    def __init__(self, labels: np.ndarray, min_gt: int):
        n, gt, area = _components(np.asarray(labels) == EVAL_ANOMALY)
        keep = area >= min_gt
        keep[0] = False
        void = np.asarray(labels) == EVAL_VOID
        if not keep[1:].all():  # small GT components become void
            void |= (gt > 0) & ~keep[gt]
            gt = np.where(keep[gt], gt, 0)
        self.n, self.gt, self.valid = n, gt, ~void
        self.sizes = np.bincount(gt.ravel(), minlength=n)
        self.on_gt = np.flatnonzero(gt)  # the pixels of kept GT components: the only ones overlaps count
        self.gt_of = gt.ravel()[self.on_gt].astype(np.int64)


def image_components(
    pred: np.ndarray, labels: np.ndarray | GroundTruthComponents, min_pred: int, min_gt: int
) -> tuple[list[float], list[float]]:
    """(sIoU per GT component, PPV per predicted component) of one image; ``labels`` may be the image's
    ``GroundTruthComponents`` already (then ``min_gt`` is the one it was made with)."""
    g = labels if isinstance(labels, GroundTruthComponents) else GroundTruthComponents(labels, min_gt)
    n_gt = g.n
    n_pr, pr, pr_area = _components(pred & g.valid)
    keep = pr_area >= min_pred  # small predicted components are dropped
    keep[0] = False
    big = np.flatnonzero(keep)
    # overlap counts between GT components (rows) and kept predicted components (cols), from the GT pixels only
    pr_on_gt = pr.ravel()[g.on_gt]
    hit = keep[pr_on_gt]
    inter = np.bincount(g.gt_of[hit] * n_pr + pr_on_gt[hit], minlength=n_gt * n_pr).reshape(n_gt, n_pr)
    gt_sizes = g.sizes
    pr_sizes = np.where(keep, pr_area, 0)
    sious = []
    for k in range(1, n_gt):
        if gt_sizes[k] == 0:
            continue
        touching = np.flatnonzero(inter[k, 1:]) + 1  # predicted components touching k
        k_hat = pr_sizes[touching].sum()
        inside = inter[k, touching].sum()  # |k ∩ K̂|
        on_other_gt = inter[1:, touching].sum() - inside  # A: K̂ on other GT components
        union = gt_sizes[k] + k_hat - inside - on_other_gt
        sious.append(inside / union)
    ppvs = []
    for j in big.tolist():
        touching_gt = inter[1:, j].sum()  # pixels of k̂ on GT components that touch it
        ppvs.append(touching_gt / pr_sizes[j])
    return sious, ppvs


class ComponentMetrics:
    """Accumulates SMIYC component metrics over images at a fixed score threshold."""

    def __init__(self, threshold: float, min_pred: int = 500, min_gt: int = 100):
        self.threshold, self.min_pred, self.min_gt = threshold, min_pred, min_gt
        self.sious: list[float] = []
        self.ppvs: list[float] = []

    def update(self, scores: np.ndarray, labels: np.ndarray | GroundTruthComponents) -> None:
        """One image; ``labels`` may be its ``GroundTruthComponents`` (made with this ``min_gt``), shared."""
        self.add(*self.of_image(scores, labels))

    def of_image(
        self, scores: np.ndarray, labels: np.ndarray | GroundTruthComponents
    ) -> tuple[list[float], list[float]]:
        """One image's (sIoUs, PPVs) at this threshold, not yet added (``add``): images may be done in parallel."""
        labels = labels if isinstance(labels, GroundTruthComponents) else np.asarray(labels)
        return image_components(np.asarray(scores) >= self.threshold, labels, self.min_pred, self.min_gt)

    def add(self, sious: list[float], ppvs: list[float]) -> None:
        self.sious += sious
        self.ppvs += ppvs

    def compute(self) -> dict[str, float]:
        siou, ppv = np.asarray(self.sious, float), np.asarray(self.ppvs, float)
        f1 = []
        for tau in TAUS:
            tp, fn, fp = (siou >= tau).sum(), (siou < tau).sum(), (ppv < tau).sum()
            f1.append(2 * tp / (2 * tp + fn + fp) if (tp + fn + fp) else float("nan"))
        return {
            "siou": float(siou.mean()) if siou.size else float("nan"),
            "ppv": float(ppv.mean()) if ppv.size else float("nan"),
            "f1_components": float(np.nanmean(f1)) if not np.all(np.isnan(f1)) else float("nan"),
            "gt_components": int(siou.size),
            "pred_components": int(ppv.size),
        }


class ConfusionMatrix:
    """Inlier segmentation mIoU over the 19 Cityscapes trainIds (255 ignored)."""

    def __init__(self, num_classes: int = NUM_TRAIN_CLASSES):
        self.n = num_classes
        self.mat = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
        keep = (target != VOID) & (target < self.n)
        self.mat += np.bincount(target[keep].astype(np.int64) * self.n + pred[keep], minlength=self.n**2).reshape(
            self.n, self.n
        )

    def compute(self) -> dict:
        tp = np.diag(self.mat).astype(float)
        denom = self.mat.sum(0) + self.mat.sum(1) - tp
        iou = np.divide(tp, denom, out=np.full(self.n, np.nan), where=denom > 0)
        return {"miou": float(np.nanmean(iou)), "iou": iou.tolist()}
