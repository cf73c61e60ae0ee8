"""Top-K one-vs-rest fine-tuning: Zhang et al. (Bosch), "Anomaly-Aware Semantic Segmentation via Style-Aligned
OoD Augmentation". Only the frozen segmenter's final classifier (its output layer) is fine-tuned on
AnomalyMix composites with

    L_all = L_id + γ·L_ood,  L_ood = 1/(K·|N_ood|) Σ_{i∈N_ood} Σ_{k∈topK(i)} −log σ(−s·λ_{i,k})

(``models.losses.ovr_loss``), K = 5, s = 2, γ = 0.05 for WRN38 (0.01 for ResNet-101), on the logits before the
final upsampling; L_id the cross-entropy on inlier pixels. AdamW, lr 1e-5, poly 0.9, 20 epochs. The anomaly
score is a post-hoc score of the fine-tuned logits: max logit, energy or max-min logit (``score``).

AnomalyMix (``mix_probability`` 0.1): a training sample keeps its pasted objects with that probability and is
otherwise replaced by a clean scene drawn from the shard version's own scene source (``tasks.train.extras.
AnomalyMix``, read through the version's ``dataset.json``); ``mix_probability: 1`` trains on the composites.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from models.losses import ovr_loss
from models.methods.base import Inference, MethodConfig, MethodSpec, anomaly_mix_extras, classes, resize_logits
from models.methods.registry import register_method
from models.ovr import FinalClassifierModel
from models.scores import anomaly_score
from models.segmenters.base import FrozenSegmenter
from schemas.labels import VOID
from schemas.registries import SCORES


def labels_at(labels: torch.Tensor, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Labels (N×H×W) at the classifier's resolution ``size``: each low-resolution pixel takes the label of the
    image pixel it lands on when ``to_image`` upsamples (bilinear, ``align_corners=True``: low pixel i ↦ image
    row i·(H_p − 1)/(h − 1) on the padded grid); pixels of the padding are void."""
    h, w = labels.shape[-2:]
    padded_labels = F.pad(labels, (0, padded[1] - w, 0, padded[0] - h), value=VOID)

    def index(n_low: int, n_pad: int) -> torch.Tensor:
        step = (n_pad - 1) / max(n_low - 1, 1)
        return torch.round(torch.arange(n_low, device=labels.device) * step).long()

    return padded_labels[:, index(size[0], padded[0])][:, :, index(size[1], padded[1])]


class OvRConfig(MethodConfig):
    """The paper's hyper-parameters (WRN38). Only the output layer trains, at ``lr``."""

    name: Literal["ovr"] = "ovr"
    lr: float = Field(1e-5, gt=0)
    optimizer: str = "adamw"
    k: int = Field(5, ge=1, description="top-K class logits pushed down on every anomaly pixel")
    s: float = Field(2.0, gt=0, description="logit scale inside the sigmoid")
    gamma: float = Field(0.05, ge=0, description="L_all = L_id + gamma · L_ood (0.05 WRN38, 0.01 ResNet-101)")
    score: str = Field(
        "max_logit", description="the post-hoc score of the fine-tuned logits: max_logit, energy, max_min"
    )
    mix_probability: float = Field(0.1, ge=0, le=1, description="AnomalyMix: share of samples that keep their objects")
    scenes: str | None = Field(None, description="AnomalyMix's clean scenes; None: the shard version's scene source")

    @field_validator("score")
    @classmethod
    def _score(cls, v: str) -> str:
        return SCORES.check_name(v)


@register_method
class OvR(MethodSpec):
    name = "ovr"
    config = OvRConfig
    paper = "Zhang et al., Anomaly-Aware Semantic Segmentation via Style-Aligned OoD Augmentation"
    head = "the frozen segmenter's final classifier layer, fine-tuned"
    loss_summary = "CE on inliers + 0.05·top-5 one-vs-rest (softplus(2·λ)) on anomalies, AnomalyMix p = 0.1"
    score_summary = "max logit (or energy, max-min) of the fine-tuned logits, smoothed"

    def extras(self, cfg: OvRConfig) -> dict[str, dict]:
        return anomaly_mix_extras(cfg.mix_probability, cfg.scenes)

    def build(self, cfg: OvRConfig, segmenter: FrozenSegmenter, training: bool = True) -> FinalClassifierModel:
        return FinalClassifierModel.create(segmenter)

    def loss(self, cfg: OvRConfig, model, images, labels, extras, generator, progress) -> dict[str, torch.Tensor]:
        if "anomaly_mix" in extras:
            images, labels = extras["anomaly_mix"]
        out = model(images)
        low = out.low[:, : out.num_classes]
        return ovr_loss(low, labels_at(labels, out.enc.padded, low.shape[-2:]), cfg.gamma, cfg.k, cfg.s)

    def infer(self, cfg: OvRConfig, model: FinalClassifierModel, images, size) -> Inference:
        out = model(images)
        logits = resize_logits(model.image_logits(out).float(), size)
        with torch.no_grad():
            frozen = resize_logits(model.segmenter.decode(out.enc).float(), size)
        return Inference(anomaly_score(logits, cfg.score, cfg.smoothing), logits, classes(logits), classes(frozen))

    def param_groups(self, cfg: OvRConfig, model: FinalClassifierModel) -> list[dict]:
        return [{"params": list(model.output_layer.parameters()), "lr": cfg.lr}]

    def head_state(self, model: FinalClassifierModel) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in model.trainable_state_dict().items()}

    def load_head(self, model: FinalClassifierModel, state: dict[str, torch.Tensor], source: str) -> None:
        """Exactly the output layer's tensors; the rest of the block is the frozen checkpoint's copy."""
        expected = set(model.trainable_state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"{source}: head does not match the model: missing {missing}, unexpected {unexpected}")
        model.load_state_dict(state, strict=False)
