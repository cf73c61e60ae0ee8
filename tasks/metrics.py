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
* level 3: the full 32-bit key (exact float32 values), allocated for level-2 bins whose pixels, if left
  unordered, could cost accuracy.

Inside an unrefined bin the pixels are treated as tied. ``_bin_costs`` bounds what that can cost each
metric, sweeping the bins with the exact cumulative counts at their edges: pos·neg/(2PN) for AUROC,
pos/P times the spread of precisions the bin's positives could have for AP, neg/N for FPR95 in the bin
where the TPR crosses 0.95. ``compute()`` reports the three bounds (``*_error_bound``). After the first
image, and whenever the pixel count has grown by half since, bins that alone hold more than 1/1024 of
the budget (``tolerance``/2) are refined, costliest first, until the bounds fit it. Heavy ties and narrow
score ranges are thus resolved exactly; a smooth distribution spreads its ties over so many bins that
they cost nothing measurable (and the bounds say so).

A bin refined *after* it received pixels keeps those as a residual, entered as one tied group in the
middle of its exact counts and counted in the bounds. That is the one way a single pass can miss the
tolerance (scores whose distribution shifts late, e.g. ties that only appear after many images);
``needs_second_pass()`` then says so and a second pass over the same images recounts the costly bins
exactly — ``tasks/eval/evaluate.py`` does it from its score cache.
Per counting thread, memory is at most 32 MB for level 2 (every 16-bit prefix seen) plus ``max_refined``
× 8 KB, whatever the number of pixels; typical anomaly maps use a few MB in all.

Metric definitions follow scikit-learn: AUROC is the trapezoidal area under the ROC curve over all
distinct thresholds, AP = Σ_n (R_n − R_{n−1})·P_n, FPR95 is the FPR at the first threshold whose TPR
reaches 0.95, and F1 is maximised over thresholds (predict anomaly where score >= threshold).
"""

from __future__ import annotations

import warnings

import numba
import numpy as np

from tasks.labels import EVAL_ANOMALY, EVAL_INLIER, EVAL_VOID

_SHIFT = 10  # key bits below a level-2 bin
_SUB2 = 1 << (16 - _SHIFT)  # level-2 bins per 16-bit prefix (key bits 15..10)
_SUB3 = 1 << _SHIFT  # exact level-3 bins per refined level-2 bin (key bits 9..0)
_LOW2 = np.uint32(_SUB2 - 1)
_LOW3 = np.uint32(_SUB3 - 1)
_EAGER = 512  # while no more level-2 bins than this are occupied, all are refined (8 KB each per thread)


@numba.njit(cache=True, nogil=True, inline="always")
def monotone_key(bits: np.uint32) -> np.uint32:
    """float32 bits -> key whose unsigned order is the float order (-0.0 and +0.0 share a key).

    Branch-free (it runs once per pixel): negative floats flip all bits, others only the sign bit; -0.0
    would land one below +0.0 and is moved up onto it."""
    mask = np.uint32(np.int32(bits) >> np.int32(31))  # all ones for negative floats
    key = np.uint32(bits ^ (mask | np.uint32(0x80000000)))
    return np.uint32(key + np.uint32(key == np.uint32(0x7FFFFFFF)))


@numba.njit(cache=True, nogil=True, parallel=True)
def _scan(bits, labels, known, seen):
    """One parallel pass of checks and counts: (first NaN pixel, first pixel whose label is not inlier,
    anomaly or void, inlier count, anomaly count), -1 where there is none; and ``seen[t, prefix] = 1`` for
    the 16-bit key prefixes without a level-2 block yet (``known``: a bitmap of those with one, small
    enough to stay in L1 cache) among the labelled pixels of thread t's share."""
    rows = seen.shape[0]
    n = bits.size
    out = np.zeros((rows, 3), np.int64)
    for t in numba.prange(rows):
        neg = 0
        pos = 0
        bad = 0
        mark = seen[t]
        for i in range(n * t // rows, n * (t + 1) // rows):  # branch-free but for new prefixes
            lab = labels[i]
            neg += lab == EVAL_INLIER
            pos += lab == EVAL_ANOMALY
            bad += (lab > EVAL_ANOMALY) & (lab != EVAL_VOID)
            bad += (bits[i] & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)  # NaN
            prefix = monotone_key(bits[i]) >> 16
            if lab != EVAL_VOID and not known[prefix >> 3] & (1 << (prefix & 7)):
                mark[prefix] = 1
        out[t, 0] = neg
        out[t, 1] = pos
        out[t, 2] = bad
    first_nan = -1
    first_bad = -1
    if out[:, 2].sum():  # rare: find the first of each kind
        for i in range(n):
            if first_nan < 0 and (bits[i] & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
                first_nan = i
            if first_bad < 0 and labels[i] > EVAL_ANOMALY and labels[i] != EVAL_VOID:
                first_bad = i
    return first_nan, first_bad, out[:, 0].sum(), out[:, 1].sum()


@numba.njit(cache=True, nogil=True)
def _accumulate_part(bits, labels, slot_of_prefix, l2, refined_bits, block_of_bin, l3):
    """``_accumulate`` for one thread's share, counted into its rows ``l2`` and ``l3``."""
    refined = l3.size > 0
    for i in range(bits.size):
        lab = labels[i]
        if lab == EVAL_VOID:
            continue
        key = monotone_key(bits[i])
        j = slot_of_prefix[key >> 16] * _SUB2 + ((key >> _SHIFT) & _LOW2)
        l2[2 * j + lab] += 1
        if refined and refined_bits[j >> 3] & (1 << (j & 7)):  # a small bitmap first: cache-friendly
            l3[2 * (block_of_bin[j] * _SUB3 + (key & _LOW3)) + lab] += 1


@numba.njit(cache=True, nogil=True, parallel=True)
def _accumulate(bits, labels, slot_of_prefix, level2, refined_bits, block_of_bin, level3):
    """Count pixels into level 2 (22-bit keys) and, for refined bins, level 3 (exact keys); thread t counts
    its share of the pixels into row t. Every prefix has its block already (see ``_Tree.add``)."""
    rows = level2.shape[0]
    n = bits.size
    for t in numba.prange(rows):
        lo, hi = n * t // rows, n * (t + 1) // rows
        _accumulate_part(bits[lo:hi], labels[lo:hi], slot_of_prefix, level2[t], refined_bits, block_of_bin, level3[t])


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
            key = monotone_key(bits[i])
            r = block_of_bin[slot_of_prefix[key >> 16] * _SUB2 + ((key >> _SHIFT) & _LOW2)]
            if r >= first_block:
                l3[2 * (r * _SUB3 + (key & _LOW3)) + lab] += 1


@numba.njit(cache=True, nogil=True)
def _merge_rows(rows, spilled, n):
    """The first n counts summed over the per-thread rows and the spilled int64 totals."""
    out = np.zeros(n, np.int64)
    for r in range(rows.shape[0]):
        for i in range(n):
            out[i] += rows[r, i]
    for i in range(min(n, spilled.size)):
        out[i] += spilled[i]
    return out


@numba.njit(cache=True, nogil=True)
def _block_totals(level3, spilled3, blocks):
    """Per level-3 block, its (neg, pos) counts summed over sub-bins, rows and spilled totals."""
    out = np.zeros((blocks, 2), np.int64)
    for r in range(level3.shape[0]):
        for i in range(min(level3.shape[1], 2 * _SUB3 * blocks)):
            out[i // (2 * _SUB3), i & 1] += level3[r, i]
    for i in range(min(spilled3.size, 2 * _SUB3 * blocks)):
        out[i // (2 * _SUB3), i & 1] += spilled3[i]
    return out


@numba.njit(cache=True, nogil=True)
def _exact_level3(level3, spilled3, blocks_total, bins, blocks, c2):
    """Level-3 counts [block, sub, class] merged over rows and spilled totals (float64), each refined bin's
    residual (pixels counted before it was refined: level 2 minus level 3) added as one tied group at the
    sub-bin that halves the bin's exact counts: an order the pixels could really have, so every metric
    stays within the bounds of ``_bin_costs``."""
    c3 = np.zeros((blocks_total, _SUB3, 2))
    flat = c3.reshape(-1)
    n = flat.size
    for r in range(level3.shape[0]):
        for i in range(min(n, level3.shape[1])):
            flat[i] += level3[r, i]
    for i in range(min(n, spilled3.size)):
        flat[i] += spilled3[i]
    for k in range(bins.size):
        b = blocks[k]
        neg = 0.0
        pos = 0.0
        for e in range(_SUB3):
            neg += c3[b, e, 0]
            pos += c3[b, e, 1]
        total = neg + pos
        half = _SUB3 // 2
        if total > 0:
            mass = 0.0
            for e in range(_SUB3):
                mass += c3[b, e, 0] + c3[b, e, 1]
                if mass >= total / 2:
                    half = e
                    break
        c3[b, half, 0] += c2[bins[k], 0] - neg
        c3[b, half, 1] += c2[bins[k], 1] - pos
    return c3


@numba.njit(cache=True, nogil=True)
def _bin_costs(slots_desc, c2, kind, residual, P, N):
    """Per level-2 bin, how far each metric can be off because the bin's pixels are not ordered exactly.

    ``kind``: 0 unrefined (pixels treated as tied), 1 refined and exact, 2 refined with a residual (pixels
    counted before the refinement, whose place inside the bin is unknown). Sweeping from the highest key
    with the exact cumulative counts ``tp``/``fp`` at the bin's upper edge:

    * AUROC: an unrefined bin gets half credit for its pos·neg pairs, the truth is anywhere in
      [0, pos·neg]: pos·neg / (2PN). A residual bin: its pairs that involve a residual pixel, / (PN).
    * AP: every positive of the bin has, in any order, a precision between
      lo = (tp+1)/(tp+1+fp+neg) and hi = (tp+pos)/(tp+pos+fp): pos/P·(hi − lo). In a residual bin the
      residual positives get hi − lo and the exact ones at most
      (res_pos·(fp+neg) + res_neg·(tp+pos)) / (tp+fp+1)², how far the residual can move a precision.
    * FPR95: the bin where the TPR crosses 0.95, if it holds negatives: neg/N.

    Returns (cost per bin: the three summed, sums [auroc, ap, fpr95])."""
    cost = np.zeros(c2.shape[0])
    sums = np.zeros(3)
    tp = 0.0
    fp = 0.0
    for slot in slots_desc:
        for sub in range(_SUB2 - 1, -1, -1):
            j = slot * _SUB2 + sub
            n_, p_ = float(c2[j, 0]), float(c2[j, 1])
            if n_ + p_ == 0:
                continue
            k = kind[j]
            if k != 1:
                hi = (tp + p_) / (tp + p_ + fp) if p_ > 0 else 0.0
                lo = (tp + 1.0) / (tp + 1.0 + fp + n_)
                crossing = tp < 0.95 * P <= tp + p_
                if k == 0:
                    a = p_ * n_ / (2.0 * P * N)
                    b = p_ / P * (hi - lo) if p_ > 0 else 0.0
                else:
                    rn, rp = residual[j, 0], residual[j, 1]
                    a = (rp * n_ + rn * (p_ - rp)) / (P * N)
                    # precision (a+x)/(a+b+x+y) moves by at most (b+y)/S² per residual positive placed
                    # differently and (a+x)/S² per residual negative, S >= tp+fp+1
                    shift = (rp * (fp + n_) + rn * (tp + p_)) / (tp + fp + 1.0) ** 2
                    b = rp / P * (hi - lo) + (p_ - rp) / P * min(1.0, shift)
                f = n_ / N if crossing and n_ > 0 and (k == 0 or rn + rp > 0) else 0.0
                cost[j] = a + b + f
                sums[0] += a
                sums[1] += b
                sums[2] += f
            tp += p_
            fp += n_
    return cost, sums


@numba.njit(cache=True, nogil=True)
def _sweep(slots_desc, prefix_of_slot, c2, block_of_bin, level3, P, N):
    """One pass over the bins from the highest key down: AUROC, AP, FPR95 and best F1 (as in
    ``metrics_from_groups``) without materialising the groups. ``level3[block, sub, class]`` holds a refined
    bin's exact counts with its residual already added as one tied group."""
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


class MetricsUndefinedError(ValueError):
    """The data has no anomaly (or no inlier) pixel, so AUROC / AP / FPR95 do not exist."""


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
        self.known = np.zeros((1 << 16) // 8, np.uint8)  # bitmap of the prefixes that have a block
        self.seen = np.zeros((self.rows, 1 << 16), np.uint8)  # new key prefixes of the image being added
        self.used = 0  # level-2 blocks in use
        self.level2 = np.zeros((self.rows, 2 * _SUB2 * 64), np.int32)  # [row, (slot*_SUB2 + sub)*2 + class]
        self.level3 = np.zeros((self.rows, 0), np.int32)  # [row, (block*_SUB3 + sub)*2 + class]
        self.spilled2 = np.zeros(0, np.int64)
        self.spilled3 = np.zeros(0, np.int64)
        self.since_spill = 0
        self.block_of_bin = np.full(self.level2.shape[1] // 2, -1, np.int32)  # level-2 bin -> level-3 block
        self.refined = 0
        self.pos = 0
        self.neg = 0
        self.next_check = 0  # labelled-pixel count at which the refinement is next considered
        self.recount = False  # second pass: only refined bins are counted (from zero), see start_recount
        self.recounted = 0

    def scan(self, bits: np.ndarray, labels: np.ndarray) -> tuple[int, int, int, int]:
        """Check one image and note its key prefixes: (first NaN pixel, first bad label, neg, pos)."""
        self.seen[:] = 0
        first_nan, first_bad, neg, pos = _scan(bits, labels, self.known, self.seen)
        return int(first_nan), int(first_bad), int(neg), int(pos)

    def add(self, bits: np.ndarray, labels: np.ndarray, neg: int, pos: int) -> None:
        """Count one image, right after ``scan`` of it (which gave its ``neg``/``pos`` counts)."""
        if self.since_spill + bits.size >= 2**31 - 1:
            self._spill()
        self.since_spill += bits.size
        if self.recount:
            _count_level3(bits, labels, self.slot_of_prefix, self.block_of_bin, self.level3, 0)
            self.recounted += neg + pos
            return
        new = np.flatnonzero(self.seen.any(axis=0))
        if new.size:  # key ranges not seen before get their level-2 blocks
            self.slot_of_prefix[new] = np.arange(self.used, self.used + new.size, dtype=np.int32)
            self.known = np.packbits(self.slot_of_prefix >= 0, bitorder="little")
            self.used += new.size
            self._reserve(self.used)
        first = self.pos + self.neg == 0
        check = not first and self.pos + self.neg + neg + pos >= self.next_check
        if check:  # refine from the counts so far, so that this image already counts in the new bins
            self._refine()
        refined_bits = np.packbits(self.block_of_bin >= 0, bitorder="little") if self.refined else self.known
        _accumulate(bits, labels, self.slot_of_prefix, self.level2, refined_bits, self.block_of_bin, self.level3)
        self.pos += pos
        self.neg += neg
        if check or first:  # at the first image, then each time the count doubles
            self.next_check = 2 * (self.pos + self.neg)
        if first:  # nothing to go by before the first image: refine after it and count it again
            first_new = self.refined
            if self._refine():
                _count_level3(bits, labels, self.slot_of_prefix, self.block_of_bin, self.level3, first_new)

    def start_recount(self) -> None:
        """Second pass: refine every bin that still costs accuracy (costliest first, until the rest is
        within half the budget) and count all refined bins again from zero; once the same images have been
        fed again, every refined bin is exact."""
        c2 = self._counts2()
        cost, sums = self._costs(c2)
        bins = np.flatnonzero(cost > 0)
        order = np.argsort(-cost[bins], kind="stable")
        bins, cost = bins[order], cost[bins][order]
        take = bins[: int(np.searchsorted(np.cumsum(cost), float(sums.sum()) - self.error_budget / 2)) + 1]
        new = take[self.block_of_bin[take] < 0][: max(0, self.max_refined - self.refined)]
        self._add_blocks(new)
        self.level3[:] = 0
        self.spilled3 = np.zeros(0, np.int64)
        self.recount, self.recounted = True, 0

    def finish_recount(self) -> None:
        """End the second pass; refuse it if it did not see the pixels of the first."""
        self.recount = False
        if self.recounted != self.pos + self.neg:
            raise ValueError(
                f"the second pass saw {self.recounted} labelled pixels, the first {self.pos + self.neg}: "
                "feed the same images again"
            )
        c2 = self._counts2()
        bins = np.flatnonzero(self.block_of_bin >= 0)
        if not np.array_equal(
            _block_totals(self.level3, self.spilled3, self.refined)[self.block_of_bin[bins]], c2[bins]
        ):
            raise ValueError("the second pass saw other scores than the first: feed the same images again")

    def _add_blocks(self, bins: np.ndarray) -> None:
        """Give exact level-3 blocks to the level-2 ``bins``."""
        self.block_of_bin[bins] = np.arange(self.refined, self.refined + bins.size, dtype=np.int32)
        grow = np.zeros((self.rows, 2 * _SUB3 * bins.size), np.int32)
        self.level3 = np.concatenate([self.level3, grow], axis=1)
        self.refined += bins.size

    def _reserve(self, blocks: int) -> None:
        """Make room for at least ``blocks`` level-2 blocks (capacity doubles)."""
        capacity = self.level2.shape[1] // (2 * _SUB2)
        if blocks > capacity:
            grow = max(blocks, 2 * capacity) - capacity
            self.level2 = np.concatenate([self.level2, np.zeros((self.rows, 2 * _SUB2 * grow), np.int32)], axis=1)
            self._grow_block_map()  # the kernels index it by level-2 bin without bounds checks

    def _grow_block_map(self) -> None:
        n = self.level2.shape[1] // 2  # as many bins as level 2 has room for
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
        return _merge_rows(self.level2, self.spilled2, 2 * _SUB2 * self.used).reshape(-1, 2)

    def _level3(self) -> np.ndarray:
        """Merged level-3 counts [block, sub, class]."""
        return _padded_add(self.level3.sum(axis=0, dtype=np.int64), self.spilled3).reshape(-1, _SUB3, 2)

    def _costs(self, c2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cost per level-2 bin, bounds [auroc, ap, fpr95]) — see ``_bin_costs``."""
        kind = np.zeros(c2.shape[0], np.int8)
        residual = np.zeros((c2.shape[0], 2))
        if self.refined:
            bins = np.flatnonzero(self.block_of_bin[: c2.shape[0]] >= 0)
            totals = _block_totals(self.level3, self.spilled3, self.refined)
            residual[bins] = c2[bins] - totals[self.block_of_bin[bins]]
            kind[bins] = np.where(residual[bins].sum(axis=1) > 0, 2, 1)
        _, by_prefix = self._slots()
        return _bin_costs(by_prefix[::-1].copy(), c2, kind, residual, float(self.pos), float(self.neg))

    def _refine(self) -> bool:
        """While at most ``_EAGER`` level-2 bins are occupied, refine all of them. Beyond, if the bound of
        AUROC + AP + FPR95 errors (``_bin_costs``) exceeds the budget, give exact sub-bins to unrefined bins
        that alone hold more than 1/1024 of it, costliest first. Returns whether any bin was refined."""
        room = self.max_refined - self.refined
        if room <= 0:
            return False
        c2 = self._counts2()
        unrefined = np.flatnonzero(((c2[:, 0] > 0) | (c2[:, 1] > 0)) & (self.block_of_bin[: c2.shape[0]] < 0))
        if self.refined + unrefined.size <= min(_EAGER, self.max_refined):
            # few distinct bins (ties, narrow ranges, small data): make them all exact now, before later
            # images could leave a residual in them
            self._add_blocks(unrefined)
            return unrefined.size > 0
        if self.pos == 0 or self.neg == 0:
            return False
        cost, sums = self._costs(c2)
        total, allowed = float(sums.sum()), self.error_budget
        if total <= allowed:
            return False
        if self.refined:
            cost[self.block_of_bin[: cost.size] >= 0] = 0.0  # already refined: cannot be refined again
        # a smooth score distribution spreads its ties over many cheap bins whose real error is ~0;
        # refining those would cost speed and 8 KB each
        bins = np.flatnonzero(cost > allowed / 1024)
        order = np.argsort(-cost[bins], kind="stable")
        bins, cost = bins[order], cost[bins][order]
        take = bins[: min(int(np.searchsorted(np.cumsum(cost), total - allowed)) + 1, room)]
        if take.size == 0:
            return False
        self._add_blocks(take)
        return True

    def _exact_blocks(self, c2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(refined level-2 bins, their level-3 counts [block, sub, class] with residuals added as one tied
        group, see ``_exact_level3``) — float64."""
        if not self.refined:
            return np.zeros(0, np.int64), np.zeros((0, _SUB3, 2))
        bins = np.flatnonzero(self.block_of_bin >= 0)
        c3 = _exact_level3(self.level3, self.spilled3, self.refined, bins, self.block_of_bin[bins], c2)
        return bins, c3

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

    def error_bounds(self, c2: np.ndarray) -> dict[str, float]:
        """Upper bounds of the AUROC, AP and FPR95 errors left by bins that are not exact."""
        if self.pos == 0 or self.neg == 0:
            return {"auroc": 0.0, "ap": 0.0, "fpr95": 0.0}
        _, sums = self._costs(c2)
        return {"auroc": float(sums[0]), "ap": float(sums[1]), "fpr95": float(sums[2])}

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
    >>> if m.needs_second_pass():   # rare: the bounds say a metric may be off by more than `tolerance`
    ...     m.start_second_pass()
    ...     for name, scores, labels in data:   # the same images again, in any order
    ...         m.update(scores, labels, name=name)
    >>> m.compute()  # {"auroc", "ap", "fpr95", "f1_best", "f1_threshold", ..., "ap_error_bound", ...}

    One pass is exact to well within ``tolerance`` unless the score distribution shifts after many
    pixels have been counted (e.g. heavy ties that only appear late); ``compute()`` reports an upper bound
    of each metric's error, and ``needs_second_pass()`` says when a bound exceeds ``tolerance``. The
    second pass recounts the costly bins exactly. ``per_image=True`` also averages each metric over images
    that contain both classes (``compute()["per_image"]``).
    """

    def __init__(self, per_image: bool = False, tolerance: float = 1e-4, max_refined: int = 1 << 13):
        self.per_image = per_image
        self.tolerance = tolerance
        self.max_refined = max_refined
        self.reset()

    def reset(self) -> None:
        self._tree = _Tree(self.tolerance / 2, self.max_refined)
        self._images = 0
        self._passes = 1
        self._per_image: list[dict[str, float]] = []

    def needs_second_pass(self) -> bool:
        """Whether a metric's error bound exceeds ``tolerance`` (after the first pass)."""
        tree = self._tree
        if tree.recount or self._passes > 1 or tree.pos == 0 or tree.neg == 0:
            return False
        return max(tree.error_bounds(tree._counts2()).values()) > self.tolerance

    def start_second_pass(self) -> None:
        """Refine the bins that cost accuracy; then ``update`` with the same images again."""
        if self._passes > 1:
            raise RuntimeError("the second pass has already been started")
        self._tree.start_recount()
        self._passes = 2

    def update(self, scores, labels, name: str | None = None) -> None:
        """Add one image. ``scores`` and ``labels`` must have the same number of elements."""
        name = name or f"image #{self._images}"
        s = _scores_f32(scores)
        y = _labels_u8(labels, name)
        if s.size != y.size:
            raise ValueError(f"{name}: {s.size} scores but {y.size} labels")
        bits = s.view(np.uint32)
        first_nan, first_bad, neg, pos = self._tree.scan(bits, y)
        if first_nan >= 0:
            raise ValueError(f"{name}: score is NaN at pixel {first_nan}")
        if first_bad >= 0:
            raise ValueError(
                f"{name}: label {y[first_bad]} at pixel {first_bad}; labels must be {EVAL_INLIER} inlier, "
                f"{EVAL_ANOMALY} anomaly or {EVAL_VOID} ignored"
            )
        self._tree.add(bits, y, neg, pos)
        if self._tree.recount:
            return
        if self.per_image:
            one = _Tree(self.tolerance / 2, self.max_refined)
            one.scan(bits, y)
            one.add(bits, y, neg, pos)
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
            raise MetricsUndefinedError(
                f"no anomaly pixel (label {EVAL_ANOMALY}) in {self._images} images: AP/AUROC/FPR95 are undefined"
            )
        if N == 0:
            raise MetricsUndefinedError(
                f"no inlier pixel (label {EVAL_INLIER}) in {self._images} images: AUROC/FPR95 are undefined"
            )
        if self._tree.recount:
            self._tree.finish_recount()
        c2 = self._tree._counts2()
        out: dict = self._tree.metrics(c2)
        bounds = self._tree.error_bounds(c2)
        out |= {
            "auroc_error_bound": bounds["auroc"],
            "ap_error_bound": bounds["ap"],
            "fpr95_error_bound": bounds["fpr95"],
            "within_tolerance": max(bounds.values()) <= self.tolerance,
            "passes": self._passes,
            "pixels": int(P + N),
            "anomaly_pixels": int(P),
            "images": self._images,
            "memory_bytes": self._tree.nbytes(),
        }
        if not out["within_tolerance"] and self._passes == 1:
            worst = max(bounds, key=bounds.get)
            warnings.warn(
                f"PixelMetrics: the {worst} error may reach {bounds[worst]:.1e} (> tolerance {self.tolerance:g}); "
                "call start_second_pass() and update() with the same images again for the exact value",
                stacklevel=2,
            )
        if self.per_image:
            keys_ = ("auroc", "ap", "fpr95", "f1_best")
            out["per_image"] = {
                k: float(np.mean([m[k] for m in self._per_image])) if self._per_image else float("nan") for k in keys_
            }
            out["per_image"]["images"] = len(self._per_image)
        return out
