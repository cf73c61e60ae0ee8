"""What every scene source gives: a ``SceneRef`` per scene (files + how to read them), decoded by ``load_scene``.

A label is read through its encoding (``tasks.labels.LABEL_ENCODINGS``: Cityscapes labelIds, trainIds, a
dataset's own class table) into trainIds; a scene may be resized on load (``SceneRef.size``), may carry the
dataset's condition tag, and says when its label is a frozen segmenter's prediction.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from schemas import PseudoLabelRecord, RejectRecord
from schemas.registries import LABEL_ENCODINGS
from tasks.imageio import BadInputError, read_gray, read_gray16, read_rgb
from tasks.labels import VOID, looks_like_train_ids, unknown_label_values

#: Intrinsics in Cityscapes camera files refer to the full 2048x1024 frame.
CITYSCAPES_SIZE = (2048, 1024)


@dataclass(frozen=True)
class SceneRef:
    scene_id: str
    image: Path
    label: Path
    label_kind: str  # a label encoding (tasks.labels.LABEL_ENCODINGS): "labelIds", "labelTrainIds", ...
    instances: Path | None = None
    camera: Path | None = None
    size: tuple[int, int] | None = None  # (W, H) the scene is resized to on load; None: as stored
    condition: str | None = None  # the dataset's own condition tag (ACDC: fog, night, rain, snow)
    pseudo_label: PseudoLabelRecord | None = None  # the label is a frozen segmenter's prediction


@dataclass
class Scene:
    scene_id: str
    image: np.ndarray  # HxWx3 uint8 RGB
    label: np.ndarray  # HxW uint8 trainIds (255 void)
    camera: dict | None = None
    instances: np.ndarray | None = None
    unknown_label_pixels: int = 0  # pixels with a value that is no id (made void)
    condition: str | None = None
    pseudo_label: PseudoLabelRecord | None = None


def list_images(folder: Path, pattern: str, what: str) -> list[Path]:
    """``folder.glob(pattern)`` sorted; a clear error naming the expected layout when the folder or files are
    missing."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: {folder} does not exist")
    images = sorted(folder.glob(pattern))
    if not images:
        raise FileNotFoundError(f"{what}: no {pattern} under {folder}")
    return images


def pair_labels(
    images: list[Path],
    label_of: Callable[[Path], tuple[Path, str]],
    scene_id_of: Callable[[Path], str],
    limit: int | None = None,
    **fields,
) -> tuple[list[SceneRef], list[RejectRecord]]:
    """A ``SceneRef`` per image whose label (``label_of(image)`` -> (path, encoding)) exists; the others are
    rejected (``missing_label``). ``fields``: a function of the image per extra ``SceneRef`` field, or a value."""
    refs: list[SceneRef] = []
    rejects: list[RejectRecord] = []
    for img in images:
        label, kind = label_of(img)
        if not label.exists():
            rejects.append(RejectRecord(stage="scenes", item=str(img), reason="missing_label", detail=str(label)))
            continue
        extra = {k: v(img) if callable(v) else v for k, v in fields.items()}
        refs.append(SceneRef(scene_id=scene_id_of(img), image=img, label=label, label_kind=kind, **extra))
        if limit and len(refs) >= limit:
            break
    return refs, rejects


def load_scene(ref: SceneRef, with_instances: bool = False, max_unknown_label_fraction: float = 0.001) -> Scene:
    """Decode one scene; BadInputError names the file when anything is off. Label values that are no id of the
    file's encoding become void; above ``max_unknown_label_fraction`` of the pixels the scene is refused
    (``bad_label_values``), below it their count goes into the sample's meta.json. With ``ref.size`` the image is
    resized (area) and a label stored at the image's own size is resized with it (nearest)."""
    image = read_rgb(ref.image)
    raw = read_gray(ref.label)
    stored = image.shape[:2]
    if ref.size is not None and (ref.size[1], ref.size[0]) != stored:
        image = cv2.resize(image, ref.size, interpolation=cv2.INTER_AREA)
        if raw.shape == stored:
            raw = cv2.resize(raw, ref.size, interpolation=cv2.INTER_NEAREST)
    if raw.shape != image.shape[:2]:
        raise BadInputError(
            f"{ref.label}: label is {raw.shape[1]}x{raw.shape[0]} but image {ref.image.name} is "
            f"{stored[1]}x{stored[0]}" + (f" (resized to {ref.size[0]}x{ref.size[1]})" if ref.size else "")
        )
    encoding = LABEL_ENCODINGS.get(ref.label_kind)
    if encoding.check_train_ids and (zeros := looks_like_train_ids(raw)) is not None:
        raise BadInputError(
            f"{ref.label}: looks like trainIds saved under a *_labelIds.png name (every value is a trainId 0-18 or "
            f"255, and {zeros:.0%} are 0, which trainIds call road); name it *_gtFine_labelTrainIds.png",
            reason="labels_look_like_trainids",
        )
    unknown, values = unknown_label_values(raw, ref.label_kind)
    if unknown > max_unknown_label_fraction * raw.size:
        raise BadInputError(
            f"{ref.label}: {unknown} pixels ({unknown / raw.size:.2%}) hold values {values[:10]} that are no "
            f"{ref.label_kind} (more than {max_unknown_label_fraction:.2%} allowed)",
            reason="bad_label_values",
        )
    label = encoding.to_train_ids(raw)
    label[np.isin(raw, values)] = VOID  # unknown values are void, whatever the encoding
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
        if instances.shape != label.shape:
            instances = cv2.resize(instances, label.shape[::-1], interpolation=cv2.INTER_NEAREST)
    return Scene(ref.scene_id, image, label, camera, instances, unknown, ref.condition, ref.pseudo_label)


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
