"""BDD100K semantic segmentation (the 10k images), whose masks are already Cityscapes trainIds (255 void):

``{root}/images/10k/{split}/{name}.jpg`` with ``{root}/labels/sem_seg/masks/{split}/{name}.png``
(``data_manifests/scenes.md``). ``split``: train or val (test has no labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from schemas import RejectRecord, ScenesConfig, SynthConfig
from schemas.registries import SCENE_SOURCES
from tasks.scenes.base import SceneRef, list_images, pair_labels


class Bdd100kSourceConfig(ScenesConfig):
    kind: Literal["bdd100k"] = "bdd100k"
    root: Path


@SCENE_SOURCES.register("bdd100k", config=Bdd100kSourceConfig)
def index_bdd100k(cfg: SynthConfig, run_dir: Path) -> tuple[list[SceneRef], list[RejectRecord]]:
    sc = cfg.scenes
    images = list_images(sc.root / "images" / "10k" / sc.split, "*.jpg", "BDD100K images")
    masks = sc.root / "labels" / "sem_seg" / "masks" / sc.split
    return pair_labels(
        images, lambda p: (masks / f"{p.stem}.png", "labelTrainIds"), lambda p: f"bdd100k_{p.stem}", sc.limit
    )
