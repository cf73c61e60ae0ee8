"""EEL on mask classification: DiffEEL's energy-entropy learning (its Eq. 7, ``models.losses.eel_loss``) on the
per-pixel class scores L_k of a fine-tuned Mask2Former, as the DiffEEL paper's Mask2Anomaly row trains Mask2Anomaly
with its data and EEL. Mask2Anomaly's fine-tuning (the same parts, schedule, outlier mixing and inference-time mask
refinement, ``models.methods.m2a``) with ℓ_eel in place of its contrastive loss; score S = α·H(L) − logsumexp(L).

Weight: ℓ_eel enters at Mask2Anomaly's outlier weight (1), not at DiffEEL's λ = 0.05, which weighs ℓ_eel against
RPL's consistency loss; here Mask2Former's own loss on the inlier labels keeps the closed-set prediction (the
weight of the paper's M2A row is not published in what we could read).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from models.losses import eel_loss
from models.methods.m2a import M2A, M2AConfig
from models.methods.registry import register_method
from models.scores import eel


class EELMaskConfig(M2AConfig):
    """Mask2Anomaly's fine-tuning with EEL's loss and score."""

    name: Literal["eel_mask"] = "eel_mask"
    alpha: float = Field(1.0, ge=0, description="entropy weight, in the loss and the score")


@register_method
class EELMask(M2A):
    name = "eel_mask"
    config = EELMaskConfig
    paper = "DiffEEL's energy-entropy learning on Mask2Anomaly (the paper's M2A row)"
    head = "Mask2Anomaly's: copies of the pixel decoder, transformer decoder and class head"
    loss_summary = "Mask2Former's loss on inliers + ℓ_eel (energy BCE + entropy) on L, mix p = 0.2"
    score_summary = "α·H(L) − logsumexp(L), refined by confident stuff queries"

    def outlier_loss(self, cfg: EELMaskConfig, scores: torch.Tensor, labels: torch.Tensor) -> dict:
        parts = eel_loss(scores, labels, cfg.alpha)
        parts["outlier"] = parts.pop("eel")
        return parts

    def raw_score(self, cfg: EELMaskConfig, scores: torch.Tensor) -> torch.Tensor:
        return eel(scores, alpha=cfg.alpha)
