"""Contact sheets of a version: one scene under every condition (``weather.png``) and the scenes with their labels
and horizons (``scenes.png``)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from schemas import SynthConfig, WeatherConfig
from tasks.conditions import conditions
from tasks.imageio import BadInputError, encode_rgb, write_bytes_atomic
from tasks.labels import TRAIN_ID_COLOURS
from tasks.scenes import (
    SceneRef,
    load_scene,
)
from tasks.seeding import derive_seed
from tasks.synth.compositor import Compositor, scene_horizon
from tasks.synth.placement import NoPlacementError
from tasks.synth.plan import SamplePlan
from tasks.weather import WEATHER_FAMILY, contact_sheet, render

log = logging.getLogger(__name__)


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
        for cond in conditions(WEATHER_FAMILY):
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
