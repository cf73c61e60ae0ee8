"""SLEEG's model (Tu et al., "Self-supervised Likelihood Estimation with Energy Guidance for Anomaly Segmentation
in Urban Scenes", AAAI 2024): a frozen segmenter g_φ and a small OoD head h_θ on its deep feature z.

The head is the authors' FCN head: three 3×3 Conv-BN-ReLU blocks (``width`` channels), dropout 0.1 and a 1×1
convolution to 2 outputs (normal, anomaly), upsampled bilinearly to the image. The frozen logits are untouched,
so the closed-set prediction is exactly the segmenter's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.segmenters.base import FrozenSegmenter


class OoDHead(nn.Module):
    def __init__(self, cin: int, width: int = 256, dropout: float = 0.1, blocks: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(blocks):
            layers += [nn.Conv2d(cin if i == 0 else width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
            layers.append(nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*layers)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(width, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.blocks(z)))


@dataclass
class SLEEGOutput:
    frozen_logits: torch.Tensor  # g_φ(z), N×C×H×W, no gradient
    head: torch.Tensor  # h_θ(z), N×2×H×W


class SLEEGModel(nn.Module):
    def __init__(self, segmenter: FrozenSegmenter, head: OoDHead):
        super().__init__()
        self.segmenter = segmenter
        self.head = head

    @classmethod
    def create(cls, segmenter: FrozenSegmenter, width: int = 256, dropout: float = 0.1) -> SLEEGModel:
        return cls(segmenter, OoDHead(segmenter.deep_channels, width, dropout))

    def forward(self, images: torch.Tensor) -> SLEEGOutput:
        with torch.no_grad():
            enc = self.segmenter.encode(images)
            frozen = self.segmenter.decode(enc)
        # upsampled as ``decode`` upsamples the frozen logits, so h[1] and JEM are aligned pixel for pixel
        h = F.interpolate(self.head(enc.deep), size=enc.padded, mode="bilinear", align_corners=True)
        return SLEEGOutput(frozen, h[:, :, : enc.size[0], : enc.size[1]])

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The head (weights and batch-norm statistics), never the frozen network."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("segmenter.")}
