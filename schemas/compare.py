"""Configuration of ``make compare``: every method, one budget, one table."""

from __future__ import annotations

from pydantic import Field, field_validator

from schemas.base import PositiveSize, Strict
from schemas.evaluation import BenchmarkConfig
from schemas.registries import METHODS, SCORES
from schemas.train import SegmenterKind, TrainConfig

POST_HOC = {
    "per-pixel": ["msp", "max_logit", "entropy", "energy", "max_min"],
    "mask-classification": ["rba", "m2a"],
}


class CompareConfig(Strict):
    """``make compare``: every registered method (or ``methods``) trained on one shard version over the frozen
    segmenter of the kind it needs (``train.segmenter``, or ``train.segmenters[kind]``: per-pixel rows on ESPNetv2,
    mask-classification rows on Mask2Former), with one seed and one step budget, then evaluated, together with each
    frozen segmenter's post-hoc scores, on the held-in validation split and the configured benchmarks."""

    name: str = "compare"
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="shared settings (segmenter and segmenters per kind, seed, crop, data); `method` is set per row",
    )
    methods: list[str] | None = Field(None, description="registered methods to train; None = all of them")
    method_overrides: dict[str, dict] = Field(default_factory=dict, description="e.g. {eel: {lam: 0.1}}")
    max_steps: int = Field(100, ge=1, description="the step budget, the same for every method")
    post_hoc: dict[SegmenterKind, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in POST_HOC.items()},
        description="post-hoc scores of each frozen segmenter, by its kind (a list: the same for every kind)",
    )
    held_in: bool = Field(True, description="evaluate on the held-in validation split of the shards")
    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)
    input_width: int | None = Field(None, ge=8)
    input_size: tuple[PositiveSize, PositiveSize] | None = Field(None, description="(W, H); None = native")
    device: str = "cpu"
    panels: int = Field(0, ge=0)
    batch_size: int = Field(1, ge=1, description="evaluation: images of one size per forward")

    @field_validator("post_hoc", mode="before")
    @classmethod
    def _scores(cls, v):
        if isinstance(v, list | tuple):
            v = dict.fromkeys(POST_HOC, list(v))
        return {kind: [SCORES.check_name(s) for s in scores] for kind, scores in v.items()}

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        for name in v or []:
            METHODS.check_name(name)
        return v
