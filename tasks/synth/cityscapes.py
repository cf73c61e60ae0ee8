"""Cityscapes reader for the official layout.

``{root}/leftImg8bit/{split}/{city}/{id}_leftImg8bit.png``, ``{root}/gtFine/{split}/{city}/{id}_gtFine_labelIds.png``
(converted to trainIds through cityscapesscripts' table), optional ``..._gtFine_instanceIds.png`` and
``{root}/camera/{split}/{city}/{id}_camera.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas import RejectRecord
from tasks.imageio import BadInputError, read_gray, read_gray16, read_rgb
from tasks.labels import label_ids_to_train_ids, looks_like_train_ids, unknown_label_values

#: Intrinsics in Cityscapes camera files refer to the full 2048x1024 frame.
CITYSCAPES_SIZE = (2048, 1024)


@dataclass(frozen=True)
class SceneRef:
    scene_id: str
    image: Path
    label: Path
    label_kind: str  # "labelIds" | "labelTrainIds"
    instances: Path | None = None
    camera: Path | None = None


@dataclass
class Scene:
    scene_id: str
    image: np.ndarray  # HxWx3 uint8 RGB
    label: np.ndarray  # HxW uint8 trainIds (255 void)
    camera: dict | None = None
    instances: np.ndarray | None = None
    unknown_label_pixels: int = 0  # pixels with a value that is no id (made void)


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


def load_scene(ref: SceneRef, with_instances: bool = False, max_unknown_label_fraction: float = 0.001) -> Scene:
    """Decode one scene; BadInputError names the file when anything is off. Label values that are no id of the
    file's kind become void; above ``max_unknown_label_fraction`` of the pixels the scene is refused
    (``bad_label_values``), below it their count goes into the sample's meta.json."""
    image = read_rgb(ref.image)
    raw = read_gray(ref.label)
    if raw.shape != image.shape[:2]:
        raise BadInputError(
            f"{ref.label}: label is {raw.shape[1]}x{raw.shape[0]} but image {ref.image.name} is "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    if ref.label_kind == "labelIds" and (zeros := looks_like_train_ids(raw)) is not None:
        raise BadInputError(
            f"{ref.label}: looks like trainIds saved under a *_labelIds.png name (every value is a trainId 0-18 or "
            f"255, and {zeros:.0%} are 0, which trainIds call road); name it *_gtFine_labelTrainIds.png",
            reason="labels_look_like_trainids",
        )
    unknown, values = unknown_label_values(raw, ref.label_kind)
    if unknown > max_unknown_label_fraction * raw.size:
        raise BadInputError(
            f"{ref.label}: {unknown} pixels ({unknown / raw.size:.2%}) hold values {values[:10]} that are no "
            f"Cityscapes {ref.label_kind} (more than {max_unknown_label_fraction:.2%} allowed)",
            reason="bad_label_values",
        )
    label = label_ids_to_train_ids(raw) if ref.label_kind == "labelIds" else raw.copy()
    label[np.isin(raw, values)] = 255  # unknown values are void, whatever the kind
    camera = None
    if ref.camera is not None:
        try:
            camera = json.loads(ref.camera.read_text())
            camera["intrinsic"]["fy"], camera["intrinsic"]["v0"], camera["extrinsic"]["pitch"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BadInputError(f"{ref.camera}: not a Cityscapes camera file ({e!r})") from None
    instances = None
    if with_instances and ref.instances is not None:
        instances = read_gray16(ref.instances)
    return Scene(ref.scene_id, image, label, camera, instances, unknown)


def scene_identity(refs: list[SceneRef]) -> str:
    """sha256 of every scene file's path, size and modification time: a replaced or fixed scene file makes a
    new shard version (hashing the bytes of a whole dataset on every run would cost minutes)."""
    h = hashlib.sha256()
    for ref in refs:
        for p in (ref.image, ref.label, ref.instances, ref.camera):
            if p is not None:
                st = p.stat()  # the resolved path: runs/x and /abs/runs/x are the same scenes
                h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def horizon_from_camera(camera: dict, image_height: int) -> float:
    """Horizon row ``v0 + fy·tan(−pitch)``, rescaled from the 1024-row frame the intrinsics refer to."""
    intr, extr = camera["intrinsic"], camera["extrinsic"]
    s = image_height / CITYSCAPES_SIZE[1]
    return s * (float(intr["v0"]) + float(intr["fy"]) * math.tan(-float(extr["pitch"])))


def camera_height(camera: dict | None, default: float) -> float:
    """Height of the camera above the ground in metres (extrinsic z), or ``default``."""
    if camera is None:
        return default
    z = float(camera.get("extrinsic", {}).get("z", 0.0))
    return z if z > 0 else default
