"""Configuration of the synthesis pipeline (``anomalyforge synth``).

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
from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator

from schemas.base import Strict
from schemas.domain import COCO_CITYSCAPES_OVERLAP, DEFAULT_SIZE_PRIOR
from schemas.registries import HARMONIZERS, OBJECT_SOURCES, SCENE_SOURCES, SCHEDULERS, WEATHER

#: the condition of a sample no effect was drawn over (no entry of ``WEATHER``)
CLEAR = "clear"
#: not a condition: the group of every condition but clear, in evaluation reports
ADVERSE = "adverse"


class DemoScenesConfig(Strict):
    """Procedurally generated Cityscapes-format scenes (the demo profile)."""

    num_scenes: int = Field(8, ge=1)
    width: int = Field(1024, ge=64)
    height: int = Field(512, ge=32)


class ScenesConfig(Strict):
    """What every scene source's config has. ``kind`` names a registered source (``tasks.scenes``: cityscapes,
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


def scenes_config(data: dict | ScenesConfig) -> ScenesConfig:
    """``data`` validated with the config class of its ``kind`` (default ``demo``) in ``SCENE_SOURCES``."""
    data = data.model_dump() if isinstance(data, ScenesConfig) else dict(data)
    kind = data.setdefault("kind", "demo")
    return SCENE_SOURCES.config(kind).model_validate(data)


def replace_scenes(section: dict, scenes: str | Path) -> dict:
    """A raw ``scenes:`` section reading from ``scenes`` instead (the CLI's ``--scenes``): "demo" (rendered scenes),
    or a root, which the section's own source takes (``ScenesConfig.with_root``)."""
    if str(scenes) == "demo":
        return {"kind": "demo"}
    return SCENE_SOURCES.config(section.get("kind", "demo")).with_root(section, str(scenes))


class CocoSourceConfig(Strict):
    annotations: Path
    images: Path
    exclude_categories: list[str] = list(COCO_CITYSCAPES_OVERLAP)
    min_area: float = Field(1024.0, ge=0, description="minimum instance area in pixels")
    border_margin: int = Field(1, ge=0, description="boxes closer than this to the image border are cut")
    allow_crowd: bool = False
    limit: int | None = Field(None, ge=1)


class FilesSourceConfig(Strict):
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


class PatchShapeConfig(Strict):
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


class MaskGateConfig(Strict):
    """Thresholds of the mask-quality gate (every rejection names the failed test)."""

    min_pixels: int = Field(400, ge=1)
    min_area_frac: float = Field(0.02, ge=0, le=1)
    max_components: int = Field(3, ge=1, description="components larger than 1% of the mask")
    min_largest_frac: float = Field(0.85, ge=0, le=1, description="largest component / mask area")
    max_border_frac: float = Field(0.15, ge=0, le=1, description="share of the image border covered")
    min_confidence: float = Field(0.80, ge=0, le=1, description="share of soft-mask pixels < .1 or > .9")
    min_contrast: float = Field(6.0, ge=0, description="ΔE (Lab) between object and surround means")


class SaliencyConfig(Strict):
    model: str = "u2netp"
    model_home: Path | None = Field(None, description="rembg model home (U2NET_HOME); default .cache/models")
    gate: MaskGateConfig = MaskGateConfig()


ObjectKind = Literal["static_obstacle", "dynamic_obstacle", "animal", "unconventional_vehicle", "debris", "lost_cargo"]


class PromptObject(Strict):
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


class PromptVocabulary(Strict):
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


class DiffusionConfig(Strict):
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

    _scheduler = field_validator("scheduler")(lambda v: SCHEDULERS.check_name(v))


class ObjectBankConfig(Strict):
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
    sources: dict[str, dict] = Field(
        default_factory=dict,
        description="plug-in object sources (OBJECT_SOURCES) by name -> their config; built-ins have fields above",
    )

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: dict[str, dict]) -> dict[str, dict]:
        out = {}
        for name, section in v.items():
            config = OBJECT_SOURCES.config(name)
            try:
                out[name] = section if config is None else config.model_validate(section).model_dump(mode="json")
            except ValidationError as e:  # name the source: pydantic would report the plug-in's fields bare
                problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
                raise ValueError(f"object source {name!r}: {problems}") from None
        return out


class PlacementConfig(Strict):
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


class HarmonizeConfig(Strict):
    method: str = Field("lab", description="a registered harmonizer (tasks.synth.harmonize): lab, none, style")
    strength_l: float = Field(0.6, ge=0, le=1, description="luminance mean/std transfer strength")
    strength_ab: float = Field(0.35, ge=0, le=1, description="colour (a, b) transfer strength")
    context: float = Field(0.5, gt=0, description="surround ring width, in object heights")
    feather_px: float = Field(1.5, ge=0, description="Gaussian sigma of the alpha edge")
    poisson: bool = False
    fda_beta: float = Field(0.03, ge=0, le=0.5, description="style: low-frequency band, a share of the crop side")

    _method = field_validator("method")(lambda v: HARMONIZERS.check_name(v))


def _default_weather() -> dict[str, float]:
    return dict.fromkeys((n for n in WEATHER.names() if getattr(WEATHER.get(n), "levels", None) is None), 1.0)


class WeatherConfig(Strict):
    """Adverse conditions over the whole composite (``tasks/weather.py``), after harmonization.

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
        for name in sorted(set(self.conditions) | set(self.options)):
            WEATHER.check_name(name)
            if getattr(WEATHER.get(name), "levels", None) is not None and self.conditions.get(name, 0) > 0:
                raise ValueError(
                    f"condition {name} has severity levels {list(WEATHER.get(name).levels)}, not [0, 1]: it weathers "
                    "benchmarks (anomalyforge weather-benchmark), not synthesis"
                )
        for name, opts in self.options.items():
            WEATHER.get(name).check_options(opts)
        if not self.conditions or any(w < 0 for w in self.conditions.values()) or not sum(self.conditions.values()):
            raise ValueError(f"weather conditions need non-negative weights, not all zero: {self.conditions}")
        lo, hi = self.severity
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"severity must be 0 <= low <= high <= 1, got {self.severity}")
        return self

    def rendered(self) -> tuple[str, ...]:
        """mode every: the conditions each composite is written in (clear first, registry order)."""
        return (CLEAR, *self.weighted()[0])

    def weighted(self) -> tuple[list[str], np.ndarray]:
        """mode random: the conditions (registry order, so the plan does not depend on the YAML's key order) and
        their probabilities."""
        names = [c for c in WEATHER.names() if self.conditions.get(c, 0) > 0]
        p = np.array([self.conditions[c] for c in names], np.float64)
        return names, p / p.sum()


class ShardConfig(Strict):
    samples_per_shard: int = Field(64, ge=1)
    image_format: Literal["jpg", "png"] = "jpg"
    jpeg_quality: int = Field(95, ge=50, le=100)


class SynthConfig(Strict):
    name: str = "synth"
    seed: int = 0
    num_samples: int = Field(32, ge=1)
    scenes: SerializeAsAny[ScenesConfig] = Field(default_factory=lambda: scenes_config({"kind": "demo"}))
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
        return scenes_config(v)

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
        unused = {k for k in ("exclude_classes", "sources") if not getattr(self.objects, k)}
        if unused:
            exclude["objects"] = unused
        payload = self.model_dump(mode="json", exclude=exclude) | {"scenes": self.scenes.hash_payload()}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
