"""PEBAL: Tian et al., "Pixel-wise Energy-biased Abstention Learning for Anomaly Segmentation on Complex Urban
Driving Scenes", ECCV 2022 — the baseline every later paper reports.

The frozen segmenter's final block is copied and trained with one more output, the abstention channel
(``models.pebal``). Loss (``models.losses.pebal_loss``): the gambler loss with the energy-based reward
(inliers bet on their class, pasted anomalies on abstaining) + 0.1 × the energy regulariser (squared hinges at
m_in = −12 and m_out = −6, 5e-4 sparsity, 3e-6 smoothness). Score: the free energy −logsumexp of the 19 class
logits, Gaussian-smoothed. The authors train with Adam, lr 1e-5, 40 epochs, batch 8, 900×900 crops; their
frozen layers' batch norms run in train mode, ours stay frozen (the adapter's promise)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from models.losses import pebal_loss
from models.methods.base import Inference, MethodConfig, MethodSpec, classes, resize_logits
from models.methods.registry import register_method
from models.pebal import PEBALModel
from models.scores import anomaly_score
from models.segmenters.base import FrozenSegmenter


class PEBALConfig(MethodConfig):
    """PEBAL's hyper-parameters (its authors' code). The whole final block trains at ``lr`` (``head_lr_mult``
    does not apply)."""

    name: Literal["pebal"] = "pebal"
    lr: float = Field(1e-5, gt=0)
    m_in: float = Field(-12.0, description="inlier energy margin")
    m_out: float = Field(-6.0, description="anomaly energy margin")
    energy_weight: float = Field(0.1, ge=0, description="total = gambler_in + gambler_out + energy_weight · ℓ_e")
    sparsity: float = Field(5e-4, ge=0, description="weight of ‖E_out‖₂")
    smoothness: float = Field(3e-6, ge=0, description="weight of the energy map's squared neighbour differences")
    out_weight: float = Field(0.1, ge=0, description="weight of the anomaly gambler term")


@register_method
class PEBAL(MethodSpec):
    name = "pebal"
    config = PEBALConfig
    paper = "Tian et al., Pixel-wise Energy-biased Abstention Learning for Anomaly Segmentation, ECCV 2022"
    head = "a copy of the final block with a 20th (abstention) output"
    loss_summary = "gambler (energy reward) + 0.1·energy hinges (m_in −12, m_out −6) + sparsity + smoothness"
    score_summary = "energy −logsumexp of the 19 logits, smoothed"

    def build(self, cfg: PEBALConfig, segmenter: FrozenSegmenter, training: bool = True) -> PEBALModel:
        return PEBALModel.create(segmenter)

    def loss(self, cfg: PEBALConfig, model, images, labels, extras, generator, progress) -> dict[str, torch.Tensor]:
        out = model(images)
        return pebal_loss(
            out.logits, labels, cfg.energy_weight, cfg.m_in, cfg.m_out, cfg.sparsity, cfg.smoothness, cfg.out_weight
        )

    def infer(self, cfg: PEBALConfig, model: PEBALModel, images: torch.Tensor, size: tuple[int, int]) -> Inference:
        out = model(images)
        logits = resize_logits(out.logits[:, :-1].float(), size)  # the class logits; abstention is not scored
        frozen = resize_logits(out.frozen_logits.float(), size)
        score = anomaly_score(logits, "energy", cfg.smoothing)
        return Inference(score, logits, classes(logits), classes(frozen))

    def param_groups(self, cfg: PEBALConfig, model: PEBALModel) -> list[dict]:
        return [{"params": list(model.head.parameters()), "lr": cfg.lr}]
