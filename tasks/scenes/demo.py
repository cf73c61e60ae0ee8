"""Procedural Cityscapes-format street scenes for the demo profile (no dataset needed).

Each scene: sky, buildings, vegetation, a road in perspective towards a vanishing point, sidewalks, a few
cars and persons as instances; written in the official layout (``leftImg8bit``, ``gtFine`` labelIds and
instanceIds, ``camera`` json) under ``<run_dir>/scenes`` so the demo (the ``demo`` scene source) exercises the
same reader as real Cityscapes. Every scene has its own light (brightness, colour cast) so harmonization has
something to adapt to. A quarter of the scenes have no camera file, which exercises the horizon estimate from
the road (vanishing point of its boundaries).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from schemas import DemoScenesConfig, RejectRecord, ScenesConfig, SynthConfig
from schemas.registries import SCENE_SOURCES
from tasks.imageio import write_bytes_atomic, write_gray, write_rgb
from tasks.labels import label_id
from tasks.layout import RunLayout
from tasks.scenes.base import CITYSCAPES_SIZE, SceneRef
from tasks.scenes.cityscapes import index_cityscapes
from tasks.seeding import rng_for

CITY = "demo"
PITCH = 0.038  # rad, like Cityscapes' camera
FY = 2262.52  # px at 2048x1024
CAMERA_Z = 1.22  # m

_BASE_COLOURS = {  # RGB
    "sky": (150, 185, 225),
    "building": (120, 112, 105),
    "vegetation": (70, 110, 45),
    "road": (92, 90, 94),
    "sidewalk": (160, 150, 145),
    "car": (40, 60, 140),
    "person": (150, 60, 60),
    "pole": (90, 90, 90),
}


def _fill(label, inst, image, poly_or_mask, name, colour, instance=0):
    lid = label_id(name)
    if isinstance(poly_or_mask, np.ndarray) and poly_or_mask.dtype == bool:
        m = poly_or_mask
    else:
        m = np.zeros(label.shape, np.uint8)
        cv2.fillPoly(m, [np.asarray(poly_or_mask, np.int32)], 1)
        m = m.astype(bool)
    label[m] = lid
    inst[m] = instance if instance else lid
    image[m] = colour
    return m


def render_scene(index: int, cfg: DemoScenesConfig, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(image RGB, labelIds, instanceIds, horizon row) of demo scene ``index``."""
    rng = rng_for(seed, "demo-scene", index)
    W, H = cfg.width, cfg.height
    hz = H * rng.uniform(0.40, 0.50)
    vx = W * rng.uniform(0.42, 0.58)
    label = np.zeros((H, W), np.uint8)
    inst = np.zeros((H, W), np.int32)
    image = np.zeros((H, W, 3), np.uint8)
    jitter = lambda c: tuple(int(np.clip(v + rng.integers(-15, 16), 0, 255)) for v in c)  # noqa: E731

    _fill(label, inst, image, [(0, 0), (W, 0), (W, H), (0, H)], "sky", _BASE_COLOURS["sky"])
    # buildings: a row of blocks on each side, tops above the horizon
    x = 0
    while x < W:
        bw = int(W * rng.uniform(0.06, 0.16))
        top = int(hz - H * rng.uniform(0.08, 0.4))
        _fill(
            label,
            inst,
            image,
            [(x, top), (x + bw, top), (x + bw, H), (x, H)],
            "building",
            jitter(_BASE_COLOURS["building"]),
        )
        x += bw
    for _ in range(int(rng.integers(2, 6))):  # trees
        cx, cy = int(rng.uniform(0, W)), int(hz - H * rng.uniform(0.0, 0.15))
        ax, ay = int(W * rng.uniform(0.03, 0.08)), int(H * rng.uniform(0.06, 0.14))
        m = np.zeros((H, W), np.uint8)
        cv2.ellipse(m, (cx, cy), (ax, ay), 0, 0, 360, 1, -1)
        _fill(label, inst, image, m.astype(bool), "vegetation", jitter(_BASE_COLOURS["vegetation"]))
    # road and sidewalks in perspective: edges run from the vanishing point to the bottom corners
    left, right = -W * rng.uniform(0.1, 0.4), W * (1 + rng.uniform(0.1, 0.4))
    walk = W * rng.uniform(0.25, 0.45)
    top = int(math.ceil(hz)) + 1
    _fill(
        label,
        inst,
        image,
        [(vx, top), (vx, top), (right + walk, H), (left - walk, H)],
        "sidewalk",
        _BASE_COLOURS["sidewalk"],
    )
    _fill(label, inst, image, [(vx - 1, top), (vx + 1, top), (right, H), (left, H)], "road", _BASE_COLOURS["road"])
    # lane marking
    for t in np.linspace(0.15, 0.95, 7):
        y0, y1 = hz + (H - hz) * t, hz + (H - hz) * (t + 0.05)
        x0, x1 = vx + (W / 2 - vx) * t, vx + (W / 2 - vx) * (t + 0.05)
        w0, w1 = max(1, 0.01 * W * t), max(1, 0.01 * W * (t + 0.05))
        cv2.fillPoly(
            image, [np.array([(x0 - w0, y0), (x0 + w0, y0), (x1 + w1, y1), (x1 - w1, y1)], np.int32)], (225, 225, 215)
        )

    def on_ground(v: float) -> float:  # pixel height of 1 m standing at row v
        return (v - hz) / CAMERA_Z

    for k in range(int(rng.integers(1, 4))):  # cars
        v = hz + (H - hz) * rng.uniform(0.15, 0.7)
        h = 1.5 * on_ground(v)
        w = h * rng.uniform(1.4, 2.4)
        frac = (v - hz) / (H - hz)
        road_l, road_r = vx + (left - vx) * frac, vx + (right - vx) * frac
        u = rng.uniform(max(road_l, 0), min(road_r, W))
        x0, y0 = int(u - w / 2), int(v - h)
        body = [(x0, int(v - 0.55 * h)), (x0 + int(w), int(v - 0.55 * h)), (x0 + int(w), int(v)), (x0, int(v))]
        _fill(label, inst, image, body, "car", jitter(_BASE_COLOURS["car"]), instance=26000 + k)
        cabin = [
            (x0 + int(0.2 * w), y0),
            (x0 + int(0.8 * w), y0),
            (x0 + int(0.9 * w), int(v - 0.55 * h)),
            (x0 + int(0.1 * w), int(v - 0.55 * h)),
        ]
        _fill(label, inst, image, cabin, "car", jitter(_BASE_COLOURS["car"]), instance=26000 + k)
    for k in range(int(rng.integers(1, 4))):  # persons on the sidewalks
        v = hz + (H - hz) * rng.uniform(0.1, 0.6)
        h = 1.75 * on_ground(v)
        frac = (v - hz) / (H - hz)
        side = rng.integers(0, 2)
        edge = vx + ((right if side else left) - vx) * frac
        u = float(np.clip(edge + (1 if side else -1) * rng.uniform(0.05, 0.2) * W * frac, 0, W - 1))
        m = np.zeros((H, W), np.uint8)
        cv2.ellipse(m, (int(u), int(v - 0.4 * h)), (max(1, int(0.13 * h)), max(1, int(0.4 * h))), 0, 0, 360, 1, -1)
        cv2.circle(m, (int(u), int(v - 0.88 * h)), max(1, int(0.1 * h)), 1, -1)
        _fill(label, inst, image, m.astype(bool), "person", jitter(_BASE_COLOURS["person"]), instance=24000 + k)

    # texture, vertical light falloff, and the scene's own illumination (brightness + colour cast)
    img = image.astype(np.float32)
    img += rng.normal(0, 6, size=(H, W, 1)).astype(np.float32)
    img = cv2.GaussianBlur(img, (3, 3), 0.8)
    img *= (0.85 + 0.3 * np.linspace(0, 1, H, dtype=np.float32))[:, None, None]
    img *= (rng.uniform(0.55, 1.25) * (1 + rng.uniform(-0.12, 0.12, size=3))).astype(np.float32)
    image = np.clip(img, 0, 255).astype(np.uint8)
    return image, label, inst, hz


def camera_json(horizon_row: float, height: int) -> dict:
    """A Cityscapes camera file whose horizon v0 + fy·tan(−pitch) lands on ``horizon_row``."""
    s = CITYSCAPES_SIZE[1] / height
    v0 = horizon_row * s - FY * math.tan(-PITCH)
    return {
        "extrinsic": {"baseline": 0.209, "pitch": PITCH, "roll": 0.0, "x": 1.7, "y": 0.0, "yaw": 0.0, "z": CAMERA_Z},
        "intrinsic": {"fx": FY, "fy": FY, "u0": CITYSCAPES_SIZE[0] / 2, "v0": v0},
    }


def write_demo_scenes(root: str | Path, cfg: DemoScenesConfig, seed: int, split: str = "train") -> Path:
    """Write ``cfg.num_scenes`` scenes under ``root`` in the Cityscapes layout (skips existing ones)."""
    root = Path(root)
    for i in range(cfg.num_scenes):
        sid = f"{CITY}_{i:06d}_000019"
        img_path = root / "leftImg8bit" / split / CITY / f"{sid}_leftImg8bit.png"
        if img_path.exists():
            continue
        image, label, inst, hz = render_scene(i, cfg, seed)
        gt = root / "gtFine" / split / CITY
        write_gray(gt / f"{sid}_gtFine_labelIds.png", label)
        write_gray(gt / f"{sid}_gtFine_instanceIds.png", inst)
        if i % 4 != 3:
            cam = root / "camera" / split / CITY / f"{sid}_camera.json"
            write_bytes_atomic(cam, json.dumps(camera_json(hz, cfg.height), indent=2).encode())
        write_rgb(img_path, image)  # last: an image exists only with its labels
    return root


class DemoSourceConfig(ScenesConfig):
    kind: Literal["demo"] = "demo"
    root: None = Field(None, description="the scenes are rendered under <run_dir>/scenes")
    cities: list[str] | None = None
    demo: DemoScenesConfig = DemoScenesConfig()

    @classmethod
    def with_root(cls, section: dict, root: str) -> dict:
        """A root given for demo scenes is read like them: in the Cityscapes layout."""
        keep = {k: v for k, v in section.items() if k not in ("kind", "root", "demo")}
        return {"kind": "cityscapes", "root": root} | keep


@SCENE_SOURCES.register("demo", config=DemoSourceConfig)
def index(cfg: SynthConfig, run_dir: Path) -> tuple[list[SceneRef], list[RejectRecord]]:
    sc = cfg.scenes
    root = write_demo_scenes(RunLayout.of(run_dir).scenes, sc.demo, cfg.seed, split=sc.split)
    return index_cityscapes(root, sc.split, sc.cities, sc.limit)
