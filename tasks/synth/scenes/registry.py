"""The scene-source registry: each source is one module with its config class and an ``index`` function.

    @register_scene_source("mydata", MyDataSourceConfig)
    def index_mydata(cfg: SynthConfig, run_dir: Path) -> tuple[list[SceneRef], list[RejectRecord]]: ...

``index`` lists the scenes of ``cfg.scenes`` in a stable order (what it cannot use is rejected with a reason,
never dropped silently); a source that makes files (rendered demo scenes, pseudo labels, video frames) writes
them under ``run_dir/scenes``. ``SynthConfig.scenes`` is validated with the config class of its ``kind``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from schemas import RejectRecord, ScenesConfig
from tasks.synth.scenes.base import SceneRef

if TYPE_CHECKING:
    from schemas import SynthConfig

Index = Callable[["SynthConfig", Path], tuple[list[SceneRef], list[RejectRecord]]]


@dataclass(frozen=True)
class SceneSource:
    name: str
    config: type[ScenesConfig]
    index: Index


SCENE_SOURCES: dict[str, SceneSource] = {}


def register_scene_source(name: str, config: type[ScenesConfig]) -> Callable[[Index], Index]:
    if config.model_fields["kind"].default != name:
        raise ValueError(f"scene source {name!r}: its config class must default kind to {name!r}")

    def deco(fn: Index) -> Index:
        SCENE_SOURCES[name] = SceneSource(name, config, fn)
        return fn

    return deco


def scenes_config(data: dict | ScenesConfig) -> ScenesConfig:
    """``data`` validated with the config class of its ``kind`` (default ``demo``)."""
    data = data.model_dump() if isinstance(data, ScenesConfig) else dict(data)
    kind = data.setdefault("kind", "demo")
    if kind not in SCENE_SOURCES:
        raise ValueError(f"unknown scene source {kind!r}; registered: {', '.join(SCENE_SOURCES)}")
    return SCENE_SOURCES[kind].config.model_validate(data)


def index_scenes(cfg: SynthConfig, run_dir: str | Path) -> tuple[list[SceneRef], list[RejectRecord]]:
    """The scenes of ``cfg.scenes`` through its source."""
    return SCENE_SOURCES[cfg.scenes.kind].index(cfg, Path(run_dir))


def replace_scenes(section: dict, scenes: str | Path) -> dict:
    """A raw ``scenes:`` section reading from ``scenes`` instead: "demo" (rendered scenes), or a root, which the
    section's own source takes (``ScenesConfig.with_root``)."""
    if str(scenes) == "demo":
        return {"kind": "demo"}
    kind = section.get("kind", "demo")
    if kind not in SCENE_SOURCES:
        raise ValueError(f"unknown scene source {kind!r}; registered: {', '.join(SCENE_SOURCES)}")
    return SCENE_SOURCES[kind].config.with_root(section, str(scenes))


def with_scenes(cfg: SynthConfig, scenes: str | Path) -> SynthConfig:
    """``cfg`` reading its scenes from ``scenes`` (``replace_scenes``)."""
    from schemas import SynthConfig

    section = replace_scenes(cfg.scenes.model_dump(mode="json"), scenes)
    return SynthConfig.model_validate(cfg.model_dump() | {"scenes": section})
