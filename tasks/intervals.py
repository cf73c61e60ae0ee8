"""95 % confidence intervals of AUROC, AP and FPR95 from an image-level bootstrap.

A benchmark's pooled pixel metrics are one draw: another 30 images of the same kind would give other numbers,
and whether RPL's 29.2 AP and CoroCL's 27.1 differ depends on how far. The bootstrap answers by resampling the
*images* with replacement (never pixels: the pixels of an image are strongly correlated, the images are the
independent units) and recomputing the pooled metrics on each resample; the interval is the 2.5 and 97.5
percentiles of those (the percentile interval, Efron & Tibshirani 1993, ch. 13).

Memory stays independent of the pixel count: each image leaves a histogram of its labelled pixels over the top
``KEY_BITS`` bits of the order-preserving float32 key of ``tasks.metrics`` (2^(KEY_BITS − 9) bins per octave of
the score: 0.8 % wide), kept sparse — at most 2^KEY_BITS bins per image whatever its size (typically 1–3 k,
≈ 25 kB). A resample's pooled histogram is the weighted sum of its images' (multinomial weights); its metrics
are those of ``tasks.metrics.metrics_from_groups`` (scikit-learn's definitions) with each bin's pixels tied,
computed in one sweep per resample. The binning moves the whole-sample metrics a little from the exact ones
``PixelMetrics`` reports; the interval is moved by that difference (reported as ``binning``), so it brackets
the number the table prints and keeps the width the binned resamples give.

Resamples without an anomaly or inlier pixel (possible when few images hold anomalies) are left out and counted.
Everything is seeded: the same images give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from tasks.labels import EVAL_ANOMALY, EVAL_VOID
from tasks.metrics import monotone_key

KEY_BITS = 16  # bins: the float32 key's top bits (sign, exponent, 7 mantissa bits)
RESAMPLES = 1000
LEVEL = 0.95
METRICS = ("auroc", "ap", "fpr95")


@numba.njit(cache=True, nogil=True)
def _histogram(bits, labels, shift):
    """(bins ascending, counts[bin, class]) of the labelled pixels, key >> shift as the bin."""
    dense = np.zeros((1 << (32 - shift), 2), np.int32)
    s = np.uint32(shift)
    for i in range(bits.size):
        lab = labels[i]
        if lab != EVAL_VOID:
            dense[monotone_key(bits[i]) >> s, 1 if lab == EVAL_ANOMALY else 0] += 1
    n = 0
    for b in range(dense.shape[0]):
        n += (dense[b, 0] | dense[b, 1]) != 0
    bins = np.empty(n, np.uint32)
    counts = np.empty((n, 2), np.int32)
    j = 0
    for b in range(dense.shape[0]):
        if (dense[b, 0] | dense[b, 1]) != 0:
            bins[j] = b
            counts[j] = dense[b]
            j += 1
    return bins, counts


def image_histogram(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image's labelled pixels as (bin keys ascending uint32, counts K×2 int32: inlier, anomaly), sparse.
    ``label``: 0 inlier, 1 anomaly, 255 void (checked by ``PixelMetrics`` on the same maps)."""
    bits = np.ascontiguousarray(score, np.float32).reshape(-1).view(np.uint32)
    return _histogram(bits, np.ascontiguousarray(label, np.uint8).reshape(-1), 32 - KEY_BITS)


@numba.njit(cache=True, nogil=True, parallel=True)
def _resample_metrics(indptr, cols, neg, pos, bins, weights):
    """AUROC, AP, FPR95 (columns) of each resample (rows of ``weights``: a weight per image). Image i's counts are
    ``neg/pos[indptr[i]:indptr[i+1]]`` at union bins ``cols`` (0 = the highest score); a resample's are the
    weighted sums. One sweep down the scores per resample, each bin a tie group: the AUROC trapezoid, AP as
    Σ (pos/P)·precision, FPR95 at the first bin whose TPR reaches 0.95. NaN without anomaly or inlier pixels."""
    resamples, images = weights.shape
    out = np.full((resamples, 3), np.nan)
    for r in numba.prange(resamples):
        hn = np.zeros(bins)
        hp = np.zeros(bins)
        for i in range(images):
            w = weights[r, i]
            if w:
                for j in range(indptr[i], indptr[i + 1]):
                    hn[cols[j]] += w * neg[j]
                    hp[cols[j]] += w * pos[j]
        P = hp.sum()
        N = hn.sum()
        if P == 0 or N == 0:
            continue
        tp = fp = area = ap = 0.0
        fpr95 = np.nan
        for k in range(bins):
            if hn[k] == 0 and hp[k] == 0:
                continue
            tp_prev, fp_prev = tp, fp
            tp += hp[k]
            fp += hn[k]
            area += (fp - fp_prev) * (tp + tp_prev)
            if hp[k] > 0:
                ap += hp[k] * tp / (tp + fp)
            if np.isnan(fpr95) and tp >= 0.95 * P:
                fpr95 = fp / N
        out[r, 0] = area / (2.0 * P * N)
        out[r, 1] = ap / P
        out[r, 2] = fpr95
    return out


class ImageHistograms:
    """The per-image histograms of one score on one dataset, and the bootstrap intervals of its metrics.

    >>> h = ImageHistograms()
    >>> for score, label in images:
    ...     h.add(score, label)
    >>> h.intervals(exact={"ap": 0.459, ...})   # {"ap": [lo, hi], ..., "level": 0.95, "resamples": 1000, ...}
    """

    def __init__(self) -> None:
        self.bins: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.bins)

    def add(self, score: np.ndarray, label: np.ndarray) -> None:
        self.append(*image_histogram(score, label))

    def append(self, bins: np.ndarray, counts: np.ndarray) -> None:
        """The next image's ``image_histogram`` (made elsewhere, e.g. in a thread pool)."""
        self.bins.append(bins)
        self.counts.append(counts)

    def resampled(
        self, images: Sequence[int] | None = None, resamples: int = RESAMPLES, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """Each metric on ``resamples`` bootstrap resamples of ``images`` (default: all), NaN where a resample has
        no anomaly or inlier pixel; ``"whole"``: each metric of the images as they are (binned)."""
        images = list(range(len(self))) if images is None else list(images)
        if not images:
            raise ValueError("no images to resample")
        union = np.unique(np.concatenate([self.bins[i] for i in images]))
        cols = np.concatenate([union.size - 1 - np.searchsorted(union, self.bins[i]) for i in images])
        indptr = np.cumsum([0, *(self.bins[i].size for i in images)])
        counts = np.concatenate([self.counts[i] for i in images]).astype(np.float64)
        n = len(images)
        weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
        weights = np.vstack([weights, np.ones((1, n))])  # the last row: the images as they are
        got = _resample_metrics(indptr, cols, counts[:, 0].copy(), counts[:, 1].copy(), union.size, weights)
        out = {m: got[:-1, j] for j, m in enumerate(METRICS)}
        return out | {"whole": {m: float(got[-1, j]) for j, m in enumerate(METRICS)}}

    def intervals(
        self,
        exact: dict | None = None,
        images: Sequence[int] | None = None,
        resamples: int = RESAMPLES,
        level: float = LEVEL,
        seed: int = 0,
    ) -> dict:
        """``percentile_intervals`` of ``resampled(images, resamples, seed)``."""
        return percentile_intervals(self.resampled(images, resamples, seed), exact, level)


def percentile_intervals(got: dict, exact: dict | None = None, level: float = LEVEL) -> dict:
    """``{metric: [lo, hi]}`` at ``level`` for AUROC, AP and FPR95 (fractions, like the metrics) from the
    resampled metrics ``got`` (``ImageHistograms.resampled``), with ``level``, ``resamples`` (those that count) and
    ``binning`` (exact − binned whole-sample metric, by which the intervals were moved; ``exact``: the exact
    metrics, e.g. ``PixelMetrics.compute()``). A dataset whose resamples all lack a class gives NaN bounds."""
    q = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    out: dict = {"level": level, "binning": {}}
    for m in METRICS:
        vals = got[m][np.isfinite(got[m])]
        shift = float(exact[m]) - got["whole"][m] if exact is not None and m in exact else 0.0
        lo, hi = np.percentile(vals, q) + shift if vals.size else (np.nan, np.nan)
        out[m] = [float(np.clip(lo, 0, 1)), float(np.clip(hi, 0, 1))]
        out["binning"][m] = shift
    out["resamples"] = int(np.isfinite(got["ap"]).sum())
    return out


def paired_difference(a: dict, b: dict, metric: str = "ap", level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lo, hi) of ``metric`` of a − b over paired resamples: ``a`` and ``b`` are ``resampled`` results of
    two scores on the same images with the same seed, so resample r draws the same images for both and the
    difference keeps only what the scores change (Efron & Tibshirani 1993, ch. 15). NaN without common resamples."""
    if len(a[metric]) != len(b[metric]):
        raise ValueError(f"paired resamples differ in number: {len(a[metric])} and {len(b[metric])}")
    d = a[metric] - b[metric]
    d = d[np.isfinite(d)]
    if not d.size:
        return np.nan, np.nan, np.nan
    lo, hi = np.percentile(d, 100 * np.array([(1 - level) / 2, (1 + level) / 2]))
    return float(d.mean()), float(lo), float(hi)
