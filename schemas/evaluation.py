"""Configuration of evaluation (``anomalyforge eval``): a model, a score, benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveFloat, field_validator, model_validator

from schemas.base import FileName, PositiveSize, Strict
from schemas.registries import BENCHMARKS, SCORES, SEGMENTERS


class BenchmarkConfig(Strict):
    """One evaluation dataset (layouts in data_manifests/benchmarks.md; ``kind`` is a registered reader)."""

    kind: str
    root: Path | str = Field(description="a folder; kind shards: a version or run dir, or an fsspec URL of a version")
    name: FileName | None = Field(None, description="the report's name of it (also a file name); None: the root's")
    split: FileName = Field("test", description="the split folder of layouts that have one")
    track: Literal["anomaly", "obstacle"] = "anomaly"  # component sizes: 500/100 or 50/10 px
    limit: int | None = Field(None, ge=1)
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="kind shards: the held-in split (sample-key hash); 0: every sample"
    )

    _kind = field_validator("kind")(lambda v: BENCHMARKS.check_name(v))


class EvalConfig(Strict):
    """Evaluation of a model + anomaly score over benchmarks (``anomalyforge eval``).

    ``model`` is read for what it is: a method checkpoint (``model.pt`` of ``anomalyforge train``: the method's
    own score by default), a segmenter state dict or transformers model directory (with ``segmenter`` naming the
    network: post-hoc scores), or a
    TorchScript file mapping (B,3,H,W) normalized RGB to (B,C,h,w) logits."""

    model: Path
    datasets: list[BenchmarkConfig] = Field(min_length=1)
    score: list[str] | None = Field(
        None,
        description="post-hoc scores, all from one forward (a list, or names joined by commas); None: a method's own "
        "score, else energy. A method is scored by its own score and these",
    )
    smoothing: bool | None = Field(None, description="None: the method's setting (True for post-hoc scores)")
    segmenter: str | None = Field(None, description="network of a plain segmenter state dict (a registered name)")
    segmenter_options: dict[str, float | int] = Field(default_factory=dict)
    segmenter_checkpoint: Path | None = Field(None, description="method checkpoints: use this frozen segmenter file")
    method_options: dict[str, Any] = Field(
        default_factory=dict,
        description="method checkpoints: inference options over its config's, e.g. {refine: false}",
    )
    num_classes: int = Field(19, ge=1, description="TorchScript: inlier classes are logits[:, :num_classes]")
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # TorchScript input normalization
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.229, 0.224, 0.225)
    input_width: int | None = Field(None, ge=8, description="run at this width (aspect kept, rounded to the net)")
    input_size: tuple[PositiveSize, PositiveSize] | None = Field(
        None, description="(W, H) the model runs at; None = native"
    )
    device: str = "cpu"
    per_image: bool = False
    panels: int = Field(4, ge=0, description="qualitative panels per dataset")
    batch_size: int = Field(1, ge=1, description="images of one size per forward (after input_width / input_size)")

    @field_validator("score", mode="before")
    @classmethod
    def _score(cls, v):
        if v is None:
            return None
        names = [n.strip() for n in v.split(",")] if isinstance(v, str) else v
        if not isinstance(names, list) or not names:
            raise ValueError("a score name, names joined by commas, or a list of names")
        names = [SCORES.check_name(n) for n in names]
        if len(set(names)) != len(names):
            raise ValueError(f"a score is named twice: {', '.join(names)}")
        return names

    @field_validator("segmenter")
    @classmethod
    def _segmenter(cls, v):
        return None if v is None else SEGMENTERS.check_name(v)

    @model_validator(mode="after")
    def _one_resolution(self) -> EvalConfig:
        if self.input_width is not None and self.input_size is not None:
            raise ValueError("set input_width or input_size, not both")
        return self
