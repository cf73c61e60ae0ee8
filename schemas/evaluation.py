"""Configuration of evaluation (``anomalyforge eval``): a model, a score, benchmarks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveFloat, field_validator, model_validator

from schemas.base import FileName, PositiveSize, Strict
from schemas.registries import BENCHMARKS, SCORES, SEGMENTERS, WEATHER
from schemas.train import SegmenterConfig


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
    bootstrap: int = Field(
        1000, ge=0, description="image-level bootstrap resamples for the 95 % intervals of AUROC, AP, FPR95 (0: none)"
    )

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


def _default_severities() -> dict[str, list[float]]:
    return {"weather": [0.33, 0.67, 1.0], "corruption": [1, 3, 5]}


class WeatheredBenchmarkConfig(Strict):
    """A real benchmark rendered under adverse conditions (``anomalyforge weather-benchmark``): every image of
    ``source`` in every condition of ``families`` (or the listed ``conditions``) at each of its family's
    ``severities``, labels untouched, written to ``out`` in the ``folder`` layout (``manifest.csv`` with a
    ``condition`` and a ``severity`` column). The weather effects' scene layout (ground, sky, horizon) comes from
    the frozen ``segmenter``'s pseudo labels."""

    source: BenchmarkConfig
    out: Path = Field(description="the weathered benchmark's folder (manifest.csv, images/, labels/, sheet_*.png)")
    segmenter: SegmenterConfig = Field(description="the frozen network that labels the scenes: {name, checkpoint}")
    width: int | None = Field(None, ge=32, description="the segmenter's working width; None: its native width")
    threshold: float = Field(
        0.5, ge=0, le=1, description="pseudo labels: softmax confidence below which a pixel is void"
    )
    families: list[str] = Field(["weather", "corruption"], min_length=1, description="condition families rendered")
    conditions: list[str] | None = Field(None, description="these conditions only; None: every one of `families`")
    severities: dict[str, list[float]] = Field(
        default_factory=_default_severities, description="per family: [0, 1] for weather, levels 1-5 for corruption"
    )
    options: dict[str, dict[str, float | bool | tuple[float, ...]]] = Field(
        default_factory=dict, description="per-condition effect options, e.g. {night: {glows: false}}"
    )
    drivable_classes: list[str] = ["road"]
    camera_height_m: float = Field(1.22, gt=0)
    focal_px_per_width: float = Field(1.105, gt=0)
    max_depth_m: float = Field(1000.0, gt=0)
    image_format: Literal["png", "jpg"] = Field("png", description="png: lossless; jpg: ~5x smaller on disk")
    jpeg_quality: int = Field(95, ge=50, le=100)
    seed: int = 0
    sheet_image: int = Field(0, ge=0, description="the source image shown in every condition in sheet_<family>.png")
    device: str = "cpu"

    @model_validator(mode="after")
    def _check(self) -> WeatheredBenchmarkConfig:
        if self.source.kind == "shards":
            raise ValueError("source: shards are synthetic and weathered by synthesis (weather:); give a benchmark")
        if self.segmenter.checkpoint is None:
            raise ValueError("segmenter.checkpoint: the frozen network that labels the scenes needs its weights")
        known = {getattr(WEATHER.get(n), "family", "weather") for n in WEATHER.names()}
        for fam in self.families:
            if fam not in known:
                raise ValueError(f"families: unknown family {fam!r}; registered: {', '.join(sorted(known))}")
        for name in (self.conditions or []) + list(self.options):
            WEATHER.check_name(name)
        for name, opts in self.options.items():
            WEATHER.get(name).check_options(opts)
        for fam in self.families:
            levels = self.family_levels(fam)
            sev = self.severities.get(fam)
            if not sev:
                raise ValueError(f"severities: no severities for family {fam!r}")
            bad = [s for s in sev if (s not in levels if levels else not 0 <= s <= 1)]
            if bad:
                allowed = f"one of {list(levels)}" if levels else "in [0, 1]"
                raise ValueError(f"severities.{fam}: {bad} not {allowed}")
        return self

    def content_hash(self) -> str:
        """sha256 (16 hex) of everything that decides the weathered files (not the device, not the source's limit:
        more images of the same benchmark extend the same copy)."""
        data = self.model_dump(mode="json", exclude={"device": True, "source": {"limit"}})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    @staticmethod
    def family_levels(family: str) -> tuple[int, ...] | None:
        for n in WEATHER.names():
            e = WEATHER.get(n)
            if getattr(e, "family", "weather") == family:
                return getattr(e, "levels", None)
        return None

    def rendered(self) -> list[tuple[str, str, list[float]]]:
        """(condition, family, severities) of every condition rendered, in registry order."""
        out = []
        for n in WEATHER.names():
            fam = getattr(WEATHER.get(n), "family", "weather")
            if fam in self.families and (self.conditions is None or n in self.conditions):
                levels = getattr(WEATHER.get(n), "levels", None)
                out.append((n, fam, [int(s) if levels else float(s) for s in self.severities[fam]]))
        return out
