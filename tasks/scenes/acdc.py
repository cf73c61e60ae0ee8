"""ACDC (Adverse Conditions Dataset with Correspondences), read in its own layout (``data_manifests/scenes.md``):

``{root}/rgb_anon/{condition}/{split}/{sequence}/{name}_rgb_anon.png`` with
``{root}/gt/{condition}/{split}/{sequence}/{name}_gt_labelTrainIds.png`` (or ``_gt_labelIds.png``, mapped through
cityscapesscripts' table). Its condition (fog, night, rain, snow) is the scene's tag: it goes into each sample's
``meta.json`` (``scene_condition``, and ``condition`` when no synthetic weather is drawn over it) and the
manifest, so the per-condition evaluation split groups real adverse frames like rendered ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from schemas import RejectRecord, ScenesConfig, SynthConfig
from schemas.registries import SCENE_SOURCES
from tasks.scenes.base import SceneRef, pair_labels

ACDC_CONDITIONS = ("fog", "night", "rain", "snow")


class AcdcSourceConfig(ScenesConfig):
    kind: Literal["acdc"] = "acdc"
    root: Path
    conditions: list[Literal[ACDC_CONDITIONS]] = Field(
        default_factory=lambda: list(ACDC_CONDITIONS),
        min_length=1,
        description="conditions to read; one without a folder for the split is rejected (missing_condition)",
    )


def _label_of(root: Path, condition: str, split: str):
    def label_of(img: Path) -> tuple[Path, str]:
        gt = root / "gt" / condition / split / img.parent.name
        name = img.name[: -len("_rgb_anon.png")]
        train = gt / f"{name}_gt_labelTrainIds.png"
        ids = gt / f"{name}_gt_labelIds.png"
        return (ids, "labelIds") if not train.exists() and ids.exists() else (train, "labelTrainIds")

    return label_of


@SCENE_SOURCES.register("acdc", config=AcdcSourceConfig)
def index_acdc(cfg: SynthConfig, run_dir: Path) -> tuple[list[SceneRef], list[RejectRecord]]:
    sc = cfg.scenes
    refs: list[SceneRef] = []
    rejects: list[RejectRecord] = []
    for cond in sc.conditions:
        folder = sc.root / "rgb_anon" / cond / sc.split
        images = sorted(folder.glob("*/*_rgb_anon.png"))
        if not images:  # e.g. only the fog download is there
            detail = f"no <sequence>/*_rgb_anon.png under {folder}"
            rejects.append(RejectRecord(stage="scenes", item=str(folder), reason="missing_condition", detail=detail))
            continue
        got, rej = pair_labels(
            images,
            _label_of(sc.root, cond, sc.split),
            lambda p: f"acdc_{p.name[: -len('_rgb_anon.png')]}",
            sc.limit and sc.limit - len(refs),
            condition=cond,
        )
        refs += got
        rejects += rej
        if sc.limit and len(refs) >= sc.limit:
            break
    if not refs and all(r.reason == "missing_condition" for r in rejects):
        raise FileNotFoundError(
            f"ACDC: no frames for {', '.join(sc.conditions)} under {sc.root}/rgb_anon/<condition>/{sc.split}/"
        )
    return refs, rejects
