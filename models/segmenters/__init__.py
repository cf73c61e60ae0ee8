"""Frozen closed-set segmenters behind one adapter (:class:`FrozenSegmenter`), created by name, of two kinds.

Per-pixel (``PerPixelSegmenter``)::

    seg = build_segmenter("espnetv2")                  # ESPNetv2 s=2.0, Cityscapes layout (20 outputs)
    load_segmenter_weights(seg, torch.load(path, weights_only=True), source=path)
    enc = seg.encode(images); y_frozen = seg.decode(enc); y_hat = seg.decode(enc, residual)

Mask-classification (``models.segmenters.mask2former``): a network ``from_pretrained`` loaded is passed in::

    seg = build_segmenter("mask2former", net=net)      # tasks.checkpoints.frozen_segmenter does both steps
    q = seg.queries(images); scores = seg(images)      # per-query class / mask logits; per-pixel L_k
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from models.segmenters.base import Encoded, FrozenSegmenter, PerPixelSegmenter, SegmenterKindError, check_kind
from models.segmenters.deeplab import DeepLabV3Plus, DeepResNetV3PlusD, DeepWV3Plus
from models.segmenters.espnetv2 import ESPNetv2Segmentation
from models.segmenters.loading import CheckpointMismatchError, load_strict, split_method_heads, unwrap_state_dict
from schemas.registries import SEGMENTERS

__all__ = [
    "SEGMENTERS",
    "CheckpointMismatchError",
    "Encoded",
    "FrozenSegmenter",
    "PerPixelSegmenter",
    "SegmenterKindError",
    "check_kind",
    "build_segmenter",
    "load_segmenter_weights",
]


class ESPNetv2Segmenter(PerPixelSegmenter):
    """ESPNetv2 (EdgeNets). The residual reads the stride-16 encoder output and is added to the input of the
    last Efficient Pyramid Pooling block (the network's classifier, stride 2). 20 outputs: 19 trainIds +
    "background"; scores use the first 19."""

    size_multiple = 16
    native_size = (512, 1024)

    def __init__(self, s: float = 2.0, num_outputs: int = 20, name: str = "espnetv2"):
        super().__init__(ESPNetv2Segmentation(num_outputs=num_outputs, s=s))
        self.name = name
        self.deep_channels = self.net.deep_channels
        self.plug_channels = self.net.plug_channels

    def _encode(self, x):
        feats = self.net.encode(x)
        return feats[3], self.net.decode_to_plug(feats)

    def _classify(self, plug):
        return self.net.classify(plug)

    def classifier(self) -> nn.Module:
        return self.net.bu_dec_l4


class DeepLabV3PlusSegmenter(PerPixelSegmenter):
    """DeepLabV3+ (NVIDIA layout). The residual reads the trunk's stride-8 output and is added to the 304-channel
    classifier input, as in RPL; its ASPP may start as a copy of the frozen one."""

    size_multiple = 8
    native_size = (1024, 2048)

    def __init__(self, net: DeepLabV3Plus, name: str):
        super().__init__(net)
        self.name = name
        self.deep_channels = net.deep_channels
        self.plug_channels = 304

    def _encode(self, x):
        return self.net.encode(x)

    def _classify(self, plug):
        return self.net.final(plug)

    def classifier(self) -> nn.Module:
        return self.net.final

    def aspp_for_init(self) -> nn.Module:
        return nn.ModuleDict({"aspp": self.net.aspp, "bot_aspp": self.net.bot_aspp})


@SEGMENTERS.register("espnetv2")
def espnetv2(s: float = 2.0, num_outputs: int = 20) -> FrozenSegmenter:
    return ESPNetv2Segmenter(s, num_outputs)


@SEGMENTERS.register("espnetv2_demo")
def espnetv2_demo(s: float = 0.5, num_outputs: int = 20) -> FrozenSegmenter:
    """The small network the demo profile trains itself on the demo scenes (no weights needed)."""
    return ESPNetv2Segmenter(s, num_outputs, name="espnetv2_demo")


@SEGMENTERS.register("deeplabv3plus_wrn38")
def deeplabv3plus_wrn38(num_classes: int = 19) -> FrozenSegmenter:
    return DeepLabV3PlusSegmenter(DeepWV3Plus(num_classes), "deeplabv3plus_wrn38")


@SEGMENTERS.register("deeplabv3plus_resnet50")
def deeplabv3plus_resnet50(num_classes: int = 19) -> FrozenSegmenter:
    return DeepLabV3PlusSegmenter(DeepResNetV3PlusD(50, num_classes), "deeplabv3plus_resnet50")


@SEGMENTERS.register("deeplabv3plus_resnet101")
def deeplabv3plus_resnet101(num_classes: int = 19) -> FrozenSegmenter:
    return DeepLabV3PlusSegmenter(DeepResNetV3PlusD(101, num_classes), "deeplabv3plus_resnet101")


# the mask-classification family registers itself after the per-pixel one (``anomalyforge list segmenters`` order)
from models.segmenters import mask2former  # noqa: E402, F401, I001


def build_segmenter(name: str, **kwargs) -> FrozenSegmenter:
    return SEGMENTERS.get(name)(**kwargs)


def load_segmenter_weights(seg: FrozenSegmenter, checkpoint: Mapping, source: str = "checkpoint") -> dict:
    """Load a checkpoint object strictly into ``seg.net``; returns the method-head tensors it also held
    (e.g. RPL's ``residual_block.*``), which are not part of the segmenter."""
    sd, heads = split_method_heads(unwrap_state_dict(checkpoint, source))
    load_strict(seg.net, sd, source)
    seg.freeze()
    return heads
