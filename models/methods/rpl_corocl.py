"""RPL + CoroCL: Liu et al., ICCV 2023 (Sec. 3.3, context-robust contrastive learning). RPL's loss plus a
supervised contrastive loss (τ = 0.1) between composite pixels and pixels of the object-source images
(``models.losses.corocl_loss``), through a 1×1 projector used only in training. Score as RPL."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from models.losses import corocl_loss, rpl_loss
from models.methods.registry import register_method
from models.methods.rpl import RPL, RPLConfig


class RPLCoroCLConfig(RPLConfig):
    """RPL's hyper-parameters plus CoroCL's (paper defaults)."""

    name: Literal["rpl_corocl"] = "rpl_corocl"
    projector_dim: int = Field(304, ge=8, description="CoroCL projector output")
    tau: float = Field(0.10, gt=0, description="CoroCL temperature")
    max_views: int = Field(512, ge=1, description="pixel embeddings per pool")
    context_size: int = Field(128, ge=16, description="object-context images are resized to this square")
    object_bank: str | None = Field(None, description="the object bank folder; None: <run_dir>/objects of the shards")


@register_method
class RPLCoroCL(RPL):
    name = "rpl_corocl"
    config = RPLCoroCLConfig
    paper = "Liu et al., Residual Pattern Learning for Pixel-wise OoD Detection in Semantic Segmentation, ICCV 2023"
    head = "RPL's residual block + a 1×1 projector (training only)"
    loss_summary = "RPL's loss + CoroCL (SupCon, τ = 0.1, composites vs the object bank's own images)"
    score_summary = "energy −logsumexp(ŷ), smoothed"

    def projector_dim(self, cfg: RPLCoroCLConfig) -> int | None:
        return cfg.projector_dim

    def extras(self, cfg: RPLCoroCLConfig) -> dict[str, dict]:
        return {"object_context": {"size": cfg.context_size, "bank": cfg.object_bank}}

    def loss(self, cfg: RPLCoroCLConfig, model, images, labels, extras, generator, progress) -> dict[str, torch.Tensor]:
        ctx_images, ctx_labels = extras["object_context"]
        out = model(images, with_embeddings=True)
        ctx = model(ctx_images, with_embeddings=True)
        parts = rpl_loss(out.logits, out.frozen_logits, labels, cfg.entropy_t, cfg.out_weight)
        parts["corocl"] = corocl_loss(
            out.embeddings, labels, ctx.embeddings, ctx_labels, cfg.tau, cfg.max_views, generator
        )
        parts["loss"] = parts["loss"] + parts["corocl"]
        return parts
