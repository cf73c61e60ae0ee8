"""The shared shape of methods over a frozen mask-classification segmenter (Mask2Former): trainable copies of the
parts each method's authors fine-tune (``models.mask_heads.MaskHeadModel``), Mask2Former's own loss on the inlier
labels (both RbA's and Mask2Anomaly's code keep it) plus the method's outlier loss on the per-pixel class scores L,
and a score of L. RbA, Mask2Anomaly and EEL on Mask2Anomaly differ in the parts, the outlier loss and the score."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from models.mask_heads import MaskHeadModel, MaskOutput
from models.methods.base import Inference, MethodSpec, anomaly_mix_extras, classes, resize_logits
from models.scores import smooth
from models.segmenters.base import FrozenSegmenter
from schemas import MethodConfig


class MaskMethodConfig(MethodConfig):
    """What every mask-classification method's config has. The heads are copies of trained layers: everything
    trains at ``lr`` (``head_lr_mult`` does not apply)."""

    optimizer: str = "adamw"
    weight_decay: float | None = Field(0.05, ge=0)
    smoothing: bool = Field(False, description="the authors' code scores unsmoothed")
    seg_weight: float = Field(1.0, ge=0, description="weight of Mask2Former's own loss on the inlier labels")
    outlier_weight: float = Field(1.0, ge=0, description="weight of the method's outlier loss")
    mix_probability: float = Field(ge=0, le=1, description="share of samples that keep their pasted objects")
    scenes: str | None = Field(None, description="the clean scenes mixed in; None: the shard version's scene source")


class MaskMethod(MethodSpec):
    segmenter_kind = "mask-classification"
    parts: ClassVar[tuple[str, ...]]  # what trains (models.mask_heads.PARTS)

    def extras(self, cfg: MaskMethodConfig) -> dict[str, dict]:
        """The authors paste an outlier into a sample with a probability; here a sample keeps its shard objects
        with that probability and is otherwise a clean scene (``tasks.train.extras.AnomalyMix``)."""
        return anomaly_mix_extras(cfg.mix_probability, cfg.scenes)

    def build(self, cfg: MaskMethodConfig, segmenter: FrozenSegmenter, training: bool = True) -> nn.Module:
        return MaskHeadModel(segmenter, self.parts)

    @abstractmethod
    def outlier_loss(self, cfg: MaskMethodConfig, scores: torch.Tensor, labels: torch.Tensor) -> dict:
        """Named parts with ``"outlier"``, the term weighted by ``outlier_weight`` (``scores``: L at label size)."""

    @abstractmethod
    def score(self, cfg: MaskMethodConfig, scores: torch.Tensor, out: MaskOutput) -> torch.Tensor:
        """B×H×W anomaly score of L (B×K×H×W, at the requested size), before smoothing."""

    def loss(self, cfg, model: MaskHeadModel, images, labels, extras, generator, progress) -> dict[str, torch.Tensor]:
        if "anomaly_mix" in extras:
            images, labels = extras["anomaly_mix"]
        out = model(images, labels)
        parts = self.outlier_loss(cfg, out.scores, labels)
        parts["segmentation"] = out.segmentation_loss
        parts["loss"] = cfg.seg_weight * parts["segmentation"] + cfg.outlier_weight * parts["outlier"]
        return parts

    def infer(self, cfg: MaskMethodConfig, model: MaskHeadModel, images, size) -> Inference:
        out = model(images, frozen=True)
        scores = resize_logits(out.scores.float(), size)
        frozen = resize_logits(model.scores(out.frozen).float(), size)
        score = self.score(cfg, scores, out)
        return Inference(smooth(score) if cfg.smoothing else score, scores, classes(scores), classes(frozen))

    def param_groups(self, cfg: MaskMethodConfig, model: MaskHeadModel) -> list[dict]:
        return [{"params": list(model.parts.parameters()), "lr": cfg.lr}]
