"""Mask2Anomaly: Rai et al., "Unmasking Anomalies in Road-Scene Segmentation", ICCV 2023 (code
shyam671/Mask2Anomaly-Unmasking-Anomalies-in-Road-Scene-Segmentation).

Its outlier fine-tuning stage over a frozen Mask2Former: what its authors fine-tune, everything but the backbone (the
pixel decoder, the transformer decoder with its mask embedder, the class head), with Mask2Former's own loss on the
inlier labels plus the mask contrastive margin loss (``models.losses.m2a_loss``, margin 1) on the score
s = 1 − max_k L_k (``models.scores.m2a``). Their schedule (``anomaly_ft.yaml``): AdamW, lr 1e-5, weight decay
0.05, poly, 5000 iterations of batch 8 at 380×760 crops (``configs/train_m2a_cityscapes.yaml``), an outlier
pasted into a sample with probability 0.2.

Inference: s = 1 − max_k L_k, then the mask refinement of the authors' code (``refine``): pixels covered (≥ 0.5)
by a query whose class is confidently (> 0.95) one of building … sky (trainIds 2–10: stuff that is never a road
obstacle) are set to the image's lowest score. The code multiplies the map by 1 − region (sets 0, the bottom of
its score's usual range); the minimum keeps that meaning for any score (EEL's below). The paper's global masked
attention is an architecture change of the decoder: a stock Mask2Former checkpoint does not have it.

Not taken: the repository's gradient clipping, its auxiliary-layer terms, its flip test-time augmentation.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from models.losses import m2a_loss
from models.mask_heads import MaskOutput, confident_regions
from models.methods.base import resize_logits
from models.methods.mask import MaskMethod, MaskMethodConfig
from models.methods.registry import register_method
from models.scores import m2a
from models.segmenters.mask2former import to_image

STUFF = (
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
)  # building, wall, fence, pole, traffic light, traffic sign, vegetation, terrain, sky


class M2AConfig(MaskMethodConfig):
    """Mask2Anomaly's hyper-parameters (the authors' fine-tuning config and inference code)."""

    name: Literal["m2a"] = "m2a"
    lr: float = Field(1e-5, gt=0)
    margin: float = Field(1.0, ge=0, description="m of the contrastive loss: anomalies are pushed to s ≥ m")
    mix_probability: float = Field(0.2, ge=0, le=1, description="share of samples that keep their pasted objects")
    refine: bool = Field(True, description="mask refinement at inference (compare with refine: false)")
    refine_classes: tuple[int, ...] = Field(STUFF, description="trainIds whose confident queries clear the map")
    refine_confidence: float = Field(0.95, ge=0, le=1, description="a query's class probability must exceed this")
    refine_threshold: float = Field(0.5, ge=0, le=1, description="probability · sigmoid(mask) that covers a pixel")


def refine_map(cfg: M2AConfig, score: torch.Tensor, out: MaskOutput) -> torch.Tensor:
    """``score`` (B×H×W) with the pixels of confident stuff queries set to each image's minimum score."""
    region = confident_regions(out.queries, cfg.refine_classes, cfg.refine_confidence)
    region = resize_logits(to_image(region, out.queries), tuple(score.shape[-2:]))[:, 0] >= cfg.refine_threshold
    low = score.flatten(1).amin(1)[:, None, None].expand_as(score)
    return torch.where(region, low, score)


@register_method
class M2A(MaskMethod):
    name = "m2a"
    config = M2AConfig
    paper = "Rai et al., Unmasking Anomalies in Road-Scene Segmentation (Mask2Anomaly), ICCV 2023"
    head = "copies of Mask2Former's pixel decoder, transformer decoder and class head (backbone frozen)"
    loss_summary = "Mask2Former's loss on inliers + contrastive margin (m = 1) on 1 − max L, mix p = 0.2"
    score_summary = "1 − max_k L_k, refined by confident stuff queries"
    parts = ("pixel_decoder", "transformer_decoder", "class_head")

    def outlier_loss(self, cfg: M2AConfig, scores: torch.Tensor, labels: torch.Tensor) -> dict:
        parts = m2a_loss(scores, labels, cfg.margin)
        parts["outlier"] = parts.pop("m2a")
        return parts

    def raw_score(self, cfg: M2AConfig, scores: torch.Tensor) -> torch.Tensor:
        return m2a(scores)

    def score(self, cfg: M2AConfig, scores: torch.Tensor, out: MaskOutput) -> torch.Tensor:
        score = self.raw_score(cfg, scores)
        return refine_map(cfg, score, out) if cfg.refine else score
