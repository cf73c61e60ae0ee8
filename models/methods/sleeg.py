"""SLEEG: Tu et al., "Self-supervised Likelihood Estimation with Energy Guidance for Anomaly Segmentation in Urban
Scenes", AAAI 2024. No outside object is needed: anomalies are patches of the training scenes themselves.

Each step (``tasks.train.extras.SelfPatches``): the patch library takes crops of the batch, N = 10 convex patches
are pasted into every image (the candidates). The OoD head h_θ on the frozen deep feature (``models.sleeg``) is
trained with

    L = ℓ_a (TAE, cross-entropy of softmax(h_θ)) + w·ℓ_o (TORE, the energy-guided margin of Eq. 8, γ = 15)

on targets refined by Eq. 10–11 (``models.losses.refine_candidates``): inside the pasted polygons only pixels
with A = log p_a + λ·log p_t ≥ η* (Otsu over that image's pasted pixels) are anomalies, the rest is ignored;
during the first 15 % of steps the frozen JEM is the refinement score, as the head knows nothing yet. Outside
the polygons every pixel is normal, void included (as in the authors' code); pixels the shards label anomaly
(outside objects pasted by the synth flow) are anomalies with ``outside_objects`` and ignored without.

Inference: A(x) = log p_a + λ·log p_t, λ = 0.5. Paper schedule: 40 000 iterations, batch 8; the authors' code
trains with SGD (lr 0.01, momentum 0.9, weight decay 5e-4) and weights TORE by 0.05 — our defaults.

Not taken from the authors' code: its one-step adversarial perturbation of the pasted image before the loss
(in neither the paper's method section nor the issue), its multi-scale test-time augmentation.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from models.losses import IGNORE_ID, refine_candidates, sleeg_score, tae_loss, tore_loss
from models.losses import jem as frozen_jem
from models.methods.base import Inference, MethodSpec, TrainingProgress, classes, resize_logits
from models.methods.registry import register_method
from models.scores import smooth
from models.segmenters.base import FrozenSegmenter
from models.sleeg import SLEEGModel
from schemas import MethodConfig, PatchesConfig
from schemas.labels import ANOMALY


class SLEEGConfig(MethodConfig):
    """SLEEG's hyper-parameters (the paper's and its authors' defaults). The whole head is new, so it trains at
    ``lr`` (``head_lr_mult`` does not apply); ``weight_decay`` is SLEEG's own (None: the run's)."""

    name: Literal["sleeg"] = "sleeg"
    lr: float = Field(0.01, gt=0)
    optimizer: str = "sgd"
    weight_decay: float | None = Field(5e-4, ge=0)
    smoothing: bool = Field(False, description="the authors' code scores unsmoothed")
    head_width: int = Field(256, ge=8, description="channels of the head's Conv-BN-ReLU blocks")
    dropout: float = Field(0.1, ge=0, lt=1)
    gamma: float = Field(15.0, ge=0, description="TORE margin γ (Eq. 8)")
    lam: float = Field(0.5, ge=0, description="A = log p_a + lam · log p_t (refinement and inference)")
    tore_weight: float = Field(0.05, ge=0, description="L = ℓ_a + tore_weight · ℓ_o")
    warmup_fraction: float = Field(0.15, ge=0, le=1, description="steps refined with JEM instead of A")
    otsu_thresholds: int = Field(25, ge=1, description="levels of the η* grid search")
    outside_objects: bool = Field(True, description="the shards' anomaly pixels train as anomalies (else ignored)")
    patches: PatchesConfig = Field(default_factory=PatchesConfig)


@register_method
class SLEEG(MethodSpec):
    name = "sleeg"
    config = SLEEGConfig
    paper = "Tu et al., Self-supervised Likelihood Estimation with Energy Guidance for Anomaly Segmentation, AAAI 2024"
    head = "an OoD head (3 Conv-BN-ReLU + 1×1 → 2) on the frozen deep feature"
    loss_summary = "TAE cross-entropy + 0.05·TORE energy-guided margin (γ = 15) on self-pasted, refined patches"
    score_summary = "log p_a + 0.5·(h[1] + JEM)"

    def extras(self, cfg: SLEEGConfig) -> dict[str, dict]:
        return {"self_patches": cfg.patches.model_dump(mode="json")}

    def build(self, cfg: SLEEGConfig, segmenter: FrozenSegmenter, training: bool = True) -> SLEEGModel:
        return SLEEGModel.create(segmenter, cfg.head_width, cfg.dropout)

    def targets(
        self, cfg: SLEEGConfig, out, labels: torch.Tensor, candidates: torch.Tensor, progress: TrainingProgress
    ) -> torch.Tensor:
        """o per pixel: normal outside the pasted polygons (shard anomalies per ``outside_objects``), the refined
        candidates inside."""
        base = torch.zeros_like(labels)
        base[labels == ANOMALY] = 1 if cfg.outside_objects else IGNORE_ID
        with torch.no_grad():
            if progress.fraction < cfg.warmup_fraction:
                score = frozen_jem(out.frozen_logits)
            else:
                score = sleeg_score(out.head, out.frozen_logits, cfg.lam)
        return refine_candidates(score, candidates, base, cfg.otsu_thresholds)

    def loss(self, cfg: SLEEGConfig, model, images, labels, extras, generator, progress) -> dict[str, torch.Tensor]:
        pasted, candidates = extras["self_patches"]
        out = model(pasted)
        target = self.targets(cfg, out, labels, candidates, progress)
        parts = {"tae": tae_loss(out.head, target), "tore": tore_loss(out.head, out.frozen_logits, target, cfg.gamma)}
        parts["loss"] = parts["tae"] + cfg.tore_weight * parts["tore"]
        parts["anomaly_share"] = (target == 1).float().mean().detach()  # of the pixels, after refinement
        return parts

    def infer(self, cfg: SLEEGConfig, model: SLEEGModel, images: torch.Tensor, size: tuple[int, int]) -> Inference:
        out = model(images)
        head = resize_logits(out.head.float(), size)
        frozen = resize_logits(out.frozen_logits.float(), size)
        score = sleeg_score(head, frozen, cfg.lam)
        if cfg.smoothing:
            score = smooth(score)
        pred = classes(frozen)
        return Inference(score, frozen, pred, pred)

    def param_groups(self, cfg: SLEEGConfig, model: SLEEGModel) -> list[dict]:
        """The whole head is new: one group at ``lr``."""
        return [{"params": list(model.head.parameters()), "lr": cfg.lr}]
