"""Residual pattern learning (Liu et al., "Residual Pattern Learning for Pixel-wise Out-of-Distribution
Detection in Semantic Segmentation", ICCV 2023): a trainable block reads the frozen network's deep feature and
adds a residual to its classifier input, so the re-decoded logits ŷ can express "unknown" while the frozen
logits ỹ stay untouched. CoroCL's projector reads the block's features during training only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.segmenters.base import FrozenSegmenter
from models.segmenters.deeplab import ASPP


class ResidualBlock(nn.Module):
    """ASPP(deep) → 1×1 bottleneck (``dim``) → upsampled to the classifier input's size → 1×1 to its channels.

    Where the segmenter has an ASPP (DeepLabV3+) of the block's width (256), ``aspp`` and ``bottleneck`` start as
    copies of the frozen ``aspp`` and ``bot_aspp``, as in RPL; another ``dim`` starts from random weights. The output projection starts at zero, so training starts from ŷ = ỹ
    (RPL initialises it randomly; a zero start keeps the closed-set prediction intact from step one)."""

    def __init__(self, deep_channels: int, plug_channels: int, dim: int = 256, output_stride: int = 8, init_from=None):
        super().__init__()
        self.aspp = ASPP(deep_channels, dim, output_stride=output_stride)
        self.bottleneck = nn.Conv2d(5 * dim, dim, 1, bias=False)
        self.out = nn.Conv2d(dim, plug_channels, 1, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
        nn.init.zeros_(self.out.weight)
        if init_from is not None and init_from["aspp"].img_conv[0].out_channels == dim:  # a copy needs the same width
            self.aspp.load_state_dict(init_from["aspp"].state_dict())
            self.bottleneck.load_state_dict(init_from["bot_aspp"].state_dict())
        self.dim = dim

    def forward(self, deep: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual for the classifier input, the block's ``dim``-channel features at that size)."""
        feats = F.interpolate(self.bottleneck(self.aspp(deep)), size=size, mode="bilinear", align_corners=True)
        return self.out(feats), feats


class Projector(nn.Module):
    """CoroCL's one-layer projection head (1×1 conv; 304 dims in the paper). Dropped at inference."""

    def __init__(self, cin: int, dim: int = 304):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@dataclass
class AnomalyOutput:
    frozen_logits: torch.Tensor  # ỹ, no gradient
    logits: torch.Tensor  # ŷ
    embeddings: torch.Tensor | None  # projector output (training with CoroCL only)


class ResidualAnomalyModel(nn.Module):
    """A frozen segmenter + RPL's residual block (+ CoroCL's projector while training)."""

    def __init__(self, segmenter: FrozenSegmenter, residual: ResidualBlock, projector: Projector | None = None):
        super().__init__()
        self.segmenter = segmenter
        self.residual = residual
        self.projector = projector

    @classmethod
    def create(cls, segmenter: FrozenSegmenter, dim: int = 256, projector_dim: int | None = None):
        stride = 16 if segmenter.size_multiple >= 16 else 8
        block = ResidualBlock(
            segmenter.deep_channels, segmenter.plug_channels, dim, stride, init_from=segmenter.aspp_for_init()
        )
        proj = Projector(dim, projector_dim) if projector_dim else None
        return cls(segmenter, block, proj)

    def forward(self, images: torch.Tensor, with_embeddings: bool = False) -> AnomalyOutput:
        with torch.no_grad():
            enc = self.segmenter.encode(images)
            frozen = self.segmenter.decode(enc)
        res, feats = self.residual(enc.deep, tuple(enc.plug.shape[2:]))
        logits = self.segmenter.decode(enc, res)
        emb = self.projector(feats) if (with_embeddings and self.projector is not None) else None
        return AnomalyOutput(frozen, logits, emb)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a method checkpoint stores: the residual block (and projector), never the frozen network."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("segmenter.")}
