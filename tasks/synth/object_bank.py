"""The object bank: RGBA crops + binary masks + ObjectRecords, stored as WebDataset shards with a
parquet manifest so later flows sample from it without re-running extraction.

Layout of a bank directory::

    objects-000000.tar      samples: <object_id>.rgba.png (crop with its own background in RGB, alpha = mask),
                            <object_id>.mask.png (binary 0/255), <object_id>.json (ObjectRecord)
    objects.parquet         one row per object (ObjectRecord fields + shard name)
    rejects.parquet         every item that did not make it, with stage and reason
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import webdataset as wds
import yaml

from data_manifests import MANIFEST_DIR
from data_manifests.parquet import OBJECT_SCHEMA
from schemas import FilesSourceConfig, MaskGateConfig, ObjectRecord, RejectRecord
from tasks.imageio import (
    BadInputError,
    decode_rgba,
    encode_gray_png,
    encode_rgba_png,
    read_gray,
    read_rgb,
)
from tasks.sample_format import REJECTS
from tasks.synth.saliency import gate_mask, mask_quality
from tasks.synth.shards import write_rejects, write_table, write_tar_shard

OBJECT_MANIFEST = "objects.parquet"


@dataclass
class BankObject:
    record: ObjectRecord
    rgba: np.ndarray  # HxWx4 uint8; alpha is the binary mask (0/255)

    @property
    def mask(self) -> np.ndarray:
        return self.rgba[..., 3] >= 128


def crop_object(rgb: np.ndarray, mask: np.ndarray, max_side: int, pad: int = 2) -> np.ndarray:
    """RGBA crop around ``mask`` (bool HxW) with ``pad`` px margin, downscaled to ``max_side``."""
    ys, xs = np.nonzero(mask)
    y0, y1 = max(0, ys.min() - pad), min(mask.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(mask.shape[1], xs.max() + pad + 1)
    alpha = mask[y0:y1, x0:x1].astype(np.uint8) * 255
    rgba = np.dstack([rgb[y0:y1, x0:x1], alpha])
    s = max_side / max(rgba.shape[:2])
    if s < 1:
        size = (max(1, round(rgba.shape[1] * s)), max(1, round(rgba.shape[0] * s)))
        rgba = cv2.resize(rgba, size, interpolation=cv2.INTER_AREA)
        rgba[..., 3] = np.where(rgba[..., 3] >= 128, 255, 0)
    return np.ascontiguousarray(rgba)


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
    import skimage.data

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


# ---------------------------------------------------------------- bank storage


def bank_sample(o: BankObject) -> dict:
    """The WebDataset sample of one bank object."""
    return {
        "__key__": o.record.object_id,
        "rgba.png": encode_rgba_png(o.rgba),
        "mask.png": encode_gray_png(np.where(o.mask, 255, 0).astype(np.uint8)),
        "json": o.record.model_dump_json().encode(),
    }


def manifest_row(record: dict, shard: str | None) -> dict:
    """An ``objects.parquet`` row from an ObjectRecord dumped as JSON."""
    return record | {"quality": json.dumps(record["quality"], sort_keys=True), "shard": shard}


def write_object_bank(
    bank_dir: str | Path, objects: list[BankObject], rejects: list[RejectRecord], objects_per_shard: int
) -> Path:
    """Write the bank (shards first, manifest last: a bank without its manifest is not a bank)."""
    bank_dir = Path(bank_dir)
    bank_dir.mkdir(parents=True, exist_ok=True)
    # the same photo listed twice is one object: ids are content hashes
    objects = sorted({o.record.object_id: o for o in objects}.values(), key=lambda o: o.record.object_id)
    rows = []
    for s in range(0, len(objects), objects_per_shard):
        chunk = objects[s : s + objects_per_shard]
        name = f"objects-{s // objects_per_shard:06d}.tar"
        write_tar_shard(bank_dir / name, [bank_sample(o) for o in chunk])
        rows += [manifest_row(o.record.model_dump(mode="json"), name) for o in chunk]
    write_table(bank_dir / OBJECT_MANIFEST, rows, OBJECT_SCHEMA)
    write_rejects(bank_dir / REJECTS, rejects)
    return bank_dir / OBJECT_MANIFEST


def read_object_bank(bank_dir: str | Path) -> list[BankObject]:
    """Load every object of a bank, in object_id order."""
    bank_dir = Path(bank_dir)
    manifest = bank_dir / OBJECT_MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"not an object bank: {manifest} is missing (was the bank built?)")
    table = pq.read_table(manifest)
    shards = sorted(set(table.column("shard").to_pylist()))
    objects = []
    for shard in shards:
        for sample in wds.WebDataset(str(bank_dir / shard), shardshuffle=False, empty_check=False):
            rec = ObjectRecord.model_validate_json(sample["json"])
            objects.append(BankObject(rec, decode_rgba(sample["rgba.png"], f"{shard}:{sample['__key__']}")))
    if len(objects) != table.num_rows:
        raise ValueError(f"{bank_dir}: manifest lists {table.num_rows} objects, shards hold {len(objects)}")
    return sorted(objects, key=lambda o: o.record.object_id)
