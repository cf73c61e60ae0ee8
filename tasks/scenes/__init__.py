"""Scene sources, registered by name (``scenes.kind`` in a synth config): Cityscapes, the demo profile's rendered
scenes, unlabeled footage pseudo-labelled by a frozen segmenter, ACDC, BDD100K and Mapillary Vistas.

    refs, rejects = index_scenes(cfg, run_dir); scene = load_scene(refs[0])

A new source is a module here (config class + ``@SCENE_SOURCES.register(name, config=...)`` on its index function)
imported below, its layout in ``data_manifests/scenes.md``, and its tests; or a module in another package declared as
an ``anomalyforge.scene_sources`` entry point. Scenes are shared by synthesis (composites) and training (AnomalyMix's
clean scenes), so they live at the ``tasks`` root.
"""

# the built-in sources register themselves on import
from tasks.scenes import acdc, bdd100k, cityscapes, demo, frames, mapillary  # noqa: E402, F401, I001
from tasks.scenes.base import (
    CITYSCAPES_SIZE,
    Scene,
    SceneRef,
    camera_height,
    horizon_from_camera,
    load_scene,
    scene_identity,
)
from tasks.scenes.indexing import index_scenes, with_scenes

__all__ = [
    "CITYSCAPES_SIZE",
    "Scene",
    "SceneRef",
    "camera_height",
    "horizon_from_camera",
    "index_scenes",
    "load_scene",
    "scene_identity",
    "with_scenes",
]
