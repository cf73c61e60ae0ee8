"""Cityscapes in its official layout (``data_manifests/cityscapes.md``).

``{root}/leftImg8bit/{split}/{city}/{id}_leftImg8bit.png``, ``{root}/gtFine/{split}/{city}/{id}_gtFine_labelIds.png``
(converted to trainIds through cityscapesscripts' table) or ``..._gtFine_labelTrainIds.png``, optional
``..._gtFine_instanceIds.png`` and ``{root}/camera/{split}/{city}/{id}_camera.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from schemas import DemoScenesConfig, RejectRecord, ScenesConfig, SynthConfig
from schemas.registries import SCENE_SOURCES
from tasks.scenes.base import SceneRef

_LEGACY_DEMO = DemoScenesConfig().model_dump(mode="json")


class CityscapesSourceConfig(ScenesConfig):
    kind: Literal["cityscapes"] = "cityscapes"
    root: Path
    cities: list[str] | None = Field(None, description="only these cities (sub-folders of the split)")

    @model_validator(mode="before")
    @classmethod
    def _legacy_demo_section(cls, data):
        """Configs saved before scene sources had their own configs carry the demo profile's defaults here."""
        if isinstance(data, dict) and data.get("demo") == _LEGACY_DEMO:
            data = dict(data)
            del data["demo"]
        return data

    def hash_payload(self) -> dict:
        # the hash such a config had then: a Cityscapes run made before the registry is not made again
        return super().hash_payload() | {"demo": _LEGACY_DEMO}


def index_cityscapes(
    root: str | Path, split: str = "train", cities: list[str] | None = None, limit: int | None = None
) -> tuple[list[SceneRef], list[RejectRecord]]:
    """List the scenes of a split in a stable order; frames without a label are rejected, not dropped silently."""
    root = Path(root)
    img_dir = root / "leftImg8bit" / split
    if not img_dir.is_dir():
        raise FileNotFoundError(
            f"Cityscapes images not found: {img_dir} does not exist "
            f"(expected {root}/leftImg8bit/{split}/<city>/<id>_leftImg8bit.png)"
        )
    images = sorted(img_dir.glob("*/*_leftImg8bit.png"))
    if cities:
        images = [p for p in images if p.parent.name in set(cities)]
    if not images:
        raise FileNotFoundError(f"no *_leftImg8bit.png under {img_dir}/<city>/ (cities={cities})")
    refs: list[SceneRef] = []
    rejects: list[RejectRecord] = []
    for img in images:
        sid = img.name[: -len("_leftImg8bit.png")]
        city = img.parent.name
        gt = root / "gtFine" / split / city
        label, kind = gt / f"{sid}_gtFine_labelIds.png", "labelIds"
        if not label.exists() and (gt / f"{sid}_gtFine_labelTrainIds.png").exists():
            label, kind = gt / f"{sid}_gtFine_labelTrainIds.png", "labelTrainIds"
        if not label.exists():
            rejects.append(RejectRecord(stage="scenes", item=str(img), reason="missing_label", detail=str(label)))
            continue
        inst = gt / f"{sid}_gtFine_instanceIds.png"
        cam = root / "camera" / split / city / f"{sid}_camera.json"
        refs.append(
            SceneRef(
                scene_id=sid,
                image=img,
                label=label,
                label_kind=kind,
                instances=inst if inst.exists() else None,
                camera=cam if cam.exists() else None,
            )
        )
        if limit and len(refs) >= limit:
            break
    return refs, rejects


@SCENE_SOURCES.register("cityscapes", config=CityscapesSourceConfig)
def index(cfg: SynthConfig, run_dir: Path) -> tuple[list[SceneRef], list[RejectRecord]]:
    sc = cfg.scenes
    return index_cityscapes(sc.root, sc.split, sc.cities, sc.limit)
