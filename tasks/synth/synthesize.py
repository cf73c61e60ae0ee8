"""The composite stage: scene + objects -> placed, harmonized, composited samples -> one shard.

Work is cut into shards of a fixed list of samples decided up front (``plan_samples``), so a shard is a
pure function of (config, shard index): re-running a config only writes the shards that are missing, and
the result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from schemas import PlacementConfig, RejectRecord, SampleMeta, SynthConfig, WeatherConfig, WeatherRecord
from tasks import CODE_VERSION
from tasks.conditions import CLEAR, conditions
from tasks.imageio import BadInputError, encode_rgb, write_bytes_atomic
from tasks.labels import TRAIN_ID_COLOURS
from tasks.object_bank import BankObject, read_object_bank
from tasks.sample_format import CONDITION_SEP, SHARD_PATTERN, encode_sample
from tasks.scenes import (
    CITYSCAPES_SIZE,
    Scene,
    SceneRef,
    camera_height,
    horizon_from_camera,
    load_scene,
)
from tasks.seeding import derive_seed, rng_for
from tasks.shards import PARTS_DIR, json_bytes, sha256_of, store_tar_shard
from tasks.storage import Store
from tasks.synth.composite import paste, resize_object
from tasks.synth.harmonize import Harmonizer, make_harmonizer
from tasks.synth.placement import NoPlacementError, estimate_horizon, place_objects
from tasks.synth.weather import Frame, contact_sheet, object_contrast, render

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplePlan:
    index: int
    key: str
    scene_index: int
    seed: int  # of the composite (placement, harmonization): shared by the conditions of one composite
    condition: str = CLEAR
    severity: float = 0.0


def plan_samples(
    scene_ids: list[str], num_samples: int, seed: int, weather: WeatherConfig | None = None
) -> list[SamplePlan]:
    """Composite i uses scene perm[i mod n] of a seeded permutation: every scene is used before any repeats.

    With ``weather`` in mode ``random`` each sample draws its condition and severity (from the seed, so a plan is
    the same in every run); in mode ``every`` each composite becomes one sample per condition, keyed
    ``<i>_<scene>__<condition>`` (``tasks.sample_format.composite_key`` gives back the shared part)."""
    if not scene_ids:
        raise ValueError("no scenes to synthesize on")
    order = rng_for(seed, "scene-order").permutation(len(scene_ids))
    plans = []
    for i in range(num_samples):
        s = int(order[i % len(scene_ids)])
        key = f"{i:07d}_{scene_ids[s]}".replace(".", "_")
        base = SamplePlan(index=len(plans), key=key, scene_index=s, seed=derive_seed(seed, "sample", i))
        if weather is None:
            plans.append(base)
            continue
        rng = rng_for(seed, "weather", i)
        severity = round(float(rng.uniform(*weather.severity)), 4)
        if weather.mode == "every":
            for cond in weather.rendered():
                plans.append(
                    replace(
                        base,
                        index=len(plans),
                        key=f"{key}{CONDITION_SEP}{cond}",
                        condition=cond,
                        severity=0.0 if cond == CLEAR else severity,
                    )
                )
            continue
        names, p = weather.weighted()
        cond = CLEAR if rng.random() < weather.clear else names[int(rng.choice(len(names), p=p))]
        plans.append(replace(base, condition=cond, severity=0.0 if cond == CLEAR else severity))
    return plans


def split_into_shards(plans: list[SamplePlan], samples_per_shard: int) -> list[list[SamplePlan]]:
    return [plans[i : i + samples_per_shard] for i in range(0, len(plans), samples_per_shard)]


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


def weather_sheet(path: str | Path, scenes: list[SceneRef], plans: list[SamplePlan], compositor: Compositor) -> Path:
    """``weather.png``: the first composite that can be made, in every registered condition at the config's two
    contact-sheet severities (one row per severity)."""
    w = compositor.cfg.weather or WeatherConfig()
    for plan in plans:
        try:
            scene = load_scene(scenes[plan.scene_index], compositor.cfg.scenes.max_unknown_label_fraction)
            comp = compositor.compose(scene, plan)
            break
        except (BadInputError, NoPlacementError):
            continue
    else:
        raise ValueError("no composite could be made for the weather contact sheet")
    frame = compositor.frame(scene, comp)
    tiles = {}
    for severity in w.contact_sheet:
        for cond in conditions():
            rng = np.random.default_rng(derive_seed(plan.seed, "weather", cond))
            tiles[(cond, severity)] = render(cond, comp.image, frame, severity, rng, w.options.get(cond))[0]
    write_bytes_atomic(Path(path), encode_rgb(contact_sheet(tiles), "png"))
    return Path(path)


HORIZON_COLOURS = {
    "camera": (255, 220, 0),
    "vanishing_point": (0, 230, 255),
    "road": (255, 60, 220),
    "default": (255, 0, 0),
}


def scene_sheet(
    path: str | Path, scenes: list[SceneRef], cfg: SynthConfig, max_scenes: int = 8, width: int = 480
) -> Path:
    """``scenes.png``: the first ``max_scenes`` scenes of a run, each as the frame | its label in Cityscapes colours
    over the frame, with the horizon the placement uses (yellow: camera file, cyan: vanishing point of the road's
    sides, magenta: the road's top row) and what the label is (a pseudo label's segmenter and threshold). None
    when no scene can be read (the composite stage then quarantines every sample and says why)."""
    rows = []
    for ref in scenes[:max_scenes]:
        try:
            scene = load_scene(ref, max_unknown_label_fraction=cfg.scenes.max_unknown_label_fraction)
        except BadInputError:
            continue
        row, source = scene_horizon(scene, cfg.placement)
        s = width / scene.image.shape[1]
        left = cv2.resize(scene.image, (width, max(1, round(scene.image.shape[0] * s))), interpolation=cv2.INTER_AREA)
        colours = cv2.resize(TRAIN_ID_COLOURS[scene.label], left.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        right = (0.45 * left + 0.55 * colours).astype(np.uint8)
        panel = np.hstack([left, np.full((left.shape[0], 4, 3), 255, np.uint8), right])
        y = round(row * s)
        if 0 <= y < panel.shape[0]:
            cv2.line(panel, (0, y), (panel.shape[1] - 1, y), HORIZON_COLOURS[source], 2)
        what = (
            f"pseudo label {scene.pseudo_label.segmenter} >= {scene.pseudo_label.threshold:g}"
            if scene.pseudo_label
            else f"label {ref.label_kind}"
        )
        tag = f", {scene.condition}" if scene.condition else ""
        caption = np.full((20, panel.shape[1], 3), 255, np.uint8)
        text = f"{ref.scene_id[:60]}  |  horizon {source} row {row:.0f}  |  {what}{tag}"
        cv2.putText(caption, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.vstack([caption, panel]))
    if not rows:
        log.warning("no scene could be read for %s", path)
        return None
    sheet = np.vstack([x for r in rows for x in (r, np.full((6, r.shape[1], 3), 255, np.uint8))][:-1])
    write_bytes_atomic(Path(path), encode_rgb(sheet, "png"))
    return Path(path)


def encode_composite(c: Composite, image_format: str, jpeg_quality: int) -> dict:
    """A composite as the tar members of one sample (``tasks.sample_format``). Fields added after the first shards
    are left out while they are unset (a run without weather writes no condition fields, a labelled scene no
    pseudo-label record), so the shards of older configs keep their bytes."""
    m = c.meta
    exclude: dict = {k: True for k in ("scene_condition", "pseudo_label") if getattr(m, k) is None}
    if m.weather is None and m.condition == CLEAR and all(p.visibility is None for p in m.objects):
        exclude |= {"condition": True, "weather": True, "objects": {"__all__": {"visibility", "visibility_clear"}}}
    meta = m.model_dump_json(exclude=exclude or None).encode()
    return encode_sample(c.meta.key, c.image, c.label, c.mask, meta, image_format, jpeg_quality)


def manifest_row(c: Composite, shard: str, bank: dict[str, BankObject]) -> dict:
    m = c.meta
    return {
        "key": m.key,
        "shard": shard,
        "scene_id": m.scene_id,
        "width": m.width,
        "height": m.height,
        "num_objects": len(m.objects),
        "object_ids": [p.object_id for p in m.objects],
        "classes": [p.class_name for p in m.objects],
        "sources": [bank[p.object_id].record.source for p in m.objects],
        "boxes": [list(p.box) for p in m.objects],
        "anomaly_pixels": int(np.count_nonzero(c.mask)),
        "condition": m.condition,
        "severity": m.weather.severity if m.weather else 0.0,
        "visibility": [p.visibility for p in m.objects] if m.objects and m.objects[0].visibility is not None else None,
        "seed": m.seed,
        "config_hash": m.config_hash,
    }


def part_name(shard_index: int) -> str:
    """The record of a finished shard, relative to its shard set: what a re-run skips."""
    return f"{PARTS_DIR}/{SHARD_PATTERN.format(shard_index)}.json"


def claim_shard_dir(out_dir: str | Path, config_hash: str) -> None:
    """Mark ``out_dir`` (a directory or URL) as holding shards of ``config_hash``; refuse one made by another config.

    Without this, re-running a *changed* config into an old run directory would keep shards of the old one.
    """
    store, stamp = Store(out_dir), f"{PARTS_DIR}/config_hash"
    if store.isfile(stamp):
        old = store.read_text(stamp).strip()
        if old != config_hash:
            raise ValueError(
                f"{store.path()} holds shards of another config (hash {old}, this one is {config_hash}); "
                "use a new run directory, or delete that one to start over"
            )
        return
    store.write_bytes(stamp, config_hash.encode())


def completed_shard(out_dir: str | Path, shard_index: int, config_hash: str) -> dict | None:
    """The record of a shard finished by an earlier run of the same config, if its tar is whole: on a local disk
    its sha256 is checked, on an object store its size (the tar was moved onto its key whole, and validation
    hashes every shard before a version is published)."""
    store = Store(out_dir)
    part, tar = part_name(shard_index), SHARD_PATTERN.format(shard_index)
    if not (store.isfile(part) and store.isfile(tar)):
        return None
    rec = json.loads(store.read_text(part))
    if rec.get("config_hash") != config_hash:
        return None
    whole = sha256_of(store.path(tar)) == rec.get("sha256") if store.local else store.size(tar) == rec.get("bytes")
    return rec if whole else None


def synthesize_shard(
    out_dir: str | Path,
    shard_index: int,
    plans: list[SamplePlan],
    scenes: list[SceneRef],
    compositor: Compositor,
    on_sample=None,
) -> dict:
    """Compose the samples of one shard and write it. A bad scene or placement quarantines that sample.

    Returns the shard record: ``{"shard", "sha256", "samples", "bytes", "rows", "rejects", "seconds"}``;
    the same record is saved beside the shard so a later run can skip it.
    """
    store = Store(out_dir)
    cfg = compositor.cfg.shards
    name = SHARD_PATTERN.format(shard_index)
    t0 = time.perf_counter()
    samples, rows, rejects = [], [], []
    cache: dict[int, Scene] = {}
    made: dict[tuple[int, int], Composite | Exception] = {}  # what the conditions of one composite share
    for plan in plans:
        ref = scenes[plan.scene_index]
        try:
            if plan.scene_index not in cache:
                cache.clear()
                cache[plan.scene_index] = load_scene(
                    ref, max_unknown_label_fraction=compositor.cfg.scenes.max_unknown_label_fraction
                )
            scene = cache[plan.scene_index]
            if (plan.scene_index, plan.seed) not in made:
                made.clear()
                try:
                    made[(plan.scene_index, plan.seed)] = compositor.compose(scene, plan)
                except NoPlacementError as e:  # every condition of this composite fails the same way
                    made[(plan.scene_index, plan.seed)] = e
            comp = made[(plan.scene_index, plan.seed)]
            if isinstance(comp, Exception):
                raise comp
            comp = compositor.weathered(comp, scene, plan)
        except (BadInputError, NoPlacementError) as e:
            reason = (e.reason or "bad_scene") if isinstance(e, BadInputError) else "no_placement"
            rejects.append(
                RejectRecord(stage="composite", item=f"{plan.key} ({ref.image})", reason=reason, detail=str(e))
            )
            log.warning("sample %s quarantined: %s", plan.key, e)
            continue
        samples.append(encode_composite(comp, cfg.image_format, cfg.jpeg_quality))
        rows.append(manifest_row(comp, name, compositor.by_id))
        if on_sample is not None:
            on_sample()
    digest, size = store_tar_shard(store, name, samples)
    record = {
        "shard": name,
        "sha256": digest,
        "config_hash": compositor.config_hash,
        "samples": len(samples),
        "bytes": size,
        "rows": rows,
        "rejects": [r.model_dump() for r in rejects],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    store.write_bytes(part_name(shard_index), json_bytes(record))  # after the tar: the record says it is whole
    return record


@functools.lru_cache(maxsize=2)
def _compositor(config_json: str, bank_dir: str, bank_stamp: str) -> Compositor:
    return Compositor(SynthConfig.model_validate_json(config_json), read_object_bank(bank_dir))


def compositor_for(cfg: SynthConfig, bank_dir: str | Path) -> Compositor:
    """The compositor of ``cfg`` over the object bank in ``bank_dir``, built once per process (and again when the
    bank's stamp changes): what a shard task on another worker of a cluster rebuilds from small arguments."""
    stamp = Path(bank_dir) / "bank.json"
    return _compositor(cfg.model_dump_json(), str(bank_dir), stamp.read_text() if stamp.is_file() else "")


def write_shard(
    out_dir: str | Path, shard_index: int, plans: list[SamplePlan], scenes: list[SceneRef], cfg: SynthConfig, bank_dir
) -> dict:
    """``synthesize_or_resume`` from picklable arguments only (the bank is read from ``bank_dir`` by the process
    that runs it): a shard is a pure function of (config, shard index), so any worker of a cluster writes the same
    bytes. ``out_dir`` may be an object-store URL that every worker writes to; the worker must see ``bank_dir`` and
    the scene files (a shared filesystem)."""
    return synthesize_or_resume(out_dir, shard_index, plans, scenes, compositor_for(cfg, bank_dir))


def synthesize_or_resume(
    out_dir: str | Path,
    shard_index: int,
    plans: list[SamplePlan],
    scenes: list[SceneRef],
    compositor: Compositor,
    on_sample=None,
) -> dict:
    """The shard's record from an earlier run of the same config (``skipped: True``), or a fresh one."""
    done = completed_shard(out_dir, shard_index, compositor.config_hash)
    if done is not None:
        return done | {"skipped": True}
    return synthesize_shard(out_dir, shard_index, plans, scenes, compositor, on_sample)
