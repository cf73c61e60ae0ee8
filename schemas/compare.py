"""Configuration of ``make compare``: every method, one budget, one table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, PositiveFloat, field_validator

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
    bootstrap: int = Field(1000, ge=0, description="image-level bootstrap resamples of the 95 % intervals (0: none)")
    seeds: int = Field(
        1, ge=1, description="train every method with this many seeds (train.seed, +1, ...); rows give mean ± std"
    )
    lr_sweep: list[PositiveFloat] = Field(
        default_factory=list,
        description="multipliers of each method's lr tried in short runs (sweep_steps) before its training; the one "
        "with the best held-in AP (the shards' validation split, never a benchmark) trains the full budget. "
        "Empty: each method's configured lr",
    )
    sweep_steps: int | None = Field(None, ge=1, description="steps of each sweep run; None: a quarter of max_steps")
    sweep_extend: int = Field(
        1,
        ge=0,
        description="when the best multiplier is the largest (smallest) tried, up to this many more runs beyond it, "
        "each one step of the grid's own ratio further: a sweep whose best is at its edge has not found the best",
    )
    same_as_frozen_margin: float = Field(
        1.0,
        ge=0,
        description="AP points: a trained row whose paired 95 % interval of AP minus a post-hoc score's stays within "
        "± this on every dataset is flagged as not trained enough",
    )

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


class AblationVariant(Strict):
    """One arm of an ablation: overrides (dotted keys, as ``--set`` takes them) of the synthesis config and of the
    comparison config; an empty variant is the configs as they are."""

    synth: dict[str, Any] = Field(default_factory=dict, description="e.g. {harmonize.method: none}")
    compare: dict[str, Any] = Field(default_factory=dict, description="e.g. {train.crop: [384, 768]}")


class AblationConfig(Strict):
    """``anomalyforge ablate`` / ``make ablation STUDY=...``: shard versions differing in one synthesis (or training)
    choice, each trained and scored by the comparison config, in one table with intervals and the difference of
    each arm to the first."""

    name: str = "ablation"
    synth_config: Path = Field(description="the synthesis config every arm starts from")
    compare_config: Path = Field(description="the comparison config every arm is trained and scored with")
    run_dir: Path = Field(
        description="arm <label> of study <study> synthesizes into <run_dir>/<study>/<label>; an arm without synthesis "
        "overrides into <run_dir>/default, shared by every study"
    )
    studies: dict[str, dict[str, AblationVariant]] = Field(
        description="study -> arm label -> overrides; the first arm is the reference the others are compared to"
    )

    @field_validator("studies")
    @classmethod
    def _two_arms(cls, v):
        for study, arms in v.items():
            if len(arms) < 2:
                raise ValueError(f"study {study!r} has {len(arms)} arm; an ablation compares at least two")
        return v

    def arm_run_dir(self, study: str, label: str) -> Path:
        """Where the arm's shards are made: ``<run_dir>/default`` for an arm without synthesis overrides (the shipped
        synthesis, made once for every study and every arm that only changes training), else
        ``<run_dir>/<study>/<label>``."""
        return self.run_dir / "default" if not self.studies[study][label].synth else self.run_dir / study / label

    def arm_compare_dir(self, study: str, label: str, out_dir: Path) -> Path:
        """Where the arm is trained and scored: ``<run_dir>/default/compare`` for an arm without any override (its
        trained heads are reused by every study whose comparison config matches), else ``<out_dir>/<label>``."""
        arm = self.studies[study][label]
        return self.run_dir / "default" / "compare" if not (arm.synth or arm.compare) else out_dir / label
