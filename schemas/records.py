"""Records that travel between stages and into shard metadata and parquet manifests."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class ObjectRecord(BaseModel):
    """One object of the bank: an RGBA crop + binary mask, and where it came from."""

    model_config = ConfigDict(extra="forbid")

    object_id: str
    source: str  # the object source that made it: "file" (photo folders), "coco", "diffusion", "patches", a plug-in
    class_name: str
    origin: str  # file path, or "coco:<image_id>:<ann_id>"
    prompt: str | None = None
    seed: int | None = None
    width: int
    height: int
    mask_area: int
    quality: dict[str, float] = {}
    height_m: tuple[float, float] | None = None  # real-world height range, when the source knows it


class PlacementRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object_id: str
    class_name: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in scene pixels
    foot: tuple[int, int]  # (u, v) of the object's base centre
    height_px: int
    height_m: float
    scale: float  # placed height / bank height
    flipped: bool
    score: float
    candidates: int  # candidates evaluated for this object
    visibility: float | None = None  # ΔE (Lab) of the object to its surround in the written image (weather runs)
    visibility_clear: float | None = None  # the same before the weather effect


class HarmonizationRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str
    params: dict[str, float | list[float] | bool] = {}


class WeatherRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    condition: str
    severity: float
    seed: int
    params: dict[str, float | int | str | bool | list[float]] = {}


class PseudoLabelRecord(BaseModel):
    """Where a scene's label came from when it is a frozen segmenter's prediction, not an annotation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    segmenter: str  # a registered segmenter
    checkpoint: str  # the file as configured
    checkpoint_sha256: str
    threshold: float  # softmax confidence below which a pixel is void
    size: str  # "w1024": the working width the frames were labelled at; "-native": stored at their own size


class SampleMeta(BaseModel):
    """``meta.json`` of one shard sample."""

    model_config = ConfigDict(extra="forbid")

    key: str
    scene_id: str
    width: int
    height: int
    horizon: float
    horizon_source: Literal["camera", "vanishing_point", "road", "default"]
    objects: list[PlacementRecord]
    harmonization: list[HarmonizationRecord]
    sources: list[str]
    seed: int
    config_hash: str
    code_version: str
    unknown_label_pixels: int = 0  # scene label pixels with a value that is no id of its encoding (made void)
    condition: str = "clear"  # tasks.weather.conditions()
    weather: WeatherRecord | None = None  # the effect's severity and drawn parameters (None: clear)
    scene_condition: str | None = None  # the dataset's own tag of the scene (ACDC: fog, night, rain, snow)
    pseudo_label: PseudoLabelRecord | None = None  # the label is a frozen segmenter's prediction (frames)


class RejectRecord(BaseModel):
    """An item that was quarantined: where, which, and why."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    item: str
    reason: str
    detail: str = ""
