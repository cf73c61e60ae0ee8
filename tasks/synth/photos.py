"""Objects cut out of photos (a folder of single-object photos, the demo profile's packaged ones): a mask from the
photo's sidecar or manifest or else the salient-mask model, through the mask-quality gate, cropped for the bank."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import yaml

from data_manifests import MANIFEST_DIR
from schemas import FilesSourceConfig, MaskGateConfig, ObjectRecord, RejectRecord
from tasks.imageio import (
    BadInputError,
    read_gray,
    read_rgb,
)
from tasks.object_bank import BankObject, crop_object
from tasks.synth.saliency import gate_mask, mask_quality


def _file_object_id(path: Path) -> str:
    return "file-" + hashlib.sha1(path.read_bytes()).hexdigest()[:16]


def gated_object(
    rgb: np.ndarray,
    soft: np.ndarray,
    gate: MaskGateConfig,
    max_side: int,
    make_record: Callable[[np.ndarray, dict[str, float]], ObjectRecord],
    item: str,
) -> tuple[BankObject | None, RejectRecord | None]:
    """Run the quality gate on a soft mask; build the object or the reject."""
    fig = mask_quality(rgb, soft)
    failed = gate_mask(fig, gate)
    if failed:
        return None, RejectRecord(stage="mask_gate", item=item, reason=failed[0], detail=failed[1])
    rgba = crop_object(rgb, soft >= 0.5, max_side)
    return BankObject(make_record(rgba, fig), rgba), None


def _read_manifest(cfg: FilesSourceConfig) -> dict[str, dict[str, str]]:
    if cfg.manifest is None:
        return {}
    path = cfg.manifest if cfg.manifest.is_absolute() else cfg.root / cfg.manifest
    if not path.is_file():
        raise FileNotFoundError(f"object manifest not found: {path}")
    with open(path, newline="") as f:
        dialect = "excel-tab" if path.suffix == ".tsv" else "excel"
        rows = list(csv.DictReader(f, dialect=dialect))
    if rows and cfg.file_column not in rows[0]:
        raise ValueError(f"{path}: no column {cfg.file_column!r} (has {', '.join(rows[0])})")
    return {r[cfg.file_column]: r for r in rows}


def list_photo_files(cfg: FilesSourceConfig) -> list[Path]:
    if not cfg.root.is_dir():
        raise FileNotFoundError(f"object photo folder not found: {cfg.root}")
    files = sorted({p for pat in cfg.patterns for p in cfg.root.rglob(pat) if not p.name.endswith(".mask.png")})
    if not files:
        raise FileNotFoundError(f"no photos matching {cfg.patterns} under {cfg.root}")
    return files[: cfg.limit] if cfg.limit else files


def objects_from_files(
    cfg: FilesSourceConfig,
    masker: Callable[[np.ndarray], np.ndarray] | None,
    gate: MaskGateConfig,
    max_side: int,
    excluded_classes: set[str] = frozenset(),
) -> tuple[list[BankObject], list[RejectRecord]]:
    """Photos -> objects: sidecar/manifest mask if present, else the salient-mask model, then the gate."""
    manifest = _read_manifest(cfg)
    objects: list[BankObject] = []
    rejects: list[RejectRecord] = []
    first_seen: dict[str, tuple[Path, str]] = {}  # object id (content hash) -> (path, class) that took it
    for path in list_photo_files(cfg):
        row = manifest.get(path.name, {})
        cls = cfg.class_name or row.get(cfg.class_column) or path.parent.name
        cls = cls.strip().lower()
        if cls in excluded_classes:
            rejects.append(RejectRecord(stage="files", item=str(path), reason="overlaps_cityscapes", detail=cls))
            continue
        oid = _file_object_id(path)
        if oid in first_seen:  # the same bytes twice: one object, of the class it was first found as
            first, first_cls = first_seen[oid]
            detail = f"same photo as {first} (class {first_cls!r}); this copy's class {cls!r} is not used"
            rejects.append(RejectRecord(stage="files", item=str(path), reason="duplicate_photo", detail=detail))
            continue
        first_seen[oid] = (path, cls)
        try:
            rgb = read_rgb(path)
            mask_name = row.get(cfg.mask_column) if cfg.mask_column else None
            sidecar = path.parent / (mask_name or f"{path.stem}.mask.png")
            if sidecar.is_file():
                m = read_gray(sidecar)
                if m.shape != rgb.shape[:2]:
                    raise BadInputError(f"{sidecar}: mask is {m.shape[::-1]}, photo is {rgb.shape[1::-1]}")
                soft = m.astype(np.float32) / 255.0
            elif masker is not None:
                soft = masker(rgb)
            else:
                raise BadInputError(f"{path}: no mask file and no salient-mask model configured")
        except BadInputError as e:
            rejects.append(RejectRecord(stage="files", item=str(path), reason="bad_input", detail=str(e)))
            continue

        def record(rgba: np.ndarray, fig: dict[str, float], path: Path = path, cls: str = cls, oid=oid) -> ObjectRecord:
            return ObjectRecord(
                object_id=oid,
                source="file",
                class_name=cls,
                origin=str(path),
                width=rgba.shape[1],
                height=rgba.shape[0],
                mask_area=int((rgba[..., 3] >= 128).sum()),
                quality={k: round(v, 4) for k, v in fig.items()},
            )

        obj, rej = gated_object(rgb, soft, gate, max_side, record, str(path))
        if obj is not None:
            objects.append(obj)
        else:
            rejects.append(rej)
    return objects, rejects


def demo_object_photos(dest: str | Path) -> FilesSourceConfig:
    """Write the scikit-image sample photos listed in ``demo_objects.yaml`` to ``dest`` (a files source)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    entries = yaml.safe_load((MANIFEST_DIR / "demo_objects.yaml").read_text())
    rows = []
    for e in entries:
        img = getattr(skimage.data, e["name"])()
        if img.dtype == bool:  # silhouettes: object black on white
            img = np.where(img, 255, 40).astype(np.uint8)
        if img.ndim == 2:
            img = np.dstack([img] * 3)
        out = dest / f"{e['name']}.png"
        if not out.exists():
            cv2.imwrite(str(out), cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2BGR))
        rows.append({"file": out.name, "class_name": e["class_name"]})
    with open(dest / "objects.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "class_name"])
        w.writeheader()
        w.writerows(rows)
    return FilesSourceConfig(root=dest, manifest=Path("objects.csv"), patterns=["*.png"])
