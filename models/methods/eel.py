"""DiffEEL's energy-entropy learning on RPL: L = L_cons + λ·ℓ_eel (``models.losses.rpl_eel_loss``; the paper's
Eq. 7 for ℓ_eel and its consistency loss L_cons), λ = 0.05; score S = α·H(ŷ) − logsumexp(ŷ), α = 1,
Gaussian-smoothed. Paper defaults: Adam lr 5e-5, ×10 on the new layers, 30 epochs."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from models.losses import rpl_eel_loss
from models.methods.registry import register_method
from models.methods.residual import ResidualConfig, ResidualMethod
from models.scores import anomaly_score


class EELConfig(ResidualConfig):
    """EEL's hyper-parameters (paper defaults)."""

    name: Literal["eel"] = "eel"
    lr: float = Field(5e-5, gt=0)
    lam: float = Field(0.05, ge=0, description="L = L_cons + lam · ℓ_eel")
    alpha: float = Field(1.0, ge=0, description="entropy weight, in the loss and the score")


@register_method
class EEL(ResidualMethod):
    name = "eel"
    config = EELConfig
    paper = "DiffEEL: diffusion-synthesised anomalies and energy-entropy learning (on RPL)"
    head = "RPL's residual block"
    loss_summary = "L_cons (CE + KL + entropy match to ỹ, inliers) + 0.05·ℓ_eel (energy BCE + entropy)"
    score_summary = "α·H(ŷ) − logsumexp(ŷ), smoothed"

    def loss(self, cfg: EELConfig, model, images, labels, extras, generator, progress) -> dict[str, torch.Tensor]:
        out = model(images)
        return rpl_eel_loss(out.logits, out.frozen_logits, labels, cfg.lam, cfg.alpha)

    def score(self, cfg: EELConfig, logits: torch.Tensor) -> torch.Tensor:
        return anomaly_score(logits, "eel", cfg.smoothing, alpha=cfg.alpha)
