"""Scene sources, registered by name (``scenes.kind`` in a synth config): Cityscapes, the demo profile's rendered
scenes, unlabeled footage pseudo-labelled by a frozen segmenter, ACDC, BDD100K and Mapillary Vistas.

    refs, rejects = index_scenes(cfg, run_dir); scene = load_scene(refs[0])

A new source is a module here (config class + ``@register_scene_source`` on its index function) imported below,
its layout in ``data_manifests/scenes.md``, and its tests.
"""

# the built-in sources register themselves on import
from tasks.synth.scenes import acdc, bdd100k, cityscapes, demo, frames, mapillary  # noqa: E402, F401, I001
from tasks.synth.scenes.base import (
    CITYSCAPES_SIZE,
    Scene,
    SceneRef,
    camera_height,
    horizon_from_camera,
    load_scene,
    scene_identity,
)
from tasks.synth.scenes.registry import (
    SCENE_SOURCES,
    SceneSource,
    index_scenes,
    register_scene_source,
    replace_scenes,
    scenes_config,
    with_scenes,
)

__all__ = [
    "CITYSCAPES_SIZE",
    "SCENE_SOURCES",
    "Scene",
    "SceneRef",
    "SceneSource",
    "camera_height",
    "horizon_from_camera",
    "index_scenes",
    "load_scene",
    "register_scene_source",
    "replace_scenes",
    "scene_identity",
    "scenes_config",
    "with_scenes",
]
