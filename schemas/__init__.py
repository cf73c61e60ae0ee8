"""Pydantic v2 configs and records. Every config serialises to YAML/JSON and is stored beside its output."""

from schemas.config import (
    BenchmarkConfig,
    CocoSourceConfig,
    DemoScenesConfig,
    EvalConfig,
    FilesSourceConfig,
    HarmonizeConfig,
    MaskGateConfig,
    ObjectBankConfig,
    PlacementConfig,
    SaliencyConfig,
    ScenesConfig,
    ShardConfig,
    SynthConfig,
    load_config,
    load_eval_config,
)
from schemas.records import (
    HarmonizationRecord,
    ObjectRecord,
    PlacementRecord,
    RejectRecord,
    SampleMeta,
)

__all__ = [
    "BenchmarkConfig",
    "EvalConfig",
    "load_eval_config",
    "CocoSourceConfig",
    "DemoScenesConfig",
    "FilesSourceConfig",
    "HarmonizeConfig",
    "HarmonizationRecord",
    "MaskGateConfig",
    "ObjectBankConfig",
    "ObjectRecord",
    "PlacementConfig",
    "PlacementRecord",
    "RejectRecord",
    "SaliencyConfig",
    "SampleMeta",
    "ScenesConfig",
    "ShardConfig",
    "SynthConfig",
    "load_config",
]
