"""PEBAL's model (Tian et al., "Pixel-wise Energy-biased Abstention Learning for Anomaly Segmentation on Complex
Urban Driving Scenes", ECCV 2022): the frozen segmenter's final block, copied and trained, with one more output —
the abstention channel.

As in the authors' code the copy's output layer has 19 + 1 rows: the 19 class rows copied from the pretrained
classifier (so at the start the 19 logits are exactly the frozen ones) and a Kaiming-initialised abstention row.
Everything before the final block stays frozen (the segmenter adapter's ``classifier()`` names the block); the
copied block trains with its batch norms in train mode, as in the authors' code, so at the start the copy
equals the frozen classifier in eval mode only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from models.segmenters.base import FrozenSegmenter


def last_conv(module: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent, attribute name, conv) of the last ``nn.Conv2d`` registered in ``module``."""
    name = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)][-1]
    parent_name, _, attr = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    return parent, attr, getattr(parent, attr)


def with_abstention(block: nn.Module, num_classes: int) -> nn.Module:
    """A trainable copy of ``block`` whose output layer has ``num_classes`` rows copied from it plus one
    Kaiming-normal abstention row (index ``num_classes``)."""
    block = copy.deepcopy(block)
    parent, attr, old = last_conv(block)
    new = nn.Conv2d(
        old.in_channels, num_classes + 1, old.kernel_size, old.stride, old.padding, old.dilation, old.groups,
        bias=old.bias is not None,
    )  # fmt: skip
    with torch.no_grad():
        nn.init.kaiming_normal_(new.weight)
        new.weight[:num_classes] = old.weight[:num_classes]
        if old.bias is not None:
            new.bias.zero_()
            new.bias[:num_classes] = old.bias[:num_classes]
    setattr(parent, attr, new)
    for p in block.parameters():
        p.requires_grad_(True)
    return block


@dataclass
class PEBALOutput:
    logits: torch.Tensor  # N×(C+1)×H×W: C class logits and the abstention logit
    frozen_logits: torch.Tensor  # N×C×H×W, the frozen segmenter's


class PEBALModel(nn.Module):
    def __init__(self, segmenter: FrozenSegmenter, head: nn.Module):
        super().__init__()
        self.segmenter = segmenter
        self.head = head

    @classmethod
    def create(cls, segmenter: FrozenSegmenter) -> PEBALModel:
        return cls(segmenter, with_abstention(segmenter.classifier(), segmenter.num_classes))

    def forward(self, images: torch.Tensor) -> PEBALOutput:
        with torch.no_grad():
            enc = self.segmenter.encode(images)
            frozen = self.segmenter.decode(enc)
        return PEBALOutput(self.segmenter.to_image(self.head(enc.plug), enc), frozen)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("segmenter.")}
