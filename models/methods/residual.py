"""The shared shape of RPL-style methods: a residual block over the frozen segmenter's deep feature, added to
its classifier input (``models.rpl.ResidualAnomalyModel``). RPL, RPL + CoroCL and DiffEEL's EEL differ only in
their loss and score, so each is a few lines on top of this."""

from __future__ import annotations

from abc import abstractmethod

import torch
from pydantic import Field
from torch import nn

from models.methods.base import Inference, MethodConfig, MethodSpec, classes, load_state_strictly, resize_logits
from models.rpl import ResidualAnomalyModel
from models.segmenters.base import FrozenSegmenter

PROJECTOR = "projector."


class ResidualConfig(MethodConfig):
    residual_dim: int = Field(256, ge=8, description="channels of the residual block's ASPP and bottleneck")


class ResidualMethod(MethodSpec):
    """A residual head; ``projector_dim`` (None: no projector) adds CoroCL's training-only projection head."""

    def projector_dim(self, cfg: ResidualConfig) -> int | None:
        return None

    def build(self, cfg: ResidualConfig, segmenter: FrozenSegmenter, training: bool = True) -> nn.Module:
        return ResidualAnomalyModel.create(segmenter, cfg.residual_dim, self.projector_dim(cfg) if training else None)

    @abstractmethod
    def score(self, cfg: ResidualConfig, logits: torch.Tensor) -> torch.Tensor:
        """B×H×W anomaly score of the re-decoded logits ŷ."""

    def infer(self, cfg: ResidualConfig, model: nn.Module, images: torch.Tensor, size: tuple[int, int]) -> Inference:
        out = model(images)
        logits = resize_logits(out.logits.float(), size)
        frozen = resize_logits(out.frozen_logits.float(), size)
        return Inference(self.score(cfg, logits), logits, classes(logits), classes(frozen))

    def param_groups(self, cfg: ResidualConfig, model: ResidualAnomalyModel) -> list[dict]:
        """The residual's ASPP and bottleneck at ``lr``; the newly initialised layers (output projection,
        projector) at ``lr × head_lr_mult`` (RPL's fine-tune / retrain split)."""
        new = list(model.residual.out.parameters()) + (list(model.projector.parameters()) if model.projector else [])
        new_ids = {id(p) for p in new}
        base = [p for p in model.residual.parameters() if id(p) not in new_ids]
        return [{"params": base, "lr": cfg.lr}, {"params": new, "lr": cfg.lr * cfg.head_lr_mult}]

    def head_state(self, model: ResidualAnomalyModel) -> dict[str, torch.Tensor]:
        """The residual block; the projector is training-only and dropped."""
        return {k: v.detach().cpu() for k, v in model.trainable_state_dict().items() if not k.startswith(PROJECTOR)}

    def load_head(self, model: ResidualAnomalyModel, state: dict[str, torch.Tensor], source: str) -> None:
        load_state_strictly(model, state, source, ("segmenter.", PROJECTOR))
