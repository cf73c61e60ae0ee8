"""Configuration of training (``anomalyforge train``): one method over a frozen segmenter."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from schemas.base import PositiveSize, Strict
from schemas.registries import METHODS, OPTIMIZERS, SEGMENTERS


class PretrainConfig(Strict):
    """Closed-set training of a small segmenter on the shards' inlier labels (demo profile, no weights)."""

    steps: int = Field(400, ge=1)
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(8, ge=1)


#: the two kinds of frozen segmenter (``models.segmenters.base``); a method names the one it needs
SegmenterKind = Literal["per-pixel", "mask-classification"]
SEGMENTER_KINDS: tuple[str, ...] = get_args(SegmenterKind)


class SegmenterConfig(Strict):
    name: str = "espnetv2"
    checkpoint: Path | None = Field(
        None,
        description="state dict of the frozen network, or a transformers model directory / hub id in the local cache "
        "(mask2former); None = train a closed-set one first (demo profile)",
    )
    options: dict[str, float | int] = Field(default_factory=dict, description="constructor options, e.g. {s: 2.0}")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)

    _name = field_validator("name")(lambda v: SEGMENTERS.check_name(v))


class MethodConfig(Strict):
    """What every method's config has. Each method's own config class (``models/methods/<name>.py``) adds its
    hyper-parameters with the paper's defaults and a ``name`` literal; ``TrainConfig.method`` picks the class
    by ``name`` from the method registry."""

    name: str
    lr: float = Field(gt=0, description="base learning rate; the paper's default in each method")
    head_lr_mult: float = Field(10.0, gt=0, description="lr multiplier of the newly initialised layers")
    smoothing: bool = Field(True, description="Gaussian 7×7, σ = 1 smoothing of the score at inference")
    optimizer: str = Field("adam", description="a registered optimizer (tasks.train.optim): adam, sgd")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only)")
    weight_decay: float | None = Field(None, ge=0, description="the method's own; None: the run's weight_decay")

    _optimizer = field_validator("optimizer")(lambda v: OPTIMIZERS.check_name(v))


# hyper-parameters that were flat TrainConfig fields before methods had their own configs
_MOVED_TO_METHOD = (
    "lam", "alpha", "out_weight", "entropy_t", "tau", "max_views", "context_size",
    "residual_dim", "projector_dim", "lr", "head_lr_mult", "smoothing",
)  # fmt: skip


DEFAULT_METHOD = "eel"


def method_config(data) -> MethodConfig:
    """A method config from its dict (``{name: eel, lam: 0.05}``), a bare name (``"eel"``: that method's defaults)
    or an instance, validated by the named method's own config class (``METHODS``). A mapping without a name (only
    ``--set method.lam=0.1`` on a file without ``method:``) is the default method's."""
    if isinstance(data, MethodConfig):
        data = data.model_dump()
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict):
        raise ValueError(f"method must be a name or a mapping with a name (one of {', '.join(METHODS)}), got {data!r}")
    data = {"name": DEFAULT_METHOD} | data
    return METHODS.config(data["name"]).model_validate(data)


class TrainConfig(Strict):
    """One anomaly method trained on a shard version over a frozen segmenter (``anomalyforge train``).
    ``method`` holds the method's own hyper-parameters: ``method: {name: eel, lam: 0.05, alpha: 1.0}``."""

    name: str = "train"
    method: SerializeAsAny[MethodConfig] = Field(default_factory=lambda: method_config(DEFAULT_METHOD))
    seed: int = Field(0, ge=0)
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig)
    segmenters: dict[SegmenterKind, SegmenterConfig] = Field(
        default_factory=dict,
        description="per segmenter kind, the frozen segmenter of the methods needing that kind, instead of `segmenter` "
        "(e.g. {mask-classification: {name: mask2former, checkpoint: ...}})",
    )
    crop: tuple[PositiveSize, PositiveSize] = Field((512, 1024), description="(H, W) random training crop")
    batch_size: int = Field(8, ge=2, description="per process; >= 2: the heads' batch norms need two samples")
    epochs: float = Field(30, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (overrides epochs)")
    weight_decay: float = Field(0.0, ge=0, description="for methods whose config leaves weight_decay None")
    poly_power: float = Field(0.9, ge=0)
    lr_warmup: float = Field(
        0.05, ge=0, lt=1, description="share of the steps over which the lr rises linearly to its value (then poly)"
    )
    # data
    shuffle_buffer: int = Field(64, ge=1)
    workers: int = Field(2, ge=0)
    val_fraction: float = Field(0.1, ge=0, lt=1, description="held-in validation split (by sample key)")
    val_limit: int | None = Field(64, ge=1, description="at most this many validation images per evaluation")
    min_visibility: float | None = Field(
        None,
        ge=0,
        description="weather shards: objects the weather made fainter than this ΔE to their surround are void",
    )
    # running
    eval_every: int = Field(500, ge=1, description="steps between evaluations (each also writes a checkpoint)")
    checkpoint_minutes: float = Field(
        5.0, gt=0, description="minutes between checkpoints (checkpoints/last.pt) besides those of the evaluations"
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    device: Literal["auto", "cpu"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _refuse_flat_method_keys(cls, data):
        if isinstance(data, dict):
            moved = [k for k in _MOVED_TO_METHOD if k in data]
            if moved:
                m = data.get("method", "eel")
                name = m.get("name", "eel") if isinstance(m, dict) else m
                example = ", ".join(f"{k}: {data[k]}" for k in moved)
                raise ValueError(
                    f"{', '.join(moved)}: method hyper-parameters now live under `method:`; write "
                    f"`method: {{name: {name}, {example}}}` (or --set method.{moved[0]}=...)"
                )
        return data

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, v):
        return method_config(v)

    def for_kind(self, kind: str) -> TrainConfig:
        """This config as a method needing a ``kind`` segmenter runs it: ``segmenters[kind]`` (when set) as
        ``segmenter``, and no ``segmenters`` left (what a trained model records is the one it ran on)."""
        return self.model_copy(update={"segmenter": self.segmenters.get(kind, self.segmenter), "segmenters": {}})

    def content_hash(self) -> str:
        exclude = (
            {"workers", "eval_every", "checkpoint_minutes", "val_limit", "device"}
            | ({"min_visibility"} if self.min_visibility is None else set())
            | ({"segmenters"} if not self.segmenters else set())
        )
        keep = self.model_dump(mode="json", exclude=exclude)  # unset new fields keep the hash of older models
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()
