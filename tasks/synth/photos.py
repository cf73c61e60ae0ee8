"""Objects cut out of photos (a folder of single-object photos, the demo profile's packaged ones): a mask from the
photo's sidecar or manifest or else the salient-mask model, through the mask-quality gate, cropped for the bank."""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import stat
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
from tasks.runtime import check_stop
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


def unreadable_reason(path: Path) -> str | None:
    """Why ``path`` cannot be read as a photo (a symbolic link loop, a broken link, not a regular file, no access),
    or None when it is a readable regular file. Never raises."""
    try:
        st = path.stat()
    except OSError as e:
        target = _link_target(path)
        if e.errno == errno.ELOOP:
            return f"symbolic link loop (points to {target!r}, which never reaches a file)"
        if target is not None and e.errno == errno.ENOENT:
            return f"broken symbolic link (points to {target!r}, which does not exist)"
        return f"cannot read it ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def _link_target(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _photo_candidates(cfg: FilesSourceConfig) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(readable photo files, ``(path, why)`` of those matching the patterns that cannot be read), sorted."""
    if not cfg.root.is_dir():
        raise FileNotFoundError(f"object photo folder not found: {cfg.root}")
    found = sorted({p for pat in cfg.patterns for p in cfg.root.rglob(pat) if not p.name.endswith(".mask.png")})
    if not found:
        raise FileNotFoundError(f"no photos matching {cfg.patterns} under {cfg.root}")
    files, unreadable = [], []
    for p in found:
        why = unreadable_reason(p)
        if why is None:
            files.append(p)
        else:
            unreadable.append((p, why))
    if not files:
        listed = "; ".join(f"{p.name}: {why}" for p, why in unreadable[:5])
        more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        raise FileNotFoundError(
            f"no readable photos matching {cfg.patterns} under {cfg.root}: {len(unreadable)} unreadable ({listed}{more})"
        )
    return (files[: cfg.limit] if cfg.limit else files), unreadable


def list_photo_files(cfg: FilesSourceConfig) -> list[Path]:
    """The readable photos of a folder source (what the bank's identity lists); those that cannot be read (link
    loops, broken links) are left out here and quarantined by ``objects_from_files``."""
    return _photo_candidates(cfg)[0]


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
    files, unreadable = _photo_candidates(cfg)
    for path, why in unreadable:  # one bad link costs its photo, not the run
        rejects.append(RejectRecord(stage="files", item=str(path), reason="unreadable", detail=f"{path}: {why}"))
    for path in files:
        check_stop(f"while masking the photos of {cfg.root}; run the same command again (it starts over)")
        row = manifest.get(path.name, {})
        cls = cfg.class_name or row.get(cfg.class_column) or path.parent.name
        cls = cls.strip().lower()
        if cls in excluded_classes:
            rejects.append(RejectRecord(stage="files", item=str(path), reason="overlaps_cityscapes", detail=cls))
            continue
        try:
            oid = _file_object_id(path)
        except OSError as e:  # gone or unreadable since it was listed
            why = unreadable_reason(path) or f"cannot read it ({e.strerror or e})"
            rejects.append(RejectRecord(stage="files", item=str(path), reason="unreadable", detail=f"{path}: {why}"))
            continue
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
