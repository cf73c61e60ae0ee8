"""Anomaly scores from segmentation logits. One sign convention: higher = more anomalous.

All take logits ``(B, C, H, W)`` over the C inlier classes (slice extra channels off first, e.g.
``logits[:, :19]`` for a 20-channel Cityscapes head) and return ``(B, H, W)``.

* ``msp``         1 − max_c softmax(x)_c                      (Hendrycks & Gimpel, 2017)
* ``max_logit``   −max_c x_c                                    (Hendrycks et al., 2022)
* ``entropy``     H = −Σ_c p_c log p_c
* ``energy``      −logsumexp_c x_c, the free energy (Liu et al., 2020; used by PEBAL and RPL)
* ``eel``         α·H(ŷ) − logsumexp(ŷ): DiffEEL's S = α·H − E with E = logsumexp (α = 1 default)
* ``max_min``     −(max_c x_c − min_c x_c)                       (max-min logit margin)

Of a mask-classification segmenter's per-pixel class scores L_k = Σ_q softmax(c_q)_k · sigmoid(m_q) (which its
``forward`` gives in place of logits; ``models.segmenters.mask2former``):

* ``rba``         −Σ_k tanh(L_k): "rejected by all" (Nayal et al., RbA, ICCV 2023, Sec. 3.2)
* ``m2a``         1 − max_k L_k (Rai et al., Mask2Anomaly, ICCV 2023: the score of its inference code)

``smooth`` applies the Gaussian smoothing RPL and PEBAL use at inference (kernel 7, σ = 1).

**One pass, every score.** The built-in scores read their per-pixel reductions from a ``LogitStats`` (max, min,
Σ exp(x − max), logsumexp, ...), each computed once however many scores ask for it, so ``anomaly_scores(logits,
[msp, max_logit, entropy, energy, max_min])`` costs little more than the dearest one. The formulas are the papers'
in a shared form: with m = max_c x_c, e_c = exp(x_c − m) and s = Σ_c e_c, logsumexp = m + log s, the maximum
softmax probability is 1/s (so msp = 1 − 1/s) and H = log s − Σ_c e_c (x_c − m) / s (both terms small on confident
pixels, so H keeps its precision there). A registered score that is a plain function of a logits tensor (a
plug-in's) is given the tensor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import cached_property, wraps

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from schemas.registries import SCORES


class LogitStats:
    """Per-pixel reductions over the classes of ``(B, C, H, W)`` logits, each computed on first use and kept, so
    scores that share one (msp, entropy, energy and eel all need Σ exp(x − max)) share its cost. Works under
    autograd (the training losses use the same scores)."""

    def __init__(self, logits: torch.Tensor):
        self.x = logits

    @cached_property
    def max(self) -> torch.Tensor:
        return self.x.amax(dim=1)

    @cached_property
    def min(self) -> torch.Tensor:
        return self.x.amin(dim=1)

    @cached_property
    def _shifted(self) -> torch.Tensor:  # x − max ≤ 0
        return self.x - self.max[:, None]

    @cached_property
    def _exp(self) -> torch.Tensor:  # e_c = exp(x_c − max)
        return self._shifted.exp()

    @cached_property
    def sum_exp(self) -> torch.Tensor:  # s = Σ_c e_c ∈ [1, C]
        return self._exp.sum(dim=1)

    @cached_property
    def logsumexp(self) -> torch.Tensor:
        return self.max + self.sum_exp.log()

    @cached_property
    def entropy(self) -> torch.Tensor:
        """H = −Σ p log p = log s − Σ_c e_c (x_c − m) / s."""
        return self.sum_exp.log() - (self._exp * self._shifted).sum(dim=1) / self.sum_exp


def stats_score(fn: Callable) -> Callable:
    """Mark a score as reading a ``LogitStats``; called with a plain tensor, it wraps it first."""

    @wraps(fn)
    def score(x, *args, **kw):
        return fn(x if isinstance(x, LogitStats) else LogitStats(x), *args, **kw)

    score.reads_stats = True
    return score


@SCORES.register("msp")
@stats_score
def msp(st: LogitStats) -> torch.Tensor:
    """1 − max_c softmax(x)_c = 1 − 1/s (Hendrycks & Gimpel, ICLR 2017)."""
    return 1.0 - 1.0 / st.sum_exp


@SCORES.register("max_logit")
@stats_score
def max_logit(st: LogitStats) -> torch.Tensor:
    """−max_c x_c (Hendrycks et al., ICML 2022)."""
    return -st.max


@SCORES.register("entropy")
@stats_score
def entropy(st: LogitStats) -> torch.Tensor:
    """H = −Σ_c p_c log p_c of the softmax."""
    return st.entropy


@SCORES.register("energy")
@stats_score
def energy(st: LogitStats) -> torch.Tensor:
    """−logsumexp_c x_c, the free energy at T = 1 (Liu et al., NeurIPS 2020, Eq. 5 with the sign that makes
    higher = more anomalous)."""
    return -st.logsumexp


@SCORES.register("eel")
@stats_score
def eel(st: LogitStats, alpha: float = 1.0) -> torch.Tensor:
    """DiffEEL's S = α·H(ŷ) − logsumexp(ŷ) (α = 1 default)."""
    return alpha * st.entropy - st.logsumexp


@SCORES.register("max_min")
@stats_score
def max_min(st: LogitStats) -> torch.Tensor:
    """−(max_c x_c − min_c x_c), the max-min logit margin."""
    return -(st.max - st.min)


@SCORES.register("rba")
@stats_score
def rba(st: LogitStats) -> torch.Tensor:
    """RbA: a pixel no class claims (every L_k ≈ 0) scores 0, the maximum; each class claiming it lowers the score
    by up to 1 (tanh saturates, so one confident class is enough to call a pixel an inlier)."""
    return -torch.tanh(st.x).sum(dim=1)


@SCORES.register("m2a")
@stats_score
def m2a(st: LogitStats) -> torch.Tensor:
    """Mask2Anomaly: 1 − the largest per-pixel class score."""
    return 1.0 - st.max


def gaussian_kernel1d(size: int = 7, sigma: float = 1.0, device=None, dtype=torch.float32) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def smooth(score: torch.Tensor, size: int = 7, sigma: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, H, W)`` maps with reflect padding (size odd): a weighted sum of ``size``
    shifted views per axis, several times faster on a CPU than a 1-channel ``conv2d`` and the same on a GPU."""
    if score.device.type == "cpu" and score.dtype == torch.float32 and not score.requires_grad and score.ndim == 3:
        # OpenCV's separable filter: 5× faster on a CPU, the same sums up to float32 rounding (reflect = REFLECT_101)
        k = gaussian_kernel1d(size, sigma, score.device, score.dtype).numpy()
        maps = score.contiguous().numpy()
        out = [cv2.sepFilter2D(m, -1, k, k, borderType=cv2.BORDER_REFLECT_101) for m in maps]
        return torch.from_numpy(np.stack(out))
    k = gaussian_kernel1d(size, sigma, score.device, score.dtype).tolist()
    pad = size // 2
    h, w = score.shape[-2:]
    x = F.pad(score[:, None], (pad, pad, pad, pad), mode="reflect")[:, 0]
    rows = k[0] * x[:, :, 0:w]
    for i in range(1, size):
        rows = rows + k[i] * x[:, :, i : i + w]
    out = k[0] * rows[:, 0:h]
    for i in range(1, size):
        out = out + k[i] * rows[:, i : i + h]
    return out


#: pixels (× classes) per piece when scores of large CPU logits are computed piecewise: small enough that a piece's
#: temporaries stay in the cache (2× faster than whole 1280×720 frames on the 2-core machine), large enough to
#: keep the per-piece overhead small
CHUNK_ELEMENTS = 1 << 19


def anomaly_scores(
    logits: torch.Tensor, names: Sequence[str], smoothing: bool = False, **kw
) -> dict[str, torch.Tensor]:
    """Every score in ``names`` (``SCORES``) of the same logits, sharing their reductions (``LogitStats``), each
    optionally Gaussian-smoothed; ``kw`` goes to each score that takes it (``alpha`` of eel). On a CPU, without
    gradients, the built-in (per-pixel) scores are computed a band of rows at a time (``CHUNK_ELEMENTS``): the
    same values, in a fraction of the time."""
    fns = {n: SCORES.get(n) for n in names}
    args = {n: {k: v for k, v in kw.items() if k in inspect.signature(fn).parameters} for n, fn in fns.items()}
    piecewise = logits.device.type == "cpu" and not (torch.is_grad_enabled() and logits.requires_grad)
    b, c, h, w = logits.shape
    rows = max(1, CHUNK_ELEMENTS // max(1, b * c * w)) if piecewise else h
    out = {}
    per_pixel = [n for n, fn in fns.items() if getattr(fn, "reads_stats", False)]
    if per_pixel:
        pieces = []
        for i in range(0, h, rows):
            st = LogitStats(logits[:, :, i : i + rows])
            pieces.append([fns[n](st, **args[n]) for n in per_pixel])
        for j, n in enumerate(per_pixel):
            out[n] = pieces[0][j] if len(pieces) == 1 else torch.cat([p[j] for p in pieces], dim=1)
    for n, fn in fns.items():
        if n not in out:  # a plug-in score: the whole tensor, it may look beyond a pixel
            out[n] = fn(logits, **args[n])
    return {n: smooth(out[n]) if smoothing else out[n] for n in names}


def anomaly_score(logits: torch.Tensor, name: str = "energy", smoothing: bool = False, **kw) -> torch.Tensor:
    """Score map by name (``SCORES``), optionally Gaussian-smoothed."""
    s = SCORES.get(name)(logits, **kw)
    return smooth(s) if smoothing else s
