"""The compositor: scene + objects of one planned sample -> a placed, harmonized, composited (and weathered) sample.

Plans come from ``tasks.synth.plan``; ``tasks.synth.writer`` turns composites into shards; ``tasks.synth.sheets``
draws the contact sheets. ``compositor_for`` builds one compositor per process from small arguments.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from schemas import PlacementConfig, SampleMeta, SynthConfig, WeatherConfig, WeatherRecord
from tasks import CODE_VERSION
from tasks.conditions import CLEAR
from tasks.horizon import estimate_horizon
from tasks.object_bank import BankObject, read_object_bank
from tasks.scenes import (
    CITYSCAPES_SIZE,
    Scene,
    camera_height,
    horizon_from_camera,
)
from tasks.seeding import derive_seed
from tasks.synth.composite import paste, resize_object
from tasks.synth.harmonize import Harmonizer, make_harmonizer
from tasks.synth.placement import NoPlacementError, place_objects
from tasks.synth.plan import SamplePlan
from tasks.weather import Frame, object_contrast, render


def scene_horizon(scene: Scene, placement: PlacementConfig) -> tuple[float, str]:
    """(row, source) of the scene's horizon: from its camera file, else estimated from its drivable area."""
    if scene.camera is not None:
        return horizon_from_camera(scene.camera, scene.label.shape[0]), "camera"
    est = estimate_horizon(scene.label, placement.drivable_classes, placement.search_stride)
    return est.row, est.source


@dataclass
class Composite:
    image: np.ndarray
    label: np.ndarray
    mask: np.ndarray
    meta: SampleMeta
    derived: dict = field(default_factory=dict, repr=False)  # the weather frame and clear contrast, made once


class Compositor:
    """Places, harmonizes and composites objects from a bank into scenes (one instance per worker)."""

    def __init__(self, cfg: SynthConfig, bank: list[BankObject], harmonizer: Harmonizer | None = None):
        if not bank:
            raise ValueError("the object bank is empty: no object passed extraction and the quality gate")
        self.config_hash = cfg.content_hash()  # of the config as given: what dataset.json records
        # objects that know their real-world height (generated ones: from the vocabulary) bring it to the
        # placement; a size_prior in the config wins
        heights = {o.record.class_name: o.record.height_m for o in bank if o.record.height_m is not None}
        if heights:
            prior = heights | cfg.placement.size_prior
            cfg = cfg.model_copy(update={"placement": cfg.placement.model_copy(update={"size_prior": prior})})
        self.cfg = cfg
        self.bank = bank
        self.by_id = {o.record.object_id: o for o in bank}
        self.harmonizer = harmonizer or make_harmonizer(cfg.harmonize)

    def compose(self, scene: Scene, plan: SamplePlan) -> Composite:
        cfg = self.cfg
        rng = np.random.default_rng(plan.seed)
        H, W = scene.label.shape
        horizon, h_source = scene_horizon(scene, cfg.placement)
        cam_h = camera_height(scene.camera, cfg.placement.camera_height_m)
        lo, hi = cfg.placement.objects_per_scene
        n = int(rng.integers(lo, hi + 1))
        placements = []
        for _ in range(cfg.placement.draws):  # objects that fit nowhere are redrawn before giving up
            picks = rng.choice(len(self.bank), size=n, replace=len(self.bank) < n)
            wanted = [self.bank[int(i)].record for i in picks]
            placements = place_objects(
                scene.label,
                [(r.object_id, r.class_name, r.width, r.height) for r in wanted],
                horizon,
                cam_h,
                cfg.placement,
                rng,
            )
            if placements:
                break
        else:
            raise NoPlacementError(
                f"no object found a valid place in {cfg.placement.draws} draws of {n} (horizon row {horizon:.0f})"
            )
        image, label = scene.image.copy(), scene.label.copy()
        mask = np.zeros_like(label)
        harmonization = []
        for p in placements:
            x0, y0, x1, y1 = p.box
            rgb, m = resize_object(self.by_id[p.object_id].rgba, x1 - x0, y1 - y0, p.flipped)
            rgb, alpha, rec = self.harmonizer(image, rgb, m, p.box)
            paste(image, label, mask, rgb, alpha, m, p.box)
            harmonization.append(rec)
        meta = SampleMeta(
            key=plan.key,
            scene_id=scene.scene_id,
            width=W,
            height=H,
            horizon=round(float(horizon), 2),
            horizon_source=h_source,
            objects=placements,
            harmonization=harmonization,
            sources=sorted({self.by_id[p.object_id].record.source for p in placements}),
            seed=plan.seed,
            config_hash=self.config_hash,
            code_version=CODE_VERSION,
            unknown_label_pixels=scene.unknown_label_pixels,
            condition=scene.condition or CLEAR,
            scene_condition=scene.condition,
            pseudo_label=scene.pseudo_label,
        )
        return Composite(image, label, mask, meta)

    def frame(self, scene: Scene, comp: Composite) -> Frame:
        """The composite's geometry for the weather effects: labels, horizon, camera height and focal length."""
        w = self.cfg.weather or WeatherConfig()
        H, W = comp.label.shape
        if scene.camera is not None:  # Cityscapes intrinsics refer to the 1024-row frame
            focal = float(scene.camera["intrinsic"]["fy"]) * H / CITYSCAPES_SIZE[1]
        else:
            focal = w.focal_px_per_width * W
        cam_h = camera_height(scene.camera, self.cfg.placement.camera_height_m)
        return Frame(comp.label, comp.meta.horizon, cam_h, focal, w.max_depth_m)

    def weathered(self, comp: Composite, scene: Scene, plan: SamplePlan) -> Composite:
        """``comp`` under the plan's condition (a new composite; labels and mask untouched), with the condition,
        its parameters and each object's visibility before and after in the metadata. Without a weather
        config: ``comp`` as it is."""
        w = self.cfg.weather
        if w is None:
            return comp
        boxes = [p.box for p in comp.meta.objects]
        if not comp.derived:  # shared by every condition of this composite
            comp.derived |= {"frame": self.frame(scene, comp), "before": object_contrast(comp.image, comp.mask, boxes)}
        before = comp.derived["before"]
        seed = derive_seed(plan.seed, "weather", plan.condition)
        image, params = render(
            plan.condition,
            comp.image,
            comp.derived["frame"],
            plan.severity,
            np.random.default_rng(seed),
            w.options.get(plan.condition),
        )
        after = before if plan.condition == CLEAR else object_contrast(image, comp.mask, boxes)
        objects = [
            p.model_copy(update={"visibility": a, "visibility_clear": b})
            for p, a, b in zip(comp.meta.objects, after, before, strict=True)
        ]
        record = None
        if plan.condition != CLEAR:
            record = WeatherRecord(condition=plan.condition, severity=plan.severity, seed=seed, params=params)
        condition = plan.condition if plan.condition != CLEAR else comp.meta.condition
        meta = comp.meta.model_copy(
            update={"key": plan.key, "objects": objects, "condition": condition, "weather": record}
        )
        return Composite(image, comp.label, comp.mask, meta)


@functools.lru_cache(maxsize=2)
def _compositor(config_json: str, bank_dir: str, bank_stamp: str) -> Compositor:
    return Compositor(SynthConfig.model_validate_json(config_json), read_object_bank(bank_dir))


def compositor_for(cfg: SynthConfig, bank_dir: str | Path) -> Compositor:
    """The compositor of ``cfg`` over the object bank in ``bank_dir``, built once per process (and again when the
    bank's stamp changes): what a shard task on another worker of a cluster rebuilds from small arguments."""
    stamp = Path(bank_dir) / "bank.json"
    return _compositor(cfg.model_dump_json(), str(bank_dir), stamp.read_text() if stamp.is_file() else "")
