"""RbA: Nayal et al., "RbA: Segmenting Unknown Regions Rejected by All", ICCV 2023 (code NazirNayal8/RbA, MIT).

Over a frozen Mask2Former only the class head and the mask-embedding MLP train (the repository's
``FREEZE_TRANSFORMER_DECODER_EXCEPT_MLP``): Mask2Former's own loss on the inlier labels plus the RbA outlier loss
(``models.losses.rba_loss``, Eq. 6: squared hinges on the RbA score, τ_in = 0, τ_out = 5) on inlier and pasted
anomaly pixels. Score: RbA(x) = −Σ_k tanh L_k (``models.scores.rba``). The released Cityscapes + COCO schedule:
AdamW, lr 1e-4, weight decay 0.05, poly 0.9, 2000 iterations of batch 16 at 512×1024 crops
(``configs/train_rba_cityscapes.yaml``), an outlier pasted into a sample with probability 0.1.

Not taken: the repository's gradient clipping (0.01, full model) and its auxiliary-layer (deep-supervision) terms:
the heads here are fine-tuned on the last decoder layer's output only.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from models.losses import rba_loss
from models.methods.mask import MaskMethod, MaskMethodConfig
from models.methods.registry import register_method
from models.scores import rba


class RbAConfig(MaskMethodConfig):
    """RbA's hyper-parameters (the released checkpoint's config)."""

    name: Literal["rba"] = "rba"
    lr: float = Field(1e-4, gt=0)
    inlier_margin: float = Field(0.0, description="τ_in: inlier pixels pay relu(RbA − τ_in)²")
    outlier_margin: float = Field(5.0, description="τ_out: anomaly pixels pay relu(τ_out − RbA)²")
    mix_probability: float = Field(0.1, ge=0, le=1, description="share of samples that keep their pasted objects")


@register_method
class RbA(MaskMethod):
    name = "rba"
    config = RbAConfig
    paper = "Nayal et al., RbA: Segmenting Unknown Regions Rejected by All, ICCV 2023"
    head = "copies of Mask2Former's class head and mask-embedding MLP"
    loss_summary = "Mask2Former's loss on inliers + squared hinges on −Σ tanh L (τ_in 0, τ_out 5), mix p = 0.1"
    score_summary = "−Σ_k tanh L_k (rejected by all)"
    parts = ("class_head", "mask_embedder")

    def outlier_loss(self, cfg: RbAConfig, scores: torch.Tensor, labels: torch.Tensor) -> dict:
        parts = rba_loss(scores, labels, cfg.inlier_margin, cfg.outlier_margin)
        parts["outlier"] = parts.pop("rba")
        return parts

    def score(self, cfg: RbAConfig, scores: torch.Tensor, out) -> torch.Tensor:
        return rba(scores)
