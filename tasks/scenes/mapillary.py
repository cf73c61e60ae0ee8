"""Mapillary Vistas v1.2, read in its own layout (``data_manifests/scenes.md``):

``{root}/{split}/images/{name}.jpg`` with ``{root}/{split}/labels/{name}.png`` (8-bit class indices 0-65,
usually a palette PNG), mapped to Cityscapes trainIds by the table in ``data_manifests/mapillary_vistas.yaml``
(void for every class Cityscapes does not train). Vistas frames come from many cameras at up to 4000+ pixels
wide: ``width`` resizes them on load (image by area, label by nearest) with the aspect ratio kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import Field

from data_manifests import MANIFEST_DIR
from schemas import RejectRecord, ScenesConfig, SynthConfig
from schemas.registries import LABEL_ENCODINGS, SCENE_SOURCES
from tasks.imageio import BadInputError, image_size
from tasks.labels import VOID, LabelEncoding, train_id
from tasks.scenes.base import SceneRef, list_images, pair_labels

TABLE = MANIFEST_DIR / "mapillary_vistas.yaml"
ENCODING = "mapillary_v1.2"


def _encoding() -> LabelEncoding:
    classes = yaml.safe_load(TABLE.read_text())["classes"]
    if [c["id"] for c in classes] != list(range(len(classes))):
        raise ValueError(f"{TABLE}: class ids must run 0..{len(classes) - 1} in order")
    lut = np.full(256, VOID, np.uint8)
    for c in classes:
        if c["cityscapes"] is not None:
            lut[c["id"]] = train_id(c["cityscapes"])
    return LabelEncoding(ENCODING, lut, frozenset(range(len(classes))), f"Mapillary Vistas v1.2 ({TABLE.name})")


_VISTAS = _encoding()
LABEL_ENCODINGS.register(_VISTAS.name, _VISTAS)


class MapillarySourceConfig(ScenesConfig):
    kind: Literal["mapillary"] = "mapillary"
    root: Path
    split: str = "training"
    width: int | None = Field(2048, ge=32, description="resize frames to this width on load; None: as stored")


@SCENE_SOURCES.register("mapillary", config=MapillarySourceConfig)
def index_mapillary(cfg: SynthConfig, run_dir: Path) -> tuple[list[SceneRef], list[RejectRecord]]:
    sc = cfg.scenes
    images = list_images(sc.root / sc.split / "images", "*.jpg", "Mapillary Vistas images")
    labels = sc.root / sc.split / "labels"

    def size(img: Path) -> tuple[int, int] | None:
        if sc.width is None:
            return None
        try:
            w, h = image_size(img)
        except BadInputError:
            return None  # quarantined when the composite stage cannot decode it
        return (sc.width, max(1, round(h * sc.width / w))) if w != sc.width else None

    return pair_labels(
        images, lambda p: (labels / f"{p.stem}.png", ENCODING), lambda p: f"vistas_{p.stem}", sc.limit, size=size
    )
