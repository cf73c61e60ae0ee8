"""The object bank: RGBA crops + binary masks + ObjectRecords, stored as WebDataset shards with a
parquet manifest so later flows sample from it without re-running extraction.

Layout of a bank directory::

    objects-000000.tar      samples: <object_id>.rgba.png (crop with its own background in RGB, alpha = mask),
                            <object_id>.mask.png (binary 0/255), <object_id>.json (ObjectRecord)
    objects.parquet         one row per object (ObjectRecord fields + shard name)
    rejects.parquet         every item that did not make it, with stage and reason
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import webdataset as wds

from data_manifests.parquet import OBJECT_SCHEMA
from schemas import ObjectRecord, RejectRecord
from tasks.imageio import (
    decode_rgba,
    encode_gray_png,
    encode_rgba_png,
)
from tasks.sample_format import REJECTS
from tasks.shards import write_rejects, write_table, write_tar_shard

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
