"""Pydantic v2 configs and records, one module per area, and the registries they check names against.

* ``synth`` (``anomalyforge synth``), ``train``, ``evaluation``, ``compare``: the configs;
* ``loading``: YAML + ``--set`` overrides -> a validated config, or one ``ConfigError`` naming the file;
* ``records``: what the pipeline writes per object, placement, sample and reject;
* ``registry`` / ``registries``: the one ``Registry`` class and every extension point;
* ``domain``: tables the configs default to.

Every config serialises to YAML/JSON and is stored beside its output. This package imports nothing of ours.
"""

from schemas.base import Strict
from schemas.compare import AblationConfig, AblationVariant, CompareConfig
from schemas.domain import COCO_CITYSCAPES_OVERLAP, DEFAULT_SIZE_PRIOR
from schemas.evaluation import BenchmarkConfig, EvalConfig, WeatheredBenchmarkConfig
from schemas.loading import (
    ConfigError,
    apply_overrides,
    load_ablation_config,
    load_compare_config,
    load_config,
    load_eval_config,
    load_train_config,
    load_weathered_config,
)
from schemas.records import (
    HarmonizationRecord,
    ObjectRecord,
    PlacementRecord,
    PseudoLabelRecord,
    RejectRecord,
    SampleMeta,
    WeatherRecord,
)
from schemas.registry import PluginError, Registry, UnknownNameError
from schemas.synth import (
    ADVERSE,
    CLEAR,
    CocoSourceConfig,
    DemoScenesConfig,
    DiffusionConfig,
    FilesSourceConfig,
    HarmonizeConfig,
    MaskGateConfig,
    ObjectBankConfig,
    PatchesConfig,
    PatchesSourceConfig,
    PatchShapeConfig,
    PlacementConfig,
    PromptObject,
    PromptVocabulary,
    SaliencyConfig,
    ScenesConfig,
    ShardConfig,
    SynthConfig,
    WeatherConfig,
    replace_scenes,
    scenes_config,
)
from schemas.train import DEFAULT_METHOD, MethodConfig, PretrainConfig, SegmenterConfig, TrainConfig, method_config

__all__ = [
    "ADVERSE",
    "AblationConfig",
    "AblationVariant",
    "CLEAR",
    "COCO_CITYSCAPES_OVERLAP",
    "DEFAULT_METHOD",
    "DEFAULT_SIZE_PRIOR",
    "BenchmarkConfig",
    "CocoSourceConfig",
    "CompareConfig",
    "ConfigError",
    "DemoScenesConfig",
    "DiffusionConfig",
    "EvalConfig",
    "FilesSourceConfig",
    "HarmonizationRecord",
    "HarmonizeConfig",
    "MaskGateConfig",
    "MethodConfig",
    "ObjectBankConfig",
    "ObjectRecord",
    "PatchShapeConfig",
    "PatchesConfig",
    "PatchesSourceConfig",
    "PlacementConfig",
    "PlacementRecord",
    "PluginError",
    "PretrainConfig",
    "PromptObject",
    "PromptVocabulary",
    "PseudoLabelRecord",
    "Registry",
    "RejectRecord",
    "SaliencyConfig",
    "SampleMeta",
    "ScenesConfig",
    "SegmenterConfig",
    "ShardConfig",
    "Strict",
    "SynthConfig",
    "TrainConfig",
    "UnknownNameError",
    "WeatherConfig",
    "WeatheredBenchmarkConfig",
    "WeatherRecord",
    "apply_overrides",
    "load_ablation_config",
    "load_compare_config",
    "load_config",
    "load_eval_config",
    "load_weathered_config",
    "load_train_config",
    "method_config",
    "replace_scenes",
    "scenes_config",
]
