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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from schemas.registries import SCORES


@SCORES.register("msp")
def msp(logits: torch.Tensor) -> torch.Tensor:
    return 1.0 - logits.softmax(dim=1).amax(dim=1)


@SCORES.register("max_logit")
def max_logit(logits: torch.Tensor) -> torch.Tensor:
    return -logits.amax(dim=1)


@SCORES.register("entropy")
def entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = logits.log_softmax(dim=1)
    return -(logp.exp() * logp).sum(dim=1)


@SCORES.register("energy")
def energy(logits: torch.Tensor) -> torch.Tensor:
    return -torch.logsumexp(logits, dim=1)


@SCORES.register("eel")
def eel(logits: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    return alpha * entropy(logits) + energy(logits)


@SCORES.register("max_min")
def max_min(logits: torch.Tensor) -> torch.Tensor:
    return -(logits.amax(dim=1) - logits.amin(dim=1))


@SCORES.register("rba")
def rba(scores: torch.Tensor) -> torch.Tensor:
    """RbA: a pixel no class claims (every L_k ≈ 0) scores 0, the maximum; each class claiming it lowers the score
    by up to 1 (tanh saturates, so one confident class is enough to call a pixel an inlier)."""
    return -torch.tanh(scores).sum(dim=1)


@SCORES.register("m2a")
def m2a(scores: torch.Tensor) -> torch.Tensor:
    """Mask2Anomaly: 1 − the largest per-pixel class score."""
    return 1.0 - scores.amax(dim=1)


def gaussian_kernel1d(size: int = 7, sigma: float = 1.0, device=None, dtype=torch.float32) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def smooth(score: torch.Tensor, size: int = 7, sigma: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, H, W)`` maps with reflect padding (size odd)."""
    k = gaussian_kernel1d(size, sigma, score.device, score.dtype)
    x = score[:, None]
    pad = size // 2
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, -1, 1))
    return x[:, 0]


def anomaly_score(logits: torch.Tensor, name: str = "energy", smoothing: bool = False, **kw) -> torch.Tensor:
    """Score map by name (``SCORES``), optionally Gaussian-smoothed."""
    s = SCORES.get(name)(logits, **kw)
    return smooth(s) if smoothing else s
