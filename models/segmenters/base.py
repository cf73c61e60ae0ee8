"""The adapter every method trains against: a frozen closed-set segmenter. Two kinds share it
(``FrozenSegmenter.kind``): every segmenter maps RGB images to per-pixel class scores (``forward``, what the
post-hoc scores read), and each kind exposes what its methods need.

**Per-pixel** (``PerPixelSegmenter``: ESPNetv2, DeepLabV3+), split at the point where anomaly methods plug in:

    image ──normalize──▶ encode ──▶ deep feature (where RPL's residual block reads)
                                └─▶ plug feature (the classifier's input)  ──classify──▶ ỹ  (frozen logits)
                                    plug + residual(deep)                  ──classify──▶ ŷ  (re-decoded logits)

The wrapped network never trains: its parameters have ``requires_grad=False`` and it stays in eval mode
whatever ``.train()`` is called with, so its batch-norm statistics and its closed-set prediction ỹ are exactly
those of the checkpoint (the property RPL relies on).

**Mask-classification** (``models.segmenters.mask2former``): per-query class logits and mask logits, and the
per-pixel class scores made of them.

A method names the kind it needs (``MethodSpec.segmenter_kind``); ``check_kind`` refuses any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from schemas.labels import VOID

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Encoded:
    deep: torch.Tensor  # N×C_deep×h×w: the feature a residual block reads
    plug: torch.Tensor  # N×C_plug×h'×w': the classifier's input; a residual is added here
    size: tuple[int, int]  # the caller's image size (H, W); logits come back at this size
    padded: tuple[int, int]  # the size the network saw (a multiple of ``size_multiple``)


class SegmenterKindError(ValueError):
    """A method was given a segmenter of another kind than it needs."""


class FrozenSegmenter(nn.Module):
    """Subclasses wrap one network as ``self.net``; ``forward`` gives per-pixel class scores at the image size."""

    kind: ClassVar[str]  # "per-pixel" | "mask-classification" (schemas.train.SEGMENTER_KINDS)
    name: str = "segmenter"
    num_classes: int = 19  # closed-set classes used for scores (the Cityscapes trainIds)
    size_multiple: int = 8  # input sides are padded up to a multiple of this
    native_size: tuple[int, int] = (512, 1024)  # (H, W) the checkpoint was trained at

    def __init__(self, net: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    # -- frozen ---------------------------------------------------------------------------------------------------
    def freeze(self) -> FrozenSegmenter:
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()
        return self

    def train(self, mode: bool = True) -> FrozenSegmenter:
        super().train(mode)
        self.net.eval()  # batch-norm statistics and dropout stay those of the checkpoint
        return self

    # -- shared -----------------------------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], N×3×H×W → the network's input normalization."""
        return (images - self.mean) / self.std

    def prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """``images`` (RGB in [0, 1], N×3×H×W, any size) → (normalized input padded with the mean colour to a
        multiple of ``size_multiple``, the image size, the padded size)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected N×3×H×W RGB images, got shape {tuple(images.shape)}")
        h, w = images.shape[2:]
        m = self.size_multiple
        ph, pw = -h % m, -w % m
        x = self.normalize(images)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))  # zeros after normalization = the mean colour
        return x, (h, w), (h + ph, w + pw)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Closed-set per-pixel class scores (N×num_classes×H×W): logits ỹ, or Mask2Former's L_k."""
        raise NotImplementedError

    def supervised_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The network's own closed-set training loss on trainId ``labels`` (void = 255 ignored), computed through
        ``self.net`` in whatever mode the caller set (the demo profile's pre-training)."""
        raise NotImplementedError(f"{self.name}: no closed-set training loss")


def check_kind(segmenter: FrozenSegmenter, kind: str, who: str, source: str = "") -> None:
    """Refuse a segmenter of another kind than ``kind`` (``who``: the method asking; ``source``: its checkpoint)."""
    if segmenter.kind != kind:
        where = f" ({source})" if source else ""
        raise SegmenterKindError(
            f"method {who!r} needs a {kind} segmenter, but {segmenter.name!r}{where} is {segmenter.kind}: "
            f"configure one under `segmenters: {{{kind}: {{name: ..., checkpoint: ...}}}}` (`anomalyforge list segmenters`)"
        )


class PerPixelSegmenter(FrozenSegmenter):
    """Subclasses implement ``_encode`` and ``_classify``."""

    kind = "per-pixel"
    deep_channels: int
    plug_channels: int

    # -- to implement ---------------------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized, padded image → (deep feature, classifier input)."""
        raise NotImplementedError

    def _classify(self, plug: torch.Tensor) -> torch.Tensor:
        """Classifier input → logits at the classifier's resolution (all of the network's output channels)."""
        raise NotImplementedError

    def classifier(self) -> nn.Module:
        """The module ``_classify`` runs (classifier input → logits at the classifier's resolution); its last
        ``nn.Conv2d`` is the output layer. Methods that fine-tune the final block (PEBAL) train a copy of it."""
        raise NotImplementedError(f"{self.name}: no classifier block is exposed for fine-tuning")

    def aspp_for_init(self) -> nn.Module | None:
        """The frozen ASPP (and its 1×1 bottleneck) a residual block may copy its initial weights from."""
        return None

    # -- the interface methods use ---------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> Encoded:
        """``images``: RGB in [0, 1], N×3×H×W (any size; padded with the mean colour to a multiple)."""
        x, size, padded = self.prepare(images)
        deep, plug = self._encode(x)
        return Encoded(deep, plug, size, padded)

    def decode(self, enc: Encoded, residual: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N×num_classes×H×W) from the classifier input, plus ``residual`` when given (ŷ); without it ỹ."""
        plug = enc.plug if residual is None else enc.plug + residual
        return self.to_image(self._classify(plug), enc)[:, : self.num_classes]

    def to_image(self, logits: torch.Tensor, enc: Encoded) -> torch.Tensor:
        """Classifier-resolution logits (any number of channels) → the caller's image size, as ``decode`` does."""
        logits = F.interpolate(logits, size=enc.padded, mode="bilinear", align_corners=True)
        return logits[:, :, : enc.size[0], : enc.size[1]]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Closed-set logits ỹ."""
        return self.decode(self.encode(images))

    def supervised_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the network's full-resolution output (the demo profile's closed-set pre-training)."""
        return F.cross_entropy(self.net(self.normalize(images)), labels, ignore_index=VOID)
