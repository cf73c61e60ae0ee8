"""Re-read a shard set and check it against its manifest (``anomalyforge validate SHARD_DIR``).

The set may be a local directory or an fsspec URL (``tasks.storage``); each shard is read once, as a stream,
hashed and unpacked in the same pass.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from schemas import SampleMeta
from tasks.conditions import CLEAR, conditions
from tasks.labels import ANOMALY, SHARD_LABEL_VALUES
from tasks.sample_format import META, REQUIRED, SAMPLES, SHARDS, SampleFormatError, decode_parts, read_tar_samples
from tasks.storage import HashingReader, Store


def check_sample(name: str, files: dict[str, bytes]) -> list[str]:
    """Every problem of one sample: missing parts, undecodable images, label values, label/mask agreement."""
    problems = [f"{name}: missing {part}" for part in REQUIRED if part not in files]
    try:
        decoded = decode_parts(name, files, name, with_mask=True)
    except SampleFormatError as e:
        return [*problems, str(e)]
    if problems:
        return problems
    image, label, mask = decoded.image, decoded.label, decoded.mask
    if mask.shape != label.shape:
        return [f"{name}: sizes differ: image {image.shape[:2]}, label {label.shape}, mask {mask.shape}"]
    bad = sorted(set(np.unique(label).tolist()) - SHARD_LABEL_VALUES)
    if bad:
        problems.append(f"{name}: label has values outside trainIds 0-18, 254, 255: {bad[:10]}")
    mvals = set(np.unique(mask).tolist())
    if not mvals <= {0, 255}:
        problems.append(f"{name}: mask has values other than 0/255: {sorted(mvals - {0, 255})[:10]}")
    disagree = int(np.count_nonzero((label == ANOMALY) != (mask == 255)))
    if disagree:
        problems.append(f"{name}: label == 254 and mask disagree on {disagree} pixels")
    try:
        meta = SampleMeta.model_validate_json(files[META])
    except ValueError as e:
        problems.append(f"{name}: meta.json invalid: {str(e).splitlines()[0]}")
    else:
        if (meta.width, meta.height) != (label.shape[1], label.shape[0]):
            problems.append(
                f"{name}: meta.json says {meta.width}x{meta.height}, label is {label.shape[1]}x{label.shape[0]}"
            )
        if meta.condition not in conditions():
            problems.append(f"{name}: unknown condition {meta.condition!r} (one of {', '.join(conditions())})")
        elif (
            meta.condition != meta.weather.condition
            if meta.weather is not None
            else meta.condition not in (CLEAR, meta.scene_condition)
        ):
            problems.append(
                f"{name}: condition {meta.condition!r} matches neither its weather record nor the scene's own tag"
            )
    return problems


def validate_shard_set(shard_dir: str | Path, on_shard=None) -> tuple[int, list[str]]:
    """(samples checked, problems). An empty problem list means the set is whole and consistent."""
    store = Store(shard_dir)
    where = store.path()
    problems: list[str] = []
    if store.local and not store.isdir():
        return 0, [f"{where}: {'not a directory' if store.exists() else 'the directory does not exist'}"]
    for f in (SHARDS, SAMPLES):
        if not store.isfile(f):
            return 0, [f"{where}: no {f} manifest (not a finished shard set)"]
    try:
        shards = store.read_parquet(SHARDS).to_pylist()
        listed_samples = {r["key"]: r for r in store.read_parquet(SAMPLES).to_pylist()}
    except ValueError as e:
        return 0, [str(e)]
    on_disk = {n for n in store.listdir() if n.endswith(".tar")}
    listed = {r["shard"] for r in shards}
    problems += [f"{n}: tar file not listed in {SHARDS}" for n in sorted(on_disk - listed)]
    seen: set[str] = set()
    checked = 0
    for rec in shards:
        if rec["shard"] not in on_disk:
            problems.append(f"{rec['shard']}: listed in {SHARDS} but missing")
            continue
        samples: dict = {}
        try:
            with store.open(rec["shard"]) as raw:
                stream = HashingReader(raw)
                try:
                    with tarfile.open(fileobj=stream, mode="r|") as tar:
                        samples, member_problems = read_tar_samples(tar, rec["shard"])
                    problems += member_problems
                except tarfile.TarError as e:
                    problems.append(f"{rec['shard']}: unreadable tar ({e})")
                if stream.hexdigest() != rec["sha256"]:
                    problems.append(f"{rec['shard']}: sha256 differs from {SHARDS} (file changed or truncated)")
        except OSError as e:
            problems.append(f"{rec['shard']}: unreadable ({e})")
            continue
        if len(samples) != rec["samples"]:
            problems.append(f"{rec['shard']}: holds {len(samples)} samples, manifest says {rec['samples']}")
        for key, files in samples.items():
            name = f"{rec['shard']}:{key}"
            checked += 1
            seen.add(key)
            if key not in listed_samples:
                problems.append(f"{name}: not listed in {SAMPLES}")
            elif listed_samples[key]["shard"] != rec["shard"]:
                problems.append(f"{name}: {SAMPLES} puts it in {listed_samples[key]['shard']}")
            problems += check_sample(name, files)
        if on_shard is not None:
            on_shard(rec["shard"])
    problems += [f"{k}: listed in {SAMPLES} but in no shard" for k in sorted(set(listed_samples) - seen)]
    return checked, problems
