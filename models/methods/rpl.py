"""RPL: Liu et al., "Residual Pattern Learning for Pixel-wise Out-of-Distribution Detection in Semantic
Segmentation", ICCV 2023. Loss ``models.losses.rpl_loss`` (Eq. 4-6: ℓ_in + 0.05·ℓ_out); score: the free energy
−logsumexp(ŷ) (Eq. 7), Gaussian-smoothed. Paper defaults: Adam lr 7.5e-5, ×10 on the new layers."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from models.losses import rpl_loss
from models.methods.registry import register_method
from models.methods.residual import ResidualConfig, ResidualMethod
from models.scores import anomaly_score


class RPLConfig(ResidualConfig):
    """RPL's hyper-parameters (paper defaults)."""

    name: Literal["rpl"] = "rpl"
    lr: float = Field(7.5e-5, gt=0)
    out_weight: float = Field(0.05, ge=0, description="ℓ = ℓ_in + out_weight · ℓ_out")
    entropy_t: float = Field(1.0, gt=0, description="temperature of ℓ_in's entropy-matching term")


@register_method
class RPL(ResidualMethod):
    name = "rpl"
    config = RPLConfig
    paper = "Liu et al., Residual Pattern Learning for Pixel-wise OoD Detection in Semantic Segmentation, ICCV 2023"
    head = "residual block (ASPP + 1×1) on the deep feature, added to the classifier input"
    loss_summary = "ℓ_in (CE to argmax ỹ + entropy match, inliers) + 0.05·ℓ_out (relu(logsumexp ŷ), anomalies)"
    score_summary = "energy −logsumexp(ŷ), smoothed"

    def loss(self, cfg: RPLConfig, model, images, labels, extras, generator, progress) -> dict[str, torch.Tensor]:
        out = model(images)
        return rpl_loss(out.logits, out.frozen_logits, labels, cfg.entropy_t, cfg.out_weight)

    def score(self, cfg: RPLConfig, logits: torch.Tensor) -> torch.Tensor:
        return anomaly_score(logits, "energy", cfg.smoothing)
