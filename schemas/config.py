"""Configuration of the synthesis pipeline.

One ``SynthConfig`` fully determines a shard set: same config + same seed -> byte-identical shards.
Fields that only change *how* the work runs (worker count, output paths) are excluded from
``content_hash`` so they never change the identity of a dataset.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

# Classes that overlap Cityscapes and therefore are never anomalies. The RPL/PEBAL/Meta-OoD scripts
# forgot "train"; it is here.
COCO_CITYSCAPES_OVERLAP: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "bus",
    "train",
    "truck",
    "traffic light",
    "stop sign",
)

# Real-world heights in metres (min, max) per object class; the placement samples within the range.
DEFAULT_SIZE_PRIOR: dict[str, tuple[float, float]] = {
    "cat": (0.25, 0.45),
    "dog": (0.4, 0.9),
    "horse": (1.4, 1.8),
    "cow": (1.2, 1.6),
    "sheep": (0.6, 1.0),
    "bird": (0.15, 0.4),
    "bear": (1.0, 1.6),
    "elephant": (2.5, 3.3),
    "zebra": (1.2, 1.5),
    "giraffe": (4.0, 5.5),
    "deer": (0.9, 1.3),
    "chair": (0.8, 1.0),
    "sofa": (0.8, 1.0),
    "couch": (0.8, 1.0),
    "bottle": (0.2, 0.35),
    "cup": (0.1, 0.15),
    "suitcase": (0.5, 0.8),
    "tire": (0.6, 0.8),
    "box": (0.3, 0.8),
    "rocket": (1.0, 2.0),
    "teddy bear": (0.3, 0.8),
    "potted plant": (0.4, 1.2),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DemoScenesConfig(_Strict):
    """Procedurally generated Cityscapes-format scenes (the demo profile)."""

    num_scenes: int = Field(8, ge=1)
    width: int = Field(1024, ge=64)
    height: int = Field(512, ge=32)


class ScenesConfig(_Strict):
    """What every scene source's config has. ``kind`` names a registered source (``tasks.synth.scenes``: cityscapes,
    demo, frames, acdc, bdd100k, mapillary); the source's own config class adds its fields (``root``, ...)."""

    kind: str = "demo"
    root: Path | None = None
    split: str = "train"
    limit: int | None = Field(None, ge=1, description="at most this many scenes (the first in the source's order)")
    max_unknown_label_fraction: float = Field(
        0.001,
        ge=0,
        le=1,
        description="label pixels that are no id of the label's encoding: above this share the scene is refused",
    )

    def hash_payload(self) -> dict:
        """What of this section decides the shards' bytes (``SynthConfig.content_hash``)."""
        return self.model_dump(mode="json")

    @classmethod
    def with_root(cls, section: dict, root: str) -> dict:
        """The raw ``scenes:`` section reading from ``root`` instead (the CLI's ``--scenes PATH``)."""
        return section | {"root": root}


def _scenes_config(data) -> ScenesConfig:
    from tasks.synth.scenes import scenes_config

    return scenes_config(data)


class CocoSourceConfig(_Strict):
    annotations: Path
    images: Path
    exclude_categories: list[str] = list(COCO_CITYSCAPES_OVERLAP)
    min_area: float = Field(1024.0, ge=0, description="minimum instance area in pixels")
    border_margin: int = Field(1, ge=0, description="boxes closer than this to the image border are cut")
    allow_crowd: bool = False
    limit: int | None = Field(None, ge=1)


class FilesSourceConfig(_Strict):
    """Single-object photos under ``root``.

    Class name: ``class_name`` if set, else the manifest's ``class_column`` (a TSV/CSV beside the photos),
    else the parent folder's name. A mask comes from the manifest's ``mask_column`` or a sidecar
    ``<stem>.mask.png``; photos without one are cut out by the salient-mask model.
    """

    root: Path
    patterns: list[str] = ["*.jpg", "*.jpeg", "*.JPEG", "*.png"]
    class_name: str | None = None
    manifest: Path | None = None
    file_column: str = "file"
    class_column: str = "class_name"
    mask_column: str | None = None
    limit: int | None = Field(None, ge=1)


class PatchShapeConfig(_Strict):
    """How a self-made patch anomaly is cut (SLEEG, Tu et al., AAAI 2024, Sec. 3.1): a rectangular crop of a
    scene, cut to the convex polygon around its Harris corners plus random inner points."""

    area: tuple[float, float] = Field((0.03, 0.06), description="crop area as a share of the image it is cut from")
    aspect: tuple[float, float] = Field((0.8, 1.2), description="crop width / height")
    noise_ratio: float = Field(0.1, ge=0, le=1, description="share of patches whose pixels are replaced by noise")
    max_corners: int = Field(16, ge=0, description="Harris corners of a crop that span its polygon")
    random_points: int = Field(8, ge=3, description="random points inside the crop added to the corners")

    @model_validator(mode="after")
    def _check(self) -> PatchShapeConfig:
        for name in ("area", "aspect"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be 0 < min <= max, got {(lo, hi)}")
        if self.area[1] > 1:
            raise ValueError(f"area is a share of the image area (<= 1), got {self.area}")
        return self


class PatchesConfig(PatchShapeConfig):
    """SLEEG's online patches: a library of crops of the training images (the training *crops*: 3–6 % of a
    512×1024 crop), refreshed every step, and ``per_image`` patches pasted into every image."""

    library_size: int = Field(30, ge=1, description="the patch library: a queue of this many crops")
    crops_per_image: int = Field(2, ge=1, description="crops each training image adds to the library per step")
    per_image: int = Field(10, ge=1, description="patches pasted into each training image")


class PatchesSourceConfig(PatchShapeConfig):
    """The ``patches`` object source of the synth flow: ``count`` patch objects cut from the run's scenes join
    the object bank (source ``patches``, class ``patch``) and are placed like any other object."""

    count: int = Field(64, ge=1, description="patch objects made for the bank")
    height_m: tuple[float, float] = Field((0.3, 1.2), description="real-world height range used for placement")


class MaskGateConfig(_Strict):
    """Thresholds of the mask-quality gate (every rejection names the failed test)."""

    min_pixels: int = Field(400, ge=1)
    min_area_frac: float = Field(0.02, ge=0, le=1)
    max_components: int = Field(3, ge=1, description="components larger than 1% of the mask")
    min_largest_frac: float = Field(0.85, ge=0, le=1, description="largest component / mask area")
    max_border_frac: float = Field(0.15, ge=0, le=1, description="share of the image border covered")
    min_confidence: float = Field(0.80, ge=0, le=1, description="share of soft-mask pixels < .1 or > .9")
    min_contrast: float = Field(6.0, ge=0, description="ΔE (Lab) between object and surround means")


class SaliencyConfig(_Strict):
    model: str = "u2netp"
    model_home: Path | None = Field(None, description="rembg model home (U2NET_HOME); default .cache/models")
    gate: MaskGateConfig = MaskGateConfig()


ObjectKind = Literal["static_obstacle", "dynamic_obstacle", "animal", "unconventional_vehicle", "debris", "lost_cargo"]


class PromptObject(_Strict):
    """One anomaly type of the prompt vocabulary."""

    name: str
    kind: ObjectKind
    height_m: tuple[float, float] = Field(description="real-world height range in metres, for the placement")

    @model_validator(mode="after")
    def _check(self) -> PromptObject:
        lo, hi = self.height_m
        if not 0 < lo <= hi:
            raise ValueError(f"{self.name}: height_m must be 0 < min <= max, got {self.height_m}")
        return self


class PromptVocabulary(_Strict):
    """Anomaly types x backgrounds, composed with ``template`` (see data_manifests/prompt_vocabulary.yaml)."""

    template: str = "one {object} in the {background}"
    negative_prompt: str = ""
    backgrounds: list[str] = Field(min_length=1)
    objects: list[PromptObject] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> PromptVocabulary:
        if "{object}" not in self.template:
            raise ValueError(f"template {self.template!r} has no {{object}} field")
        names = [o.name for o in self.objects]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"objects listed twice: {', '.join(dupes)}")
        return self


class DiffusionConfig(_Strict):
    """Stable Diffusion object generation (SD 1.x/2.x or SDXL through diffusers).

    ``model`` is a Hugging Face hub id (read from the local HF cache: ``cache_dir``, else ``HF_HUB_CACHE`` /
    ``HF_HOME``) or a local pipeline directory. Nothing is downloaded unless ``local_files_only`` is false.
    """

    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    cache_dir: Path | None = None
    local_files_only: bool = True
    revision: str | None = None
    vocabulary: Path | None = Field(None, description="YAML vocabulary; default: the packaged one")
    objects: list[str] | None = Field(None, description="use only these anomaly types of the vocabulary")
    backgrounds: list[str] | None = Field(None, description="use only these backgrounds")
    seeds_per_prompt: int = Field(1, ge=1, description="images per prompt (rounds of seeds)")
    new_objects: int | None = Field(
        None, ge=1, description="incremental runs: at most this many new (prompt, seed) specs, next rounds first"
    )
    steps: int = Field(25, ge=1)
    guidance: float = Field(7.5, ge=0)
    width: int = Field(512, ge=8, multiple_of=8)
    height: int = Field(512, ge=8, multiple_of=8)
    scheduler: str = Field(
        "dpmpp_2m", description="a registered scheduler: dpmpp_2m, dpmpp_2m_karras, euler_a, pipeline"
    )
    batch_size: int = Field(4, ge=1, description="images per denoising batch (one Prefect task each)")
    device: str = Field("auto", description="auto: cuda if available, else cpu")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="auto: fp16 on GPU, fp32 on CPU"
    )
    channels_last: bool = True
    compile: bool = Field(False, description="torch.compile the UNet (pays off from a few hundred images on)")

    _scheduler = field_validator("scheduler")(lambda v: registered("scheduler", v))


class ObjectBankConfig(_Strict):
    max_side: int = Field(384, ge=16, description="objects are stored downscaled to this longest side")
    objects_per_shard: int = Field(256, ge=1)
    demo_objects: bool = False
    coco: CocoSourceConfig | None = None
    diffusion: DiffusionConfig | None = None
    files: list[FilesSourceConfig] = []
    patches: PatchesSourceConfig | None = None
    exclude_classes: list[str] = Field(
        default_factory=list,
        description="classes kept out of the bank from every source, e.g. the training shards' classes when this "
        "is an evaluation split of unseen classes",
    )


class PlacementConfig(_Strict):
    drivable_classes: list[str] = ["road"]
    key_classes: list[str] = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    allow_cover_key: bool = False
    max_key_overlap: float = Field(0.02, ge=0, le=1)
    objects_per_scene: tuple[int, int] = (1, 3)
    candidates: int = Field(48, ge=1, description="candidate foot points scored per object")
    draws: int = Field(3, ge=1, description="object draws per sample before it is quarantined")
    search_stride: int = Field(4, ge=1, description="label subsampling for the candidate search")
    size_prior: dict[str, tuple[float, float]] = dict(DEFAULT_SIZE_PRIOR)
    default_height_m: tuple[float, float] = (0.4, 1.2)
    camera_height_m: float = Field(1.22, gt=0, description="used when the scene has no camera json")
    min_height_px: int = Field(16, ge=2)
    max_height_frac: float = Field(0.45, gt=0, le=1, description="of the image height")
    min_support: float = Field(0.6, ge=0, le=1, description="drivable share under the object's base")

    @model_validator(mode="after")
    def _check(self) -> PlacementConfig:
        lo, hi = self.objects_per_scene
        if not 1 <= lo <= hi:
            raise ValueError(f"objects_per_scene must be 1 <= min <= max, got {self.objects_per_scene}")
        return self


class HarmonizeConfig(_Strict):
    method: str = Field("lab", description="a registered harmonizer (tasks.synth.harmonize): lab, none, style")
    strength_l: float = Field(0.6, ge=0, le=1, description="luminance mean/std transfer strength")
    strength_ab: float = Field(0.35, ge=0, le=1, description="colour (a, b) transfer strength")
    context: float = Field(0.5, gt=0, description="surround ring width, in object heights")
    feather_px: float = Field(1.5, ge=0, description="Gaussian sigma of the alpha edge")
    poisson: bool = False
    fda_beta: float = Field(0.03, ge=0, le=0.5, description="style: low-frequency band, a share of the crop side")

    _method = field_validator("method")(lambda v: registered("harmonizer", v))


def _default_weather() -> dict[str, float]:
    from tasks.synth.weather import adverse_conditions

    return dict.fromkeys(adverse_conditions(), 1.0)


class WeatherConfig(_Strict):
    """Adverse conditions over the whole composite (``tasks/synth/weather.py``), after harmonization.

    ``mode: random``: each sample stays clear with probability ``clear``, else gets one of ``conditions`` (drawn by
    weight) at a severity drawn in ``severity`` (training shards). ``mode: every``: each of ``num_samples``
    composites is written once per condition, clear included (an evaluation split tagged by condition)."""

    mode: Literal["random", "every"] = "random"
    conditions: dict[str, float] = Field(
        default_factory=_default_weather, description="condition -> weight (mode every: those above 0, unweighted)"
    )
    clear: float = Field(0.3, ge=0, le=1, description="mode random: share of samples left clear")
    severity: tuple[float, float] = Field((0.3, 1.0), description="uniform range; (s, s) for one severity")
    options: dict[str, dict[str, float | bool | tuple[float, ...]]] = Field(
        default_factory=dict, description="per-condition effect options, e.g. {night: {glows: false}}"
    )
    focal_px_per_width: float = Field(1.105, gt=0, description="focal length when the scene has no camera file")
    max_depth_m: float = Field(1000.0, gt=0, description="depth of the sky and of the far end of the road")
    contact_sheet: tuple[float, float] = Field((0.4, 0.9), description="the two severities of weather.png")

    @model_validator(mode="after")
    def _check(self) -> WeatherConfig:
        from tasks.synth.weather import adverse_conditions, check_options

        for name in set(self.conditions) | set(self.options):
            if name not in adverse_conditions():
                raise ValueError(f"unknown weather condition {name!r}; registered: {', '.join(adverse_conditions())}")
        for name, opts in self.options.items():
            check_options(name, opts)
        if not self.conditions or any(w < 0 for w in self.conditions.values()) or not sum(self.conditions.values()):
            raise ValueError(f"weather conditions need non-negative weights, not all zero: {self.conditions}")
        lo, hi = self.severity
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"severity must be 0 <= low <= high <= 1, got {self.severity}")
        return self

    def rendered(self) -> tuple[str, ...]:
        """mode every: the conditions each composite is written in (clear first, registry order)."""
        from tasks.synth.weather import CLEAR

        return (CLEAR, *self.weighted()[0])

    def weighted(self) -> tuple[list[str], np.ndarray]:
        """mode random: the conditions (registry order, so the plan does not depend on the YAML's key order) and
        their probabilities."""
        from tasks.synth.weather import conditions

        names = [c for c in conditions() if self.conditions.get(c, 0) > 0]
        p = np.array([self.conditions[c] for c in names], np.float64)
        return names, p / p.sum()


class ShardConfig(_Strict):
    samples_per_shard: int = Field(64, ge=1)
    image_format: Literal["jpg", "png"] = "jpg"
    jpeg_quality: int = Field(95, ge=50, le=100)


class SynthConfig(_Strict):
    name: str = "synth"
    seed: int = 0
    num_samples: int = Field(32, ge=1)
    scenes: SerializeAsAny[ScenesConfig] = Field(default_factory=lambda: _scenes_config({"kind": "demo"}))
    objects: ObjectBankConfig = ObjectBankConfig(demo_objects=True)
    saliency: SaliencyConfig = SaliencyConfig()
    placement: PlacementConfig = PlacementConfig()
    harmonize: HarmonizeConfig = HarmonizeConfig()
    weather: WeatherConfig | None = Field(None, description="adverse conditions; None: every sample clear")
    shards: ShardConfig = ShardConfig()
    workers: int = Field(2, ge=1, description="parallel shard tasks; does not change the output")
    min_sample_fraction: float = Field(
        0.5, ge=0, le=1, description="a run that makes fewer than this share of num_samples fails, unpublished"
    )

    @field_validator("scenes", mode="before")
    @classmethod
    def _scenes(cls, v):
        return _scenes_config(v)

    def planned_samples(self) -> int:
        """Samples the run plans: ``num_samples``, times the conditions in weather mode ``every``."""
        every = self.weather is not None and self.weather.mode == "every"
        return self.num_samples * (len(self.weather.rendered()) if every else 1)

    def content_hash(self) -> str:
        """sha256 (16 hex) of everything that decides the bytes of the shards."""
        exclude: dict = {"workers": True, "min_sample_fraction": True}
        # fields added later leave the hash of configs that do not use them as it was
        if self.weather is None:
            exclude["weather"] = True
        if not self.objects.exclude_classes:
            exclude["objects"] = {"exclude_classes"}
        payload = self.model_dump(mode="json", exclude=exclude) | {"scenes": self.scenes.hash_payload()}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class ConfigError(ValueError):
    """A config file that does not validate: the file's name and every field's problem, one per line."""


def _validate(model: type[BaseModel], data: dict, path: str | Path):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{path}: {len(lines)} problem(s) in the config:\n  " + "\n  ".join(lines)) from None


def _read_yaml(path: str | Path, overrides: dict | None) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return _apply_overrides(data, overrides)


def _apply_overrides(data: dict, overrides: dict | None) -> dict:
    """Dotted keys (``method.lam``) set inside the nested mapping; a bare name in the way becomes ``{name: ...}``."""
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            if isinstance(node.get(p), str):
                node[p] = {"name": node[p]}
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def load_config(path: str | Path, overrides: dict | None = None, scenes: str | Path | None = None) -> SynthConfig:
    """Read a YAML config; relative paths inside it stay relative to the working directory. ``scenes`` (the CLI's
    ``--scenes``) replaces its scene source first (``tasks.synth.scenes.replace_scenes``), then ``overrides`` apply."""
    data = _read_yaml(path, None)
    if scenes is not None:
        from tasks.synth.scenes import replace_scenes

        data["scenes"] = replace_scenes(data.get("scenes") or {}, scenes)
    return _validate(SynthConfig, _apply_overrides(data, overrides), path)


# where each registry lives; imported only when a config is validated (schemas import no torch themselves)
_REGISTRIES = {
    "benchmark": ("tasks.eval.benchmarks", "BENCHMARKS"),
    "score": ("models.scores", "SCORES"),
    "segmenter": ("models.segmenters", "SEGMENTERS"),
    "scheduler": ("tasks.synth.diffusion", "SCHEDULERS"),
    "optimizer": ("tasks.train.optim", "OPTIMIZERS"),
    "harmonizer": ("tasks.synth.harmonize", "HARMONIZERS"),
}


def registered(kind: str, value: str) -> str:
    """``value`` checked against the registry of ``kind`` (the list of valid names is the registry's own)."""
    import importlib

    module, attr = _REGISTRIES[kind]
    reg = getattr(importlib.import_module(module), attr)
    if value not in reg:
        raise ValueError(f"unknown {kind} {value!r}; registered: {', '.join(reg)}")
    return value


class BenchmarkConfig(_Strict):
    """One evaluation dataset (layouts in data_manifests/benchmarks.md; ``kind`` is a registered reader)."""

    kind: str
    root: Path | str = Field(description="a folder; kind shards: a version or run dir, or an fsspec URL of a version")
    name: str | None = None
    split: str = "test"
    track: Literal["anomaly", "obstacle"] = "anomaly"  # component sizes: 500/100 or 50/10 px
    limit: int | None = Field(None, ge=1)
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="kind shards: the held-in split (sample-key hash); 0: every sample"
    )

    _kind = field_validator("kind")(lambda v: registered("benchmark", v))


class EvalConfig(_Strict):
    """Evaluation of a model + anomaly score over benchmarks (``anomalyforge eval``).

    ``model`` is read for what it is: a method checkpoint (``model.pt`` of ``anomalyforge train``: the method's
    own score by default), a segmenter state dict (with ``segmenter`` naming the network: post-hoc scores), or a
    TorchScript file mapping (B,3,H,W) normalized RGB to (B,C,h,w) logits."""

    model: Path
    datasets: list[BenchmarkConfig] = Field(min_length=1)
    score: str | None = Field(None, description="None: a method's own score, else energy; a name: that post-hoc score")
    smoothing: bool | None = Field(None, description="None: the method's setting (True for post-hoc scores)")
    segmenter: str | None = Field(None, description="network of a plain segmenter state dict (a registered name)")
    segmenter_options: dict[str, float | int] = Field(default_factory=dict)
    segmenter_checkpoint: Path | None = Field(None, description="method checkpoints: use this frozen segmenter file")
    num_classes: int = Field(19, ge=1, description="TorchScript: inlier classes are logits[:, :num_classes]")
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # TorchScript input normalization
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    input_width: int | None = Field(None, ge=8, description="run at this width (aspect kept, rounded to the net)")
    input_size: tuple[int, int] | None = Field(None, description="(W, H) the model runs at; None = native")
    device: str = "cpu"
    per_image: bool = False
    panels: int = Field(4, ge=0, description="qualitative panels per dataset")

    @field_validator("score")
    @classmethod
    def _score(cls, v):
        return None if v is None else registered("score", v)

    @field_validator("segmenter")
    @classmethod
    def _segmenter(cls, v):
        return None if v is None else registered("segmenter", v)

    @model_validator(mode="after")
    def _one_resolution(self) -> EvalConfig:
        if self.input_width is not None and self.input_size is not None:
            raise ValueError("set input_width or input_size, not both")
        return self


def load_eval_config(path: str | Path, overrides: dict | None = None) -> EvalConfig:
    return _validate(EvalConfig, _read_yaml(path, overrides), path)


# ---------------------------------------------------------------- training (anomalyforge train)


class PretrainConfig(_Strict):
    """Closed-set training of a small segmenter on the shards' inlier labels (demo profile, no weights)."""

    steps: int = Field(400, ge=1)
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(8, ge=1)


class SegmenterConfig(_Strict):
    name: str = "espnetv2"
    checkpoint: Path | None = Field(
        None, description="state dict of the frozen network; None = train a closed-set one first (demo profile)"
    )
    options: dict[str, float | int] = Field(default_factory=dict, description="constructor options, e.g. {s: 2.0}")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)

    _name = field_validator("name")(lambda v: registered("segmenter", v))


class MethodConfig(_Strict):
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

    _optimizer = field_validator("optimizer")(lambda v: registered("optimizer", v))


# hyper-parameters that were flat TrainConfig fields before methods had their own configs
_MOVED_TO_METHOD = (
    "lam", "alpha", "out_weight", "entropy_t", "tau", "max_views", "context_size",
    "residual_dim", "projector_dim", "lr", "head_lr_mult", "smoothing",
)  # fmt: skip


DEFAULT_METHOD = "eel"


def _method_config(data) -> MethodConfig:
    from models.methods import method_config

    if isinstance(data, dict) and "name" not in data:  # e.g. only --set method.lam=0.1 on a file without method:
        data = {"name": DEFAULT_METHOD} | data
    return method_config(data)


class TrainConfig(_Strict):
    """One anomaly method trained on a shard version over a frozen segmenter (``anomalyforge train``).
    ``method`` holds the method's own hyper-parameters: ``method: {name: eel, lam: 0.05, alpha: 1.0}``."""

    name: str = "train"
    method: SerializeAsAny[MethodConfig] = Field(default_factory=lambda: _method_config(DEFAULT_METHOD))
    seed: int = 0
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig)
    crop: tuple[int, int] = Field((512, 1024), description="(H, W) random training crop")
    batch_size: int = Field(8, ge=2, description="per process; >= 2: the heads' batch norms need two samples")
    epochs: float = Field(30, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (overrides epochs)")
    weight_decay: float = Field(0.0, ge=0, description="for methods whose config leaves weight_decay None")
    poly_power: float = Field(0.9, ge=0)
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
    eval_every: int = Field(500, ge=1, description="steps between evaluations (and checkpoints)")
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
        return _method_config(v)

    def content_hash(self) -> str:
        exclude = {"workers", "eval_every", "val_limit", "device"} | (
            {"min_visibility"} if self.min_visibility is None else set()
        )
        keep = self.model_dump(mode="json", exclude=exclude)  # unset new fields keep the hash of older models
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


def load_train_config(path: str | Path, overrides: dict | None = None, method: str | None = None) -> TrainConfig:
    """Read a training YAML. ``method`` (the CLI's ``--method``) keeps the file's ``method:`` section when it names
    that method and otherwise takes the method's defaults; ``overrides`` (``method.lam=...`` too) come after."""
    data = _read_yaml(path, None)
    if method is not None:
        current = data.get("method")
        current_name = current.get("name") if isinstance(current, dict) else current
        if current_name != method:
            data["method"] = {"name": method}
    return _validate(TrainConfig, _apply_overrides(data, overrides), path)


# ---------------------------------------------------------------- comparison (make compare)


class CompareConfig(_Strict):
    """``make compare``: every registered method (or ``methods``) trained on one shard version over one frozen
    segmenter, with one seed and one step budget, then evaluated, together with the frozen segmenter's post-hoc
    scores, on the held-in validation split and the configured benchmarks."""

    name: str = "compare"
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="shared settings (segmenter, seed, crop, data); `method` is set per row",
    )
    methods: list[str] | None = Field(None, description="registered methods to train; None = all of them")
    method_overrides: dict[str, dict] = Field(default_factory=dict, description="e.g. {eel: {lam: 0.1}}")
    max_steps: int = Field(100, ge=1, description="the step budget, the same for every method")
    post_hoc: list[str] = Field(
        default_factory=lambda: ["msp", "max_logit", "entropy", "energy", "max_min"],
        description="post-hoc scores of the frozen segmenter",
    )
    held_in: bool = Field(True, description="evaluate on the held-in validation split of the shards")
    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)
    input_width: int | None = Field(None, ge=8)
    input_size: tuple[int, int] | None = None
    device: str = "cpu"
    panels: int = Field(0, ge=0)

    @field_validator("post_hoc")
    @classmethod
    def _scores(cls, v):
        return [registered("score", s) for s in v]

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        if v is not None:
            from models.methods import get_method

            for name in v:
                get_method(name)
        return v


def load_compare_config(path: str | Path, overrides: dict | None = None) -> CompareConfig:
    return _validate(CompareConfig, _read_yaml(path, overrides), path)
