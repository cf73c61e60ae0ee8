"""What a method is: a small spec object, found by name in one registry (``models.methods.registry``).

A spec says, for one anomaly method trained over a *frozen* segmenter:

* its config class: a pydantic model of its own hyper-parameters only, with the paper's defaults;
* ``build``: its trainable head over a ``FrozenSegmenter`` (an ``nn.Module``);
* ``loss``: its training loss on a batch (a dict of named parts; ``"loss"`` is what is minimised), told how far
  training has come (``TrainingProgress``: schedules such as SLEEG's warm-up read it);
* ``infer``: its inference score (higher = more anomalous) and closed-set predictions, at a requested size;
* ``param_groups``: which parameters train, at which learning rate;
* ``extras``: extra data the trainer provides each step (e.g. CoroCL's object-context images), by the name of
  a provider the trainer knows (``tasks.train.extras``);
* ``head_state`` / ``load_head``: what a method checkpoint stores and how it is put back.

The trainer, the evaluation, the CLI and the flows only call these; none of them knows a method's name.
Like diffusers' schedulers: every spec answers the same few calls, and its config round-trips as JSON.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from models.segmenters.base import FrozenSegmenter
from schemas import MethodConfig


@dataclass(frozen=True)
class TrainingProgress:
    """Where a training step stands: ``step`` (0-based, the step being computed) of ``total``."""

    step: int
    total: int

    @property
    def fraction(self) -> float:
        """The share of training done before this step, in [0, 1)."""
        return self.step / max(self.total, 1)


@dataclass
class Inference:
    """A method's (or a post-hoc baseline's) output for a batch, at the requested size."""

    score: torch.Tensor  # B×H×W, higher = more anomalous
    logits: torch.Tensor  # B×C×H×W, the logits the score was computed from (C inlier classes)
    pred: torch.Tensor | None  # B×H×W long, the scored model's closed-set prediction; None: classes(logits)
    frozen_pred: torch.Tensor | None = None  # B×H×W long, the frozen segmenter's prediction (methods only)
    scores: dict[str, torch.Tensor] | None = None  # several scores of one forward, by name (``score`` the first)


def classes(logits: torch.Tensor) -> torch.Tensor:
    """B×H×W closed-set prediction of B×C×H×W logits: ``argmax`` over C, the first of ties, as ``torch.max``'s
    indices (4× faster than ``argmax`` over the strided class axis on a CPU)."""
    return logits.max(dim=1).indices


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of B×C×h×w logits to ``size`` (H, W); a no-op at that size already."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def anomaly_mix_extras(probability: float, scenes: str | None) -> dict[str, dict]:
    """The ``extras`` of a method trained on AnomalyMix (``tasks.train.extras.AnomalyMix``): a sample keeps its
    pasted objects with ``probability`` and is otherwise a clean scene of ``scenes`` (None: the version's own);
    none at probability 1 (every sample keeps its objects)."""
    return {} if probability >= 1 else {"anomaly_mix": {"probability": probability, "scenes": scenes}}


def load_state_strictly(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, optional: tuple[str, ...] = ("segmenter.",)
) -> None:
    """Load a head's ``state`` into ``model``: keys under the ``optional`` prefixes (the frozen segmenter, parts
    used only in training) may be absent; any other mismatch is an error naming ``source``."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(optional)]
    if missing or unexpected:
        raise ValueError(f"{source}: head does not match the model: missing {missing}, unexpected {unexpected}")


class MethodSpec(ABC):
    """Subclass, set the class attributes, implement the abstract calls, and decorate with
    ``@register_method``. Documentation attributes feed the README's method table and ``anomalyforge methods``."""

    name: ClassVar[str]
    config: ClassVar[type[MethodConfig]]
    paper: ClassVar[str]  # "Authors, Title, Venue year"
    head: ClassVar[str]  # one line: what trains
    loss_summary: ClassVar[str]  # one line: the loss
    score_summary: ClassVar[str]  # one line: the inference score
    segmenter_kind: ClassVar[str] = "per-pixel"  # the kind of frozen segmenter it trains over (SEGMENTER_KINDS)

    def default_config(self) -> MethodConfig:
        return self.config(name=self.name)

    def extras(self, cfg: MethodConfig) -> dict[str, dict]:
        """Extra per-step data: {provider name: provider options}. None by default."""
        return {}

    @abstractmethod
    def build(self, cfg: MethodConfig, segmenter: FrozenSegmenter, training: bool = True) -> nn.Module:
        """The model: the frozen ``segmenter`` plus this method's trainable head. ``training=False`` leaves out
        what only training uses (e.g. a contrastive projector)."""

    @abstractmethod
    def loss(
        self,
        cfg: MethodConfig,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        extras: dict,
        generator: torch.Generator,
        progress: TrainingProgress,
    ) -> dict[str, torch.Tensor]:
        """Named loss parts on a batch (images RGB in [0, 1], labels in the shard convention); ``"loss"`` is
        the total that is minimised. ``extras``: this step's data from the providers ``extras`` asked for;
        ``generator`` draws any sampling the loss does (seeded by the trainer); ``progress``: this step of all."""

    @abstractmethod
    def infer(self, cfg: MethodConfig, model: nn.Module, images: torch.Tensor, size: tuple[int, int]) -> Inference:
        """Score and predictions at ``size`` (H, W) for RGB images in [0, 1] (any size the network takes)."""

    @abstractmethod
    def param_groups(self, cfg: MethodConfig, model: nn.Module) -> list[dict]:
        """Optimizer parameter groups, each with its ``lr``."""

    def head_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors a method checkpoint stores (never the frozen segmenter's); by default the model's
        ``trainable_state_dict()``."""
        return {k: v.detach().cpu() for k, v in model.trainable_state_dict().items()}

    def load_head(self, model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
        """Put ``head_state``'s tensors back (strictly: a mismatch is an error naming ``source``)."""
        load_state_strictly(model, state, source)

    def describe(self) -> dict[str, str]:
        return {
            "name": self.name,
            "paper": self.paper,
            "head": self.head,
            "loss": self.loss_summary,
            "score": self.score_summary,
            "segmenter": self.segmenter_kind,
        }
