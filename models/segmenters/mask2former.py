"""Mask2Former (Cheng et al., "Masked-attention Mask Transformer for Universal Image Segmentation", CVPR 2022) as
a frozen mask-classification segmenter, through Hugging Face ``transformers``
(``Mask2FormerForUniversalSegmentation``).

The network predicts, for Q queries, class logits over K + 1 classes (the last: "no object") and mask logits at
a quarter of the input size. Its semantic inference (the paper's Sec. 3.3; ``post_process_semantic_segmentation``
in ``transformers``) gives per-pixel class scores

    L_k(x) = Σ_q softmax(c_q)_k · sigmoid(m_q(x)),   k = 1..K  (the no-object probability is dropped)

which ``forward`` returns, so every post-hoc score reads them like logits. We compute L at the mask resolution and
resize L (K channels) to the image, where ``transformers`` resizes the Q mask logits first: the same map up to
interpolation, at K/Q of the cost.

Weights come from ``from_pretrained`` (``tasks.checkpoints``: models do no file I/O); ``mask2former_demo`` builds a
small random network the demo profile trains closed-set itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from models.segmenters.base import FrozenSegmenter
from schemas.labels import VOID
from schemas.registries import SEGMENTERS

if TYPE_CHECKING:  # importing transformers' models takes ~4 s: only the functions that build one do
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation


@dataclass
class Queries:
    """One forward of the frozen network (all at the mask resolution, a quarter of the padded input)."""

    hidden: torch.Tensor  # B×Q×C: the last decoder layer's query embeddings (layer-normed), what both heads read
    mask_features: torch.Tensor  # B×C_m×h×w: the pixel decoder's per-pixel embeddings
    class_logits: torch.Tensor  # B×Q×(K+1) of the frozen class head
    mask_logits: torch.Tensor  # B×Q×h×w of the frozen mask embedder
    size: tuple[int, int]  # the caller's image size (H, W)
    padded: tuple[int, int]  # the size the network saw


def class_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """L (B×K×h×w) = Σ_q softmax(class)_qk · sigmoid(mask)_q over the K inlier classes (no-object dropped after
    the softmax, as Mask2Former's semantic inference does)."""
    probs = class_logits.softmax(-1)[..., :-1]
    return torch.einsum("bqk,bqhw->bkhw", probs, mask_logits.sigmoid())


def to_image(maps: torch.Tensor, q: Queries) -> torch.Tensor:
    """Mask-resolution maps (B×C×h×w) of ``q`` → the caller's image size (bilinear, the padding cropped off)."""
    maps = F.interpolate(maps, size=q.padded, mode="bilinear", align_corners=False)
    return maps[:, :, : q.size[0], : q.size[1]]


def semantic_targets(labels: torch.Tensor, num_classes: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per image, the binary mask of every class present and its id (``transformers``' ``mask_labels`` /
    ``class_labels``); void, anomaly and any id ≥ ``num_classes`` belong to no mask."""
    masks, classes = [], []
    for lab in labels:
        ids = lab.unique()
        ids = ids[ids < num_classes]
        classes.append(ids)
        masks.append((lab[None] == ids[:, None, None]).float())
    return masks, classes


def pad_labels(labels: torch.Tensor, padded: tuple[int, int]) -> torch.Tensor:
    """N×H×W labels padded with void to the network's input size."""
    h, w = labels.shape[-2:]
    return F.pad(labels, (0, padded[1] - w, 0, padded[0] - h), value=VOID)


class Mask2FormerSegmenter(FrozenSegmenter):
    """A ``Mask2FormerForUniversalSegmentation`` over the Cityscapes trainIds (``config.num_labels`` = 19)."""

    kind = "mask-classification"
    size_multiple = 32  # the Swin backbone's stride
    native_size = (512, 1024)

    def __init__(self, net: Mask2FormerForUniversalSegmentation, name: str = "mask2former"):
        super().__init__(net)
        self.name = name
        self.num_classes = net.config.num_labels

    # -- the parts a method may train a copy of ------------------------------------------------------------------
    def class_head(self) -> nn.Linear:
        """Query embedding → K + 1 class logits."""
        return self.net.class_predictor

    def mask_embedder(self) -> nn.Module:
        """Query embedding → mask embedding (an MLP); its dot product with the per-pixel embeddings is the mask."""
        return self.net.model.transformer_module.decoder.mask_predictor.mask_embedder

    def pixel_decoder(self) -> nn.Module:
        """Backbone features → multi-scale features and per-pixel embeddings (MSDeformAttn pixel decoder)."""
        return self.net.model.pixel_level_module.decoder

    def transformer_decoder(self) -> nn.Module:
        """The masked-attention transformer decoder (queries, layers, its own mask embedder)."""
        return self.net.model.transformer_module

    def queries(
        self,
        images: torch.Tensor,
        pixel_decoder: nn.Module | None = None,
        transformer_decoder: nn.Module | None = None,
        class_head: nn.Module | None = None,
        mask_embedder: nn.Module | None = None,
    ) -> Queries:
        """One forward for ``images`` (RGB in [0, 1], N×3×H×W; padded with the mean colour to a multiple of 32). A
        part given replaces the network's own (a method's trainable copy); the backbone is always the frozen one.
        ``mask_embedder`` makes the final masks only (the decoder's attention masks stay its own)."""
        x, size, padded = self.prepare(images)
        features = self.net.model.pixel_level_module.encoder(x).feature_maps
        pixels = (pixel_decoder or self.pixel_decoder())(features)
        decoded = (transformer_decoder or self.transformer_decoder())(
            multi_scale_features=pixels.multi_scale_features, mask_features=pixels.mask_features
        )
        hidden = decoded.intermediate_hidden_states[-1].transpose(0, 1)  # layer-normed, as both heads read it
        if mask_embedder is None:
            masks = decoded.masks_queries_logits[-1]
        else:
            masks = torch.einsum("bqc,bchw->bqhw", mask_embedder(hidden), pixels.mask_features)
        classes = (class_head or self.class_head())(hidden)
        return Queries(hidden, pixels.mask_features, classes, masks, size, padded)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """L_k at the image size (N×K×H×W)."""
        q = self.queries(images)
        return to_image(class_scores(q.class_logits, q.mask_logits), q)

    def supervised_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mask2Former's own loss (Hungarian matching; classification + mask BCE + dice on sampled points, with the
        auxiliary losses of every decoder layer) on one binary mask per class present."""
        x, _, padded = self.prepare(images)
        masks, classes = semantic_targets(pad_labels(labels, padded), self.num_classes)
        return self.net(pixel_values=x, mask_labels=masks, class_labels=classes).loss

    def mask_loss(self, q: Queries, labels: torch.Tensor) -> torch.Tensor:
        """Mask2Former's loss of the final layer's predictions ``q`` (a method's fine-tuned heads): cross-entropy
        ×2 (no-object ×0.1), mask BCE ×5 and dice ×5 on sampled points, after Hungarian matching to one mask per
        class present in ``labels`` (void and anomaly pixels belong to no mask)."""
        masks, classes = semantic_targets(pad_labels(labels, q.padded), self.num_classes)
        losses = self.net.criterion(
            masks_queries_logits=q.mask_logits,
            class_queries_logits=q.class_logits,
            mask_labels=masks,
            class_labels=classes,
        )
        return sum(losses[k] * self.net.weight_dict[k] for k in losses)


@SEGMENTERS.register("mask2former")
def mask2former(net: Mask2FormerForUniversalSegmentation | None = None) -> FrozenSegmenter:
    """A pretrained Mask2Former: ``checkpoint`` is a ``transformers`` model directory (``save_pretrained``) or a hub
    id in the local Hugging Face cache, e.g. ``facebook/mask2former-swin-large-cityscapes-semantic``."""
    if net is None:
        raise ValueError(
            "mask2former is loaded with from_pretrained: set its checkpoint to a transformers model directory "
            "(config.json + model.safetensors) or a hub id in the local Hugging Face cache"
        )
    return Mask2FormerSegmenter(net)


def demo_config(
    embed_dim: int = 24, hidden_dim: int = 64, num_queries: int = 30, decoder_layers: int = 3, num_classes: int = 19
) -> Mask2FormerConfig:
    """A small Mask2Former (Swin with one block per stage) for CPU training from scratch."""
    from transformers import Mask2FormerConfig, SwinConfig

    backbone = SwinConfig(
        embed_dim=embed_dim,
        depths=[1, 1, 1, 1],
        num_heads=[1, 2, 4, 8],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return Mask2FormerConfig(
        backbone_config=backbone,
        num_labels=num_classes,
        hidden_dim=hidden_dim,
        mask_feature_size=hidden_dim,
        feature_size=hidden_dim,
        num_queries=num_queries,
        encoder_layers=1,
        decoder_layers=decoder_layers,
        encoder_feedforward_dim=2 * hidden_dim,
        dim_feedforward=2 * hidden_dim,
        num_attention_heads=4,
        train_num_points=2048,
    )


@SEGMENTERS.register("mask2former_demo")
def mask2former_demo(
    embed_dim: int = 24, hidden_dim: int = 64, num_queries: int = 30, decoder_layers: int = 3
) -> FrozenSegmenter:
    """The small Mask2Former the demo profile trains itself on the demo scenes (no weights needed)."""
    from transformers import Mask2FormerForUniversalSegmentation

    config = demo_config(int(embed_dim), int(hidden_dim), int(num_queries), int(decoder_layers))
    return Mask2FormerSegmenter(Mask2FormerForUniversalSegmentation(config), name="mask2former_demo")
