"""Fine-tuning parts of a frozen mask-classification segmenter (``models.segmenters.mask2former``): trainable copies
of the parts a method names (RbA: the class head and the mask-embedding MLP; Mask2Anomaly: the pixel and transformer
decoders with the class head); the segmenter itself, its backbone always, stays frozen and unchanged, and gives the
frozen prediction ỹ."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from models.segmenters.mask2former import Mask2FormerSegmenter, Queries, class_scores, to_image

PARTS = ("class_head", "mask_embedder", "pixel_decoder", "transformer_decoder")
#: parts read from the frozen decoder's output: the frozen prediction comes from the same forward
HEADS = {"class_head", "mask_embedder"}


@dataclass
class MaskOutput:
    queries: Queries  # with the trained parts
    scores: torch.Tensor  # their L_k at the image size (B×K×H×W)
    frozen: Queries | None = None  # the frozen network's (when asked for)
    segmentation_loss: torch.Tensor | None = None  # Mask2Former's loss of ``queries`` (when labels were given)


class MaskHeadModel(nn.Module):
    def __init__(self, segmenter: Mask2FormerSegmenter, parts: tuple[str, ...]):
        super().__init__()
        unknown = sorted(set(parts) - set(PARTS))
        if unknown or not parts:
            raise ValueError(f"trainable parts must be some of {PARTS}, got {parts}")
        self.segmenter = segmenter
        self.parts = nn.ModuleDict({name: copy.deepcopy(getattr(segmenter, name)()) for name in parts})
        for p in self.parts.parameters():
            p.requires_grad_(True)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, frozen: bool = False) -> MaskOutput:
        """The trained parts' predictions; with ``labels`` (trainIds) Mask2Former's loss of them, with ``frozen`` the
        frozen network's predictions too. (Everything a loss needs comes out of ``forward``: a data-parallel
        wrapper exposes nothing else.)"""
        seg = self.segmenter
        q = seg.queries(images, **self.parts)
        out = MaskOutput(q, self.scores(q))
        if labels is not None:
            out.segmentation_loss = seg.mask_loss(q, labels)
        if not frozen:
            return out
        with torch.no_grad():
            if set(self.parts) <= HEADS:  # same decoder: the frozen heads on the same query embeddings
                masks = torch.einsum("bqc,bchw->bqhw", seg.mask_embedder()(q.hidden), q.mask_features)
                f = Queries(q.hidden, q.mask_features, seg.class_head()(q.hidden), masks, q.size, q.padded)
            else:
                f = seg.queries(images)
        out.frozen = f
        return out

    def scores(self, q: Queries) -> torch.Tensor:
        """L_k at the image size (B×K×H×W)."""
        return to_image(class_scores(q.class_logits, q.mask_logits), q)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"parts.{k}": v for k, v in self.parts.state_dict().items()}


def confident_regions(q: Queries, classes: tuple[int, ...], confidence: float = 0.95) -> torch.Tensor:
    """Mask2Anomaly's mask refinement (its inference code): per pixel (B×1×h×w, mask resolution), the largest
    probability · sigmoid(mask) over the queries whose most likely class is one of ``classes`` with softmax
    probability > ``confidence`` (0 where there is none); the caller thresholds it."""
    conf, label = q.class_logits.softmax(-1).max(-1)  # the no-object class (index K) is never in ``classes``
    keep = torch.isin(label, torch.tensor(classes, device=label.device)) & (conf > confidence)
    region = (conf * keep)[..., None, None] * q.mask_logits.sigmoid()
    return region.amax(1, keepdim=True)
