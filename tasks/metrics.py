"""Streaming pixel metrics for anomaly segmentation: AUROC, AP, FPR95 and best F1.

``PixelMetrics`` pools every pixel of a dataset (the RPL / PEBAL / SMIYC pixel protocol) without keeping
score maps in memory. Labels: 0 inlier, 1 anomaly, 255 ignored. Scores: higher = more anomalous.

How it stays exact with bounded memory
--------------------------------------
Scores are compared at float32 precision. A float32 is mapped to a 32-bit key whose unsigned order is
the float order (``-inf < … < -0 < +0 < … < +inf``), so ``±inf`` and scores spanning many orders of
magnitude need no range guess. Counts are kept per class in a radix tree over the key:

* level 2: the top 24 key bits (2^15 bins per octave, 3e-5 relative width), in 256-bin blocks that are
  allocated for the 16-bit prefixes actually seen;
* level 3: the full 32-bit key (exact float32 values), allocated for level-2 bins that hold both classes
  and whose ties would cost accuracy. After each update, while the tie error bound below exceeds
  ``error_budget`` (default 5e-5), mixed bins that alone hold more than 1/1024 of the budget are refined,
  costliest first. Heavy ties and narrow score ranges are thus resolved exactly; a smooth distribution
  spreads its ties over so many bins that they cost nothing measurable (and the bound says so).

Within a bin, positives and negatives are treated as tied, so the AUROC error is at most
``Σ_b pos_b·neg_b / (2·P·N)`` over bins that mix classes and are not exact values; ``compute()`` reports
that bound as ``auroc_error_bound``. A bin refined *after* it already received pixels keeps those as a
residual, which is spread over its exact sub-bins in proportion to their counts and counted in the bound.
Memory is at most 256 MB for level 2 (every 16-bit prefix seen) plus ``max_refined`` × 4 KB, whatever the
number of pixels; typical anomaly maps use a few MB.

Metric definitions follow scikit-learn: AUROC is the trapezoidal area under the ROC curve over all
distinct thresholds, AP = Σ_n (R_n − R_{n−1})·P_n, FPR95 is the FPR at the first threshold whose TPR
reaches 0.95, and F1 is maximised over thresholds (predict anomaly where score >= threshold).
"""

from __future__ import annotations

import numba
import numpy as np

from tasks.labels import EVAL_ANOMALY, EVAL_INLIER, EVAL_VOID

_SUB = 256  # bins per block, at level 2 (key bits 15..8) and level 3 (bits 7..0)


@numba.njit(cache=True, nogil=True)
def _monotone_key(bits: np.uint32) -> np.uint32:
    """float32 bits -> key whose unsigned order is the float order (-0.0 and +0.0 share a key)."""
    if bits == np.uint32(0x80000000):
        return np.uint32(0x80000000)
    if bits & np.uint32(0x80000000):
        return ~bits
    return bits | np.uint32(0x80000000)


@numba.njit(cache=True, nogil=True, parallel=True)
def _mark_prefixes(bits, labels, touched):
    """touched[p] = 1 for every 16-bit key prefix p of a counted pixel (benign write race; reading first
    keeps the threads from fighting over cache lines)."""
    for i in numba.prange(bits.size):
        if labels[i] != 255:
            p = _monotone_key(bits[i]) >> 16
            if touched[p] == 0:
                touched[p] = 1


@numba.njit(cache=True, nogil=True, parallel=True)
def _accumulate(bits, labels, slot_of_prefix, level2, level3):
    """Count pixels into level 2, or level 3 where their level-2 bin is refined; thread t owns row t.

    A refined level-2 bin holds ``-(block + 1)`` in its first cell (in every row). Returns each row's
    change of Σ pos·neg over its unrefined bins (one more pixel of class c raises pos·neg by the bin's
    count of the other class).
    """
    rows = level2.shape[0]
    d_ties = np.zeros(rows)
    n = bits.size
    for t in numba.prange(rows):
        l2 = level2[t]
        l3 = level3[t]
        d = 0.0
        for i in range(n * t // rows, n * (t + 1) // rows):
            lab = labels[i]
            if lab == 255:
                continue
            key = _monotone_key(bits[i])
            j = 2 * (slot_of_prefix[key >> 16] * 256 + ((key >> 8) & np.uint32(255)))
            c = l2[j]
            if c < 0:
                l3[2 * ((-c - 1) * 256 + (key & np.uint32(255))) + lab] += 1
            else:
                d += l2[j + 1 - lab]
                l2[j + lab] += 1
        d_ties[t] = d
    return d_ties


@numba.njit(cache=True, nogil=True, parallel=True)
def _move_to_level3(bits, labels, slot_of_prefix, level2, level3, residual, first_new):
    """Move this call's pixels of bins refined just now (block >= first_new) from residual to level 3."""
    rows = level2.shape[0]
    n = bits.size
    for t in numba.prange(rows):
        for i in range(n * t // rows, n * (t + 1) // rows):
            lab = labels[i]
            if lab == 255:
                continue
            key = _monotone_key(bits[i])
            c = level2[t, 2 * (slot_of_prefix[key >> 16] * 256 + ((key >> 8) & np.uint32(255)))]
            if c < 0 and -c - 1 >= first_new:
                r = -c - 1
                level3[t, 2 * (r * 256 + (key & np.uint32(255))) + lab] += 1
                residual[t, r, lab] -= 1


def _key_to_float(keys: np.ndarray) -> np.ndarray:
    """Inverse of the monotone key map (uint32 keys -> float32 values)."""
    keys = keys.astype(np.uint32)
    bits = np.where(keys & np.uint32(0x80000000), keys & np.uint32(0x7FFFFFFF), ~keys)
    return bits.astype(np.uint32).view(np.float32)


def _scores_f32(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, CPU or CUDA
        x = x.detach()
        x = (x.float() if x.is_floating_point() else x).cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1))


def _labels_u8(labels, name: str) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.dtype != np.uint8 and labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"{name}: labels outside 0..255 (min {labels.min()}, max {labels.max()})")
    y = np.ascontiguousarray(labels.reshape(-1), dtype=np.uint8)
    bad = (y > EVAL_ANOMALY) & (y != EVAL_VOID)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{name}: label {y[i]} at pixel {i}; labels must be {EVAL_INLIER} inlier, "
            f"{EVAL_ANOMALY} anomaly or {EVAL_VOID} ignored"
        )
    return y


def _padded_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b for 1-d arrays of different lengths (the shorter one is zero-padded)."""
    if a.size < b.size:
        a, b = b, a
    out = a.copy()
    out[: b.size] += b
    return out


class _Tree:
    """The radix tree of per-class counts (see the module docstring).

    Counts live in one row per worker thread (merged on read), so the counting pass runs in parallel
    without atomics.
    """

    def __init__(self, error_budget: float, max_refined: int):
        self.error_budget = error_budget
        self.max_refined = max_refined
        self.rows = max(1, numba.get_num_threads())
        self.slot_of_prefix = np.full(1 << 16, -1, np.int32)
        self.used = 0  # level-2 blocks in use
        # int32 rows keep the working set in cache; before any row could overflow they are spilled into
        # the int64 totals below
        self.level2 = np.zeros((self.rows, 2 * _SUB * 64), np.int32)  # [row, (slot*256 + sub)*2 + class]
        self.level3 = np.zeros((self.rows, 0), np.int32)  # [row, (block*256 + sub)*2 + class]
        self.spilled2 = np.zeros(0, np.int64)
        self.spilled3 = np.zeros(0, np.int64)
        self.since_spill = 0
        self.residual = np.zeros((self.rows, 0, 2), np.int64)  # counts a bin had before it was refined
        self.refined = 0
        self.ties_rows = 0.0  # Σ over rows of each row's Σ pos·neg (cheap trigger for the exact check)
        self.pos = 0
        self.neg = 0

    def add(self, bits: np.ndarray, labels: np.ndarray) -> None:
        if self.since_spill + bits.size >= 2**31 - 1:
            self._spill()
        self.since_spill += bits.size
        touched = np.zeros(1 << 16, np.uint8)
        _mark_prefixes(bits, labels, touched)
        new = np.flatnonzero(touched & (self.slot_of_prefix < 0))
        if new.size:
            self.slot_of_prefix[new] = np.arange(self.used, self.used + new.size, dtype=np.int32)
            self.used += new.size
            capacity = self.level2.shape[1] // (2 * _SUB)
            if self.used > capacity:
                grow = max(self.used, 2 * capacity) - capacity
                self.level2 = np.concatenate([self.level2, np.zeros((self.rows, 2 * _SUB * grow), np.int32)], axis=1)
        self.ties_rows += float(_accumulate(bits, labels, self.slot_of_prefix, self.level2, self.level3).sum())
        self.pos += int(np.count_nonzero(labels == EVAL_ANOMALY))
        self.neg += int(np.count_nonzero(labels == EVAL_INLIER))
        first_new = self.refined
        if self._refine():
            _move_to_level3(bits, labels, self.slot_of_prefix, self.level2, self.level3, self.residual, first_new)

    def _spill(self) -> None:
        """Move the int32 row counts into the int64 totals (markers of refined bins stay in the rows)."""
        marker = self.level2[0] < 0
        rows2 = np.where(marker, 0, self.level2).astype(np.int64).sum(axis=0)
        self.spilled2 = _padded_add(self.spilled2, rows2)
        self.spilled3 = _padded_add(self.spilled3, self.level3.astype(np.int64).sum(axis=0))
        self.level2[:, ~marker] = 0
        self.level3[:] = 0
        self.since_spill = 0

    def _counts2(self) -> np.ndarray:
        """Merged level-2 counts [bin, class]; refined bins have their marker in column 0."""
        n = 2 * _SUB * self.used
        c = self.level2[:, :n]
        marker = c[0] < 0
        merged = c.sum(axis=0, dtype=np.int64)
        merged[: self.spilled2.size] += self.spilled2[:n]
        merged[marker] = c[0][marker]
        return merged.reshape(-1, 2)

    def ties(self) -> float:
        """Σ pos·neg over unrefined level-2 bins of the merged counts."""
        c = self._counts2()
        return float(np.sum(np.where(c[:, 0] > 0, c[:, 0].astype(np.float64) * c[:, 1], 0.0)))

    def _refine(self) -> bool:
        """While the tie bound Σ pos·neg / (2PN) exceeds the budget, give exact sub-bins to mixed level-2
        bins that alone hold more than 1/1024 of it, costliest first. Returns whether any bin was refined."""
        allowed = self.error_budget * 2.0 * self.pos * self.neg
        room = self.max_refined - self.refined
        # rows hold similar samples: merged ties ~ rows × Σ row ties; only then pay for the exact sum
        if self.rows * self.ties_rows <= allowed or room <= 0:
            return False
        c = self._counts2()
        cost = np.where(c[:, 0] > 0, c[:, 0].astype(np.float64) * c[:, 1], 0.0)
        total = float(cost.sum())
        self.ties_rows = total / self.rows  # re-anchor the trigger on the exact value
        if total <= allowed:
            return False
        # smooth score distributions spread their ties over many cheap bins whose real error is ~0;
        # refining those would cost speed and 4 KB each
        bins = np.flatnonzero(cost > allowed / 1024)
        order = np.argsort(-cost[bins], kind="stable")
        bins, cost = bins[order], cost[bins][order]
        take = bins[: min(int(np.searchsorted(np.cumsum(cost), total - allowed)) + 1, room)]
        if take.size == 0:
            return False
        blocks = np.arange(self.refined, self.refined + take.size)
        res = np.zeros((self.rows, take.size, 2), np.int64)  # row 0 holds it; rows subtract what they move
        res[0] = c[take]
        self.residual = np.concatenate([self.residual, res], axis=1)
        l2 = self.level2.reshape(self.rows, -1, 2)
        l2[:, take, 0] = -(blocks + 1)
        l2[:, take, 1] = 0
        self.level3 = np.concatenate([self.level3, np.zeros((self.rows, 2 * _SUB * take.size), np.int32)], axis=1)
        self.refined += take.size
        self.ties_rows -= float(cost[: take.size].sum()) / self.rows
        return True

    def _level3(self) -> tuple[np.ndarray, np.ndarray]:
        level3 = _padded_add(self.level3.sum(axis=0, dtype=np.int64), self.spilled3)
        return level3.reshape(-1, _SUB, 2), self.residual.sum(axis=0)

    def groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lowest key, neg, pos) per non-empty bin, sorted by descending key; counts as float64.

        Residuals of refined bins are spread over their exact sub-bins in proportion to the sub-bins' counts.
        """
        prefix_of_slot = np.empty(self.used, np.uint64)
        seen = np.flatnonzero(self.slot_of_prefix >= 0)
        prefix_of_slot[self.slot_of_prefix[seen]] = seen
        c2 = self._counts2()
        sub = np.arange(_SUB, dtype=np.uint64)
        key2 = ((prefix_of_slot[:, None] << np.uint64(16)) | (sub[None, :] << np.uint64(8))).reshape(-1)
        by_prefix = np.argsort(prefix_of_slot)  # bins of a slot are already in key order
        order2 = (by_prefix[:, None] * _SUB + np.arange(_SUB)[None, :]).reshape(-1)
        key2, c2 = key2[order2], c2[order2]
        refined = c2[:, 0] < 0
        keys, neg, pos = key2[~refined], c2[~refined, 0].astype(np.float64), c2[~refined, 1].astype(np.float64)
        if refined.any():
            level3, residual = self._level3()
            blocks = -c2[refined, 0] - 1
            c3 = level3[blocks].astype(np.float64)
            tot = c3.sum(axis=1, keepdims=True)
            share = np.divide(c3, tot, out=np.full_like(c3, 1.0 / _SUB), where=tot > 0)
            c3 += residual[blocks][:, None, :] * share
            keys3 = (key2[refined][:, None] + sub[None, :]).reshape(-1)  # ascending
            at = np.searchsorted(keys, keys3)
            keys = np.insert(keys, at, keys3)
            neg = np.insert(neg, at, c3[..., 0].reshape(-1))
            pos = np.insert(pos, at, c3[..., 1].reshape(-1))
        keep = (neg + pos) > 0
        return keys[keep][::-1].astype(np.uint32), neg[keep][::-1], pos[keep][::-1]

    def error_bound(self) -> float:
        """Upper bound of the AUROC error: ties in unrefined bins, and residuals of refined bins (taken as
        tied with everything of the other class in their bin)."""
        if self.pos == 0 or self.neg == 0:
            return 0.0
        bound = self.ties()
        if self.refined:
            level3, residual = self._level3()
            res = residual.astype(np.float64)
            sub = level3.sum(axis=1).astype(np.float64)
            bound += float(np.sum(res[:, 0] * (sub[:, 1] + res[:, 1]) + res[:, 1] * sub[:, 0]))
        return bound / (2.0 * self.pos * self.neg)

    def nbytes(self) -> int:
        arrays = (self.level2, self.level3, self.spilled2, self.spilled3, self.slot_of_prefix, self.residual)
        return sum(a.nbytes for a in arrays)


def metrics_from_groups(keys: np.ndarray, neg: np.ndarray, pos: np.ndarray) -> dict[str, float]:
    """AUROC, AP, FPR95 and best F1 from tie groups sorted by descending score."""
    P, N = pos.sum(), neg.sum()
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    tp_prev, fp_prev = np.concatenate([[0.0], tp[:-1]]), np.concatenate([[0.0], fp[:-1]])
    auroc = float(np.sum((fp - fp_prev) * (tp + tp_prev)) / (2.0 * P * N)) if N > 0 else float("nan")
    precision = tp / (tp + fp)
    ap = float(np.sum((tp - tp_prev) / P * precision))
    k95 = int(np.argmax(tp >= 0.95 * P))  # tp[-1] == P, so one exists
    fpr95 = float(fp[k95] / N) if N > 0 else float("nan")
    f1 = 2.0 * tp / (tp + fp + P)
    kf = int(np.argmax(f1))
    return {
        "auroc": auroc,
        "ap": ap,
        "fpr95": fpr95,
        "f1_best": float(f1[kf]),
        "f1_threshold": float(_key_to_float(keys[kf : kf + 1])[0]),
        "threshold_fpr95": float(_key_to_float(keys[k95 : k95 + 1])[0]),
    }


class PixelMetrics:
    """Streaming AUROC / AP / FPR95 / best F1 over all pixels of a dataset.

    >>> m = PixelMetrics()
    >>> for name, scores, labels in data:   # one image at a time: numpy or torch, any shape
    ...     m.update(scores, labels, name=name)
    >>> m.compute()  # {"auroc", "ap", "fpr95", "f1_best", "f1_threshold", ..., "auroc_error_bound"}

    ``per_image=True`` also averages each metric over images that contain both classes
    (``compute()["per_image"]``).
    """

    def __init__(self, per_image: bool = False, error_budget: float = 5e-5, max_refined: int = 1 << 14):
        self.per_image = per_image
        self.error_budget = error_budget
        self.max_refined = max_refined
        self.reset()

    def reset(self) -> None:
        self._tree = _Tree(self.error_budget, self.max_refined)
        self._images = 0
        self._per_image: list[dict[str, float]] = []

    def update(self, scores, labels, name: str | None = None) -> None:
        """Add one image. ``scores`` and ``labels`` must have the same number of elements."""
        name = name or f"image #{self._images}"
        s = _scores_f32(scores)
        y = _labels_u8(labels, name)
        if s.size != y.size:
            raise ValueError(f"{name}: {s.size} scores but {y.size} labels")
        if np.isnan(s).any():
            raise ValueError(f"{name}: score is NaN at pixel {int(np.argmax(np.isnan(s)))}")
        bits = s.view(np.uint32)
        self._tree.add(bits, y)
        if self.per_image:
            one = _Tree(self.error_budget, self.max_refined)
            one.add(bits, y)
            keys, neg, pos = one.groups()
            if neg.sum() > 0 and pos.sum() > 0:
                self._per_image.append(metrics_from_groups(keys, neg, pos))
        self._images += 1

    def curves(self, max_points: int = 2000) -> dict[str, np.ndarray]:
        """ROC (fpr, tpr) and PR (recall, precision) points, thinned to about ``max_points``."""
        _, neg, pos = self._tree.groups()
        tp, fp = np.cumsum(pos), np.cumsum(neg)
        idx = np.unique(np.linspace(0, tp.size - 1, min(max_points, tp.size)).astype(int))
        tp, fp = tp[idx], fp[idx]
        return {
            "fpr": np.r_[0.0, fp / max(fp[-1], 1)],
            "tpr": np.r_[0.0, tp / max(tp[-1], 1)],
            "recall": tp / max(tp[-1], 1),
            "precision": tp / np.maximum(tp + fp, 1),
        }

    def compute(self) -> dict:
        keys, neg, pos = self._tree.groups()
        P, N = pos.sum(), neg.sum()
        if P == 0:
            raise ValueError(
                f"no anomaly pixel (label {EVAL_ANOMALY}) in {self._images} images: AP/AUROC/FPR95 are undefined"
            )
        if N == 0:
            raise ValueError(
                f"no inlier pixel (label {EVAL_INLIER}) in {self._images} images: AUROC/FPR95 are undefined"
            )
        out: dict = metrics_from_groups(keys, neg, pos)
        bound = self._tree.error_bound()
        out |= {
            "auroc_error_bound": bound,
            "pixels": int(P + N),
            "anomaly_pixels": int(P),
            "images": self._images,
            "memory_bytes": self._tree.nbytes(),
        }
        if self.per_image:
            keys_ = ("auroc", "ap", "fpr95", "f1_best")
            out["per_image"] = {
                k: float(np.mean([m[k] for m in self._per_image])) if self._per_image else float("nan") for k in keys_
            }
            out["per_image"]["images"] = len(self._per_image)
        return out
