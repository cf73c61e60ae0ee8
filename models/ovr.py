"""Fine-tuning only the final classifier of a frozen segmenter (Zhang et al., "Anomaly-Aware Semantic
Segmentation via Style-Aligned OoD Augmentation"): a copy of the segmenter's classifier block in which only the
output layer (its last ``nn.Conv2d``) trains; the rest of the copy, like the segmenter, stays frozen and in eval
mode. Logits come at the classifier's resolution (the loss is taken there) and upsampled for scoring."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from models.pebal import last_conv
from models.segmenters.base import Encoded, FrozenSegmenter


def parent_name(root: nn.Module, module: nn.Module) -> str:
    """``module``'s dotted name inside ``root`` with a trailing dot ("" for ``root`` itself)."""
    name = next(n for n, m in root.named_modules() if m is module)
    return f"{name}." if name else ""


@dataclass
class ClassifierOutput:
    low: torch.Tensor  # N×C'×h×w, the fine-tuned classifier's logits before the final upsampling (all outputs)
    enc: Encoded
    num_classes: int  # the first num_classes of the C' outputs are the closed-set classes


class FinalClassifierModel(nn.Module):
    def __init__(self, segmenter: FrozenSegmenter, block: nn.Module):
        super().__init__()
        self.segmenter = segmenter
        self.block = block
        for p in block.parameters():
            p.requires_grad_(False)
        parent, attr, _ = last_conv(block)
        self._output_name = f"{parent_name(block, parent)}{attr}"
        for p in self.output_layer.parameters():
            p.requires_grad_(True)

    @classmethod
    def create(cls, segmenter: FrozenSegmenter) -> FinalClassifierModel:
        return cls(segmenter, copy.deepcopy(segmenter.classifier()))

    @property
    def output_layer(self) -> nn.Conv2d:
        """The one trained layer (looked up, not registered twice: the state dict names it once)."""
        return self.block.get_submodule(self._output_name)

    def train(self, mode: bool = True) -> FinalClassifierModel:
        super().train(mode)
        self.block.eval()  # the frozen part's batch norms keep the checkpoint's statistics
        return self

    def forward(self, images: torch.Tensor) -> ClassifierOutput:
        with torch.no_grad():
            enc = self.segmenter.encode(images)
        return ClassifierOutput(self.block(enc.plug), enc, self.segmenter.num_classes)

    def image_logits(self, out: ClassifierOutput) -> torch.Tensor:
        """The C class logits at the image size, as the segmenter's ``decode`` upsamples."""
        return self.segmenter.to_image(out.low, out.enc)[:, : self.segmenter.num_classes]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The output layer only: everything else is the frozen checkpoint's."""
        return {f"block.{self._output_name}.{k}": v for k, v in self.output_layer.state_dict().items()}
