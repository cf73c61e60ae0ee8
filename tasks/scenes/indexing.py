"""Indexing the configured scene source. Sources are entries of ``schemas.registries.SCENE_SOURCES``: an ``index``
function registered with the source's config class (a ``ScenesConfig`` subclass whose ``kind`` defaults to the
source's name):

    @SCENE_SOURCES.register("mydata", config=MyDataSourceConfig)
    def index_mydata(cfg: SynthConfig, run_dir: Path) -> tuple[list[SceneRef], list[RejectRecord]]: ...

``index`` lists the scenes of ``cfg.scenes`` in a stable order (what it cannot use is rejected with a reason,
never dropped silently); a source that makes files (rendered demo scenes, pseudo labels, video frames) writes
them under ``run_dir/scenes``. ``SynthConfig.scenes`` is validated with the config class of its ``kind``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from schemas import RejectRecord, SynthConfig, replace_scenes
from schemas.registries import SCENE_SOURCES
from tasks.scenes.base import SceneRef

Index = Callable[[SynthConfig, Path], tuple[list[SceneRef], list[RejectRecord]]]


def index_scenes(cfg: SynthConfig, run_dir: str | Path) -> tuple[list[SceneRef], list[RejectRecord]]:
    """The scenes of ``cfg.scenes`` through its source."""
    return SCENE_SOURCES.get(cfg.scenes.kind)(cfg, Path(run_dir))


def with_scenes(cfg: SynthConfig, scenes: str | Path) -> SynthConfig:
    """``cfg`` reading its scenes from ``scenes`` (``schemas.replace_scenes``)."""
    section = replace_scenes(cfg.scenes.model_dump(mode="json"), scenes)
    return SynthConfig.model_validate(cfg.model_dump() | {"scenes": section})
