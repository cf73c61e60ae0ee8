"""Streaming pixel metrics for anomaly segmentation: AUROC, AP, FPR95 and best F1.

``PixelMetrics`` pools every pixel of a dataset (the RPL / PEBAL / SMIYC pixel protocol) without keeping
score maps in memory. Labels: 0 inlier, 1 anomaly, 255 ignored. Scores: higher = more anomalous.

How it stays exact with bounded memory
--------------------------------------
Scores are compared at float32 precision. A float32 is mapped to a 32-bit key whose unsigned order is
the float order (``-inf < … < -0 < +0 < … < +inf``), so ``±inf`` and scores spanning many orders of
magnitude need no range guess. Counts are kept per class in a radix tree over the key:

* level 2: the top 22 key bits (2^13 bins per octave, 1.2e-4 relative width), in 64-bin blocks that are
  allocated for the 16-bit prefixes actually seen (the counts of a typical score map then fit in a core's
  cache, which is what makes counting fast);
* level 3: the full 32-bit key (exact float32 values), allocated for level-2 bins that hold both classes
  and whose ties would cost accuracy. After each update, while the tie error bound below exceeds
  ``error_budget`` (default 5e-5), mixed bins that alone hold more than 1/1024 of the budget are refined,
  costliest first. Heavy ties and narrow score ranges are thus resolved exactly; a smooth distribution
  spreads its ties over so many bins that they cost nothing measurable (and the bound says so).

Within a bin, positives and negatives are treated as tied, so the AUROC error is at most
``Σ_b pos_b·neg_b / (2·P·N)`` over bins that mix classes and are not exact values; ``compute()`` reports
that bound as ``auroc_error_bound``. A bin refined *after* it already received pixels keeps those as a
residual, which is spread over its exact sub-bins in proportion to their counts and counted in the bound.
Per counting thread, memory is at most 32 MB for level 2 (every 16-bit prefix seen) plus ``max_refined``
× 8 KB, whatever the number of pixels; typical anomaly maps use a few MB in all.

Metric definitions follow scikit-learn: AUROC is the trapezoidal area under the ROC curve over all
distinct thresholds, AP = Σ_n (R_n − R_{n−1})·P_n, FPR95 is the FPR at the first threshold whose TPR
reaches 0.95, and F1 is maximised over thresholds (predict anomaly where score >= threshold).
"""

from __future__ import annotations

import numba
import numpy as np

from tasks.labels import EVAL_ANOMALY, EVAL_INLIER, EVAL_VOID

_SHIFT = 10  # key bits below a level-2 bin
_SUB2 = 1 << (16 - _SHIFT)  # level-2 bins per 16-bit prefix (key bits 15..10)
_SUB3 = 1 << _SHIFT  # exact level-3 bins per refined level-2 bin (key bits 9..0)
_LOW2 = np.uint32(_SUB2 - 1)
_LOW3 = np.uint32(_SUB3 - 1)
_MISSED_BUFFER = 1 << 16  # per thread: pixels of unseen key ranges noted for a second, targeted pass


@numba.njit(cache=True, nogil=True)
def _monotone_key(bits: np.uint32) -> np.uint32:
    """float32 bits -> key whose unsigned order is the float order (-0.0 and +0.0 share a key)."""
    if bits == np.uint32(0x80000000):
        return np.uint32(0x80000000)
    if bits & np.uint32(0x80000000):
        return ~bits
    return bits | np.uint32(0x80000000)


@numba.njit(cache=True, nogil=True, parallel=True)
def _scan(bits, labels, rows):
    """One parallel pass of checks and counts: (first NaN pixel, first pixel whose label is not inlier,
    anomaly or void,
    inlier count, anomaly count); -1 where there is none."""
    n = bits.size
    out = np.full((rows, 4), -1, np.int64)
    for t in numba.prange(rows):
        neg = 0
        pos = 0
        for i in range(n * t // rows, n * (t + 1) // rows):
            lab = labels[i]
            if lab == EVAL_INLIER:
                neg += 1
            elif lab == EVAL_ANOMALY:
                pos += 1
            elif lab != EVAL_VOID and out[t, 1] < 0:
                out[t, 1] = i
            if (bits[i] & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) and out[t, 0] < 0:
                out[t, 0] = i
        out[t, 2] = neg
        out[t, 3] = pos
    first_nan = -1
    first_bad = -1
    for t in range(rows):  # rows cover ascending pixel ranges
        if first_nan < 0:
            first_nan = out[t, 0]
        if first_bad < 0:
            first_bad = out[t, 1]
    return first_nan, first_bad, out[:, 2].sum(), out[:, 3].sum()


@numba.njit(cache=True, nogil=True, parallel=True)
def _accumulate(bits, labels, slot_of_prefix, level2, missed, n_missed):
    """Count pixels into level 2 (22-bit keys); thread t counts its share of the pixels into row t.

    Pixels whose 16-bit key prefix has no block yet are skipped; thread t notes their indices in
    ``missed[t]`` (all of them counted in ``n_missed[t]``, even past the buffer) for ``_count_missed``.
    """
    rows = level2.shape[0]
    n = bits.size
    cap = missed.shape[1]
    for t in numba.prange(rows):
        l2 = level2[t]
        k = 0
        for i in range(n * t // rows, n * (t + 1) // rows):
            lab = labels[i]
            if lab == EVAL_VOID:
                continue
            key = _monotone_key(bits[i])
            slot = slot_of_prefix[key >> 16]
            if slot < 0:
                if k < cap:
                    missed[t, k] = i
                k += 1
                continue
            l2[2 * (slot * _SUB2 + ((key >> _SHIFT) & _LOW2)) + lab] += 1
        n_missed[t] = k


@numba.njit(cache=True, nogil=True)
def _assign_slots(bits, index, slot_of_prefix, used):
    """Give level-2 blocks to the 16-bit key prefixes of the pixels in ``index`` that have none yet.
    Returns the new number of blocks in use."""
    for i in index:
        p = _monotone_key(bits[i]) >> 16
        if slot_of_prefix[p] < 0:
            slot_of_prefix[p] = used
            used += 1
    return used


@numba.njit(cache=True, nogil=True)
def _count_missed(bits, labels, index, slot_of_prefix, level2):
    """Count the pixels in ``index`` (whose prefixes now have blocks) into row 0 of level 2."""
    l2 = level2[0]
    for i in index:
        key = _monotone_key(bits[i])
        l2[2 * (slot_of_prefix[key >> 16] * _SUB2 + ((key >> _SHIFT) & _LOW2)) + labels[i]] += 1


@numba.njit(cache=True, nogil=True, parallel=True)
def _count_level3(bits, labels, slot_of_prefix, block_of_bin, level3, first_block):
    """Count the pixels of refined level-2 bins (block >= first_block) into their exact level-3 bins."""
    rows = level3.shape[0]
    n = bits.size
    for t in numba.prange(rows):
        l3 = level3[t]
        for i in range(n * t // rows, n * (t + 1) // rows):
            lab = labels[i]
            if lab == EVAL_VOID:
                continue
            key = _monotone_key(bits[i])
            r = block_of_bin[slot_of_prefix[key >> 16] * _SUB2 + ((key >> _SHIFT) & _LOW2)]
            if r >= first_block:
                l3[2 * (r * _SUB3 + (key & _LOW3)) + lab] += 1


@numba.njit(cache=True, nogil=True)
def _sweep(slots_desc, prefix_of_slot, c2, block_of_bin, level3, P, N):
    """One pass over the bins from the highest key down: AUROC, AP, FPR95 and best F1 (as in
    ``metrics_from_groups``) without materialising the groups. ``level3[block, sub, class]`` holds a refined
    bin's exact counts with its residual already spread."""
    tp = 0.0
    fp = 0.0
    auc2 = 0.0  # Σ Δfp · (tp + tp_prev)
    ap = 0.0
    key95 = np.uint32(0)
    fp95 = -1.0
    best_f1 = -1.0
    key_f1 = np.uint32(0)
    refined = block_of_bin.size > 0
    for slot in slots_desc:
        base = np.uint32(prefix_of_slot[slot]) << np.uint32(16)
        for sub in range(_SUB2 - 1, -1, -1):
            j = slot * _SUB2 + sub
            block = block_of_bin[j] if refined else -1
            for e in range(_SUB3 - 1 if block >= 0 else 0, -1, -1):
                if block >= 0:
                    n_, p_ = level3[block, e, 0], level3[block, e, 1]
                    key = base | (np.uint32(sub) << np.uint32(_SHIFT)) | np.uint32(e)
                else:
                    n_, p_ = float(c2[j, 0]), float(c2[j, 1])
                    key = base | (np.uint32(sub) << np.uint32(_SHIFT))
                if n_ + p_ == 0:
                    continue
                tp_new, fp_new = tp + p_, fp + n_
                auc2 += n_ * (tp_new + tp)
                ap += p_ * tp_new / (tp_new + fp_new)
                tp, fp = tp_new, fp_new
                if fp95 < 0 and tp >= 0.95 * P:
                    fp95, key95 = fp, key
                f1 = 2.0 * tp / (tp + fp + P)
                if f1 > best_f1:
                    best_f1, key_f1 = f1, key
    return auc2 / (2.0 * P * N), ap / P, fp95 / N, best_f1, key_f1, key95


def _scores_keys(bits: np.ndarray) -> np.ndarray:
    """Monotone keys of float32 bit patterns, vectorised (the slow path of ``_Tree.add``)."""
    keys = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000)).astype(np.uint32)
    keys[bits == np.uint32(0x80000000)] = np.uint32(0x80000000)
    return keys


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
    return np.ascontiguousarray(labels.reshape(-1), dtype=np.uint8)  # values are checked by _scan


def _padded_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b for 1-d arrays of different lengths (the shorter one is zero-padded)."""
    if a.size < b.size:
        a, b = b, a
    out = a.copy()
    out[: b.size] += b
    return out


class _Tree:
    """The radix tree of per-class counts (see the module docstring).

    Counts live in one int32 row per worker thread (summed on read, spilled into int64 totals long before
    a row could overflow), so counting runs in parallel without atomics. Level 2 counts every pixel; a
    refined bin's level-3 block counts its pixels from the refinement on, so its residual is
    ``level 2 − level 3``.
    """

    def __init__(self, error_budget: float, max_refined: int):
        self.error_budget = error_budget
        self.max_refined = max_refined
        self.rows = max(1, numba.get_num_threads())
        self.slot_of_prefix = np.full(1 << 16, -1, np.int32)
        self.used = 0  # level-2 blocks in use
        self.level2 = np.zeros((self.rows, 2 * _SUB2 * 64), np.int32)  # [row, (slot*_SUB2 + sub)*2 + class]
        self.level3 = np.zeros((self.rows, 0), np.int32)  # [row, (block*_SUB3 + sub)*2 + class]
        self.spilled2 = np.zeros(0, np.int64)
        self.spilled3 = np.zeros(0, np.int64)
        self.since_spill = 0
        self.block_of_bin = np.zeros(0, np.int32)  # level-2 bin -> level-3 block (-1: none); lazily
        self.refined = 0
        self.pos = 0
        self.neg = 0
        self.next_check = 0  # pixel count at which the tie bound is next computed

    def add(self, bits: np.ndarray, labels: np.ndarray, neg: int, pos: int) -> None:
        """Count one image (checked by ``_scan``, which also gave its ``neg``/``pos`` counts)."""
        if self.since_spill + bits.size >= 2**31 - 1:
            self._spill()
        self.since_spill += bits.size
        missed = np.empty((self.rows, _MISSED_BUFFER), np.int64)
        n_missed = np.zeros(self.rows, np.int64)
        _accumulate(bits, labels, self.slot_of_prefix, self.level2, missed, n_missed)
        if n_missed.any():  # pixels in key ranges not seen before: give those blocks and count them
            if (n_missed > _MISSED_BUFFER).any():  # too many to have been noted: find them again
                keys = _scores_keys(bits[labels != EVAL_VOID])
                index = np.flatnonzero(labels != EVAL_VOID)[self.slot_of_prefix[keys >> 16] < 0]
            else:
                index = np.concatenate([missed[t, : n_missed[t]] for t in range(self.rows)])
            self.used = _assign_slots(bits, index, self.slot_of_prefix, self.used)
            self._reserve(self.used)
            _count_missed(bits, labels, index, self.slot_of_prefix, self.level2)
        if self.refined:
            self._grow_block_map()
            _count_level3(bits, labels, self.slot_of_prefix, self.block_of_bin, self.level3, 0)
        self.pos += pos
        self.neg += neg
        if self.pos + self.neg >= self.next_check:  # at the first update, then each time the count doubles
            self.next_check = 2 * (self.pos + self.neg)
            first_new = self.refined
            if self._refine():
                _count_level3(bits, labels, self.slot_of_prefix, self.block_of_bin, self.level3, first_new)

    def _reserve(self, blocks: int) -> None:
        """Make room for at least ``blocks`` level-2 blocks (capacity doubles)."""
        capacity = self.level2.shape[1] // (2 * _SUB2)
        if blocks > capacity:
            grow = max(blocks, 2 * capacity) - capacity
            self.level2 = np.concatenate([self.level2, np.zeros((self.rows, 2 * _SUB2 * grow), np.int32)], axis=1)

    def _grow_block_map(self) -> None:
        n = self.used * _SUB2
        if self.block_of_bin.size < n:
            self.block_of_bin = np.concatenate([self.block_of_bin, np.full(n - self.block_of_bin.size, -1, np.int32)])

    def _spill(self) -> None:
        """Move the int32 row counts into the int64 totals."""
        self.spilled2 = _padded_add(self.spilled2, self.level2.astype(np.int64).sum(axis=0))
        self.spilled3 = _padded_add(self.spilled3, self.level3.astype(np.int64).sum(axis=0))
        self.level2[:] = 0
        self.level3[:] = 0
        self.since_spill = 0

    def _counts2(self) -> np.ndarray:
        """Merged level-2 counts [bin, class] (refined bins included, residual and all)."""
        n = 2 * _SUB2 * self.used
        merged = self.level2[:, :n].sum(axis=0, dtype=np.int64)
        merged[: min(n, self.spilled2.size)] += self.spilled2[:n]
        return merged.reshape(-1, 2)

    def _level3(self) -> np.ndarray:
        """Merged level-3 counts [block, sub, class]."""
        return _padded_add(self.level3.sum(axis=0, dtype=np.int64), self.spilled3).reshape(-1, _SUB3, 2)

    def _unrefined_cost(self, c2: np.ndarray) -> np.ndarray:
        cost = c2[:, 0].astype(np.float64) * c2[:, 1]
        if self.refined:
            cost[self.block_of_bin[: cost.size] >= 0] = 0.0
        return cost

    def _refine(self) -> bool:
        """If the tie bound Σ pos·neg / (2PN) over unrefined bins exceeds the budget, give exact sub-bins to
        mixed level-2 bins that alone hold more than 1/1024 of it, costliest first. Returns whether any was."""
        allowed = self.error_budget * 2.0 * self.pos * self.neg
        room = self.max_refined - self.refined
        if room <= 0 or allowed == 0:
            return False
        cost = self._unrefined_cost(self._counts2())
        total = float(cost.sum())
        if total <= allowed:
            return False
        # a smooth score distribution spreads its ties over many cheap bins whose real error is ~0;
        # refining those would cost speed and 8 KB each
        bins = np.flatnonzero(cost > allowed / 1024)
        order = np.argsort(-cost[bins], kind="stable")
        bins, cost = bins[order], cost[bins][order]
        take = bins[: min(int(np.searchsorted(np.cumsum(cost), total - allowed)) + 1, room)]
        if take.size == 0:
            return False
        self._grow_block_map()
        self.block_of_bin[take] = np.arange(self.refined, self.refined + take.size, dtype=np.int32)
        self.level3 = np.concatenate([self.level3, np.zeros((self.rows, 2 * _SUB3 * take.size), np.int32)], axis=1)
        self.refined += take.size
        return True

    def _exact_blocks(self, c2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(refined level-2 bins, their level-3 counts [block, sub, class] with residuals spread in
        proportion to the sub-bins' counts) — float64."""
        if not self.refined:
            return np.zeros(0, np.int64), np.zeros((0, _SUB3, 2))
        bins = np.flatnonzero(self.block_of_bin >= 0)
        blocks = self.block_of_bin[bins]
        c3 = np.zeros((self.refined, _SUB3, 2))
        c3[blocks] = self._level3()[blocks]
        residual = np.zeros((self.refined, 2))
        residual[blocks] = c2[bins] - c3[blocks].sum(axis=1)
        tot = c3.sum(axis=1, keepdims=True)
        share = np.divide(c3, tot, out=np.full_like(c3, 1.0 / _SUB3), where=tot > 0)
        return bins, c3 + residual[:, None, :] * share

    def _slots(self) -> tuple[np.ndarray, np.ndarray]:
        prefix_of_slot = np.empty(self.used, np.int64)
        seen = np.flatnonzero(self.slot_of_prefix >= 0)
        prefix_of_slot[self.slot_of_prefix[seen]] = seen
        return prefix_of_slot, np.argsort(prefix_of_slot)

    def metrics(self, c2: np.ndarray) -> dict[str, float]:
        """AUROC, AP, FPR95, best F1 (and thresholds) in one sweep over the tree (see ``_sweep``)."""
        prefix_of_slot, by_prefix = self._slots()
        _, level3 = self._exact_blocks(c2)
        block_map = self.block_of_bin if self.refined else np.zeros(0, np.int32)
        auroc, ap, fpr95, f1, key_f1, key95 = _sweep(
            by_prefix[::-1].copy(), prefix_of_slot, c2, block_map, level3, float(self.pos), float(self.neg)
        )
        thresholds = _key_to_float(np.array([key_f1, key95], np.uint32))
        return {
            "auroc": auroc,
            "ap": ap,
            "fpr95": fpr95,
            "f1_best": f1,
            "f1_threshold": float(thresholds[0]),
            "threshold_fpr95": float(thresholds[1]),
        }

    def groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lowest key, neg, pos) per non-empty bin, sorted by descending key; counts as float64."""
        c2 = self._counts2()
        prefix_of_slot, by_prefix = self._slots()
        order2 = (by_prefix[:, None] * _SUB2 + np.arange(_SUB2)[None, :]).reshape(-1)  # ascending keys
        keys = ((prefix_of_slot[order2 // _SUB2] << 16) | ((order2 % _SUB2) << _SHIFT)).astype(np.uint32)
        neg, pos = c2[order2, 0].astype(np.float64), c2[order2, 1].astype(np.float64)
        bins, c3 = self._exact_blocks(c2)
        if bins.size:
            rank = np.empty(order2.size, np.int64)
            rank[order2] = np.arange(order2.size)
            at = rank[bins]
            keys3 = (keys[at][:, None] + np.arange(_SUB3, dtype=np.uint32)[None, :]).reshape(-1)
            keep = np.ones(keys.size, bool)
            keep[at] = False
            keys, neg, pos = keys[keep], neg[keep], pos[keep]
            c3 = c3[self.block_of_bin[bins]]
            where = np.searchsorted(keys, keys3)
            keys = np.insert(keys, where, keys3)
            neg = np.insert(neg, where, c3[..., 0].reshape(-1))
            pos = np.insert(pos, where, c3[..., 1].reshape(-1))
        keep = (neg + pos) > 0
        return keys[keep][::-1], neg[keep][::-1], pos[keep][::-1]

    def error_bound(self, c2: np.ndarray) -> float:
        """Upper bound of the AUROC error: ties in unrefined bins, and residuals of refined bins (taken as
        tied with everything of the other class in their bin)."""
        if self.pos == 0 or self.neg == 0:
            return 0.0
        bound = float(self._unrefined_cost(c2).sum())
        if self.refined:
            bins = np.flatnonzero(self.block_of_bin >= 0)
            sub = self._level3()[self.block_of_bin[bins]].sum(axis=1).astype(np.float64)
            tot = c2[bins].astype(np.float64)
            res = tot - sub
            bound += float(np.sum(res[:, 0] * tot[:, 1] + res[:, 1] * sub[:, 0]))
        return bound / (2.0 * self.pos * self.neg)

    def nbytes(self) -> int:
        arrays = (self.level2, self.level3, self.spilled2, self.spilled3, self.slot_of_prefix, self.block_of_bin)
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

    def __init__(self, per_image: bool = False, error_budget: float = 5e-5, max_refined: int = 1 << 13):
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
        bits = s.view(np.uint32)
        first_nan, first_bad, neg, pos = _scan(bits, y, self._tree.rows)
        if first_nan >= 0:
            raise ValueError(f"{name}: score is NaN at pixel {first_nan}")
        if first_bad >= 0:
            raise ValueError(
                f"{name}: label {y[first_bad]} at pixel {first_bad}; labels must be {EVAL_INLIER} inlier, "
                f"{EVAL_ANOMALY} anomaly or {EVAL_VOID} ignored"
            )
        self._tree.add(bits, y, int(neg), int(pos))
        if self.per_image:
            one = _Tree(self.error_budget, self.max_refined)
            one.add(bits, y, int(neg), int(pos))
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
        P, N = self._tree.pos, self._tree.neg
        if P == 0:
            raise ValueError(
                f"no anomaly pixel (label {EVAL_ANOMALY}) in {self._images} images: AP/AUROC/FPR95 are undefined"
            )
        if N == 0:
            raise ValueError(
                f"no inlier pixel (label {EVAL_INLIER}) in {self._images} images: AUROC/FPR95 are undefined"
            )
        c2 = self._tree._counts2()
        out: dict = self._tree.metrics(c2)
        bound = self._tree.error_bound(c2)
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
