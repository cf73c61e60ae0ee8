"""Reading a shard version, shared by training (the stream, the held-in split) and evaluation (``kind: shards``):
its shard URLs from the manifest, raw tar samples through fsspec, the decode checked against the label convention,
and the held-in split, a pure function of the sample key (train and validation never overlap, whatever the shard
order)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import webdataset as wds

from tasks.labels import ANOMALY, SHARD_LABEL_VALUES, VOID, to_eval_labels
from tasks.sample_format import DATASET, SAMPLES, SHARDS, SampleFormatError, composite_key, decode_parts
from tasks.scoring import EvalSample
from tasks.storage import Store, is_url

ShardDataError = SampleFormatError  # a sample or shard that cannot be read (names the shard and key)


def shard_urls(version: str | Path) -> list[str]:
    """The shard URLs of a version, from its manifest (local path or an fsspec URL such as ``s3://b/v0003``)."""
    store = Store(version)
    if not store.isfile(DATASET):
        raise FileNotFoundError(f"{store.path()}: not a complete shard version ({DATASET} missing)")
    return [str(store.path(n)) for n in store.read_parquet(SHARDS, ["shard"]).column("shard").to_pylist()]


def _open_shards(src: Iterator[dict]) -> Iterator[dict]:
    """webdataset's ``url_opener`` stage, opening local paths and any fsspec URL (``s3://``, ``file://``, ...)."""
    for sample in src:
        url = sample["url"]
        try:
            stream = fsspec.open(url, "rb").open() if is_url(url) else open(url, "rb")  # noqa: SIM115
        except OSError as e:
            raise ShardDataError(f"{url}: cannot open shard ({e})") from e
        yield sample | {"stream": stream}


def tar_samples(src: Iterator[dict]) -> Iterator[dict]:
    """Shard URLs → raw samples (dicts of member suffix → bytes, plus ``__key__`` and ``__url__``)."""
    return wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander(_open_shards(src)))


def in_validation(key: str, fraction: float) -> bool:
    """Held-in validation split: a fixed fraction of composites, chosen by the hash of their key (stable across shard
    orders; every condition of one composite falls on the same side)."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha1(composite_key(key).encode()).digest()[:4], "big")
    return h < fraction * 2**32


def decode_sample(sample: dict, min_visibility: float | None = None) -> dict:
    """Raw tar sample (either image format) → RGB uint8 H×W×3 and single-channel uint8 label, checked against
    the shard label convention, and the sample's condition (``None`` for shards made before the weather stage).
    With ``min_visibility``, objects the weather made fainter than that (``void_hidden_objects``) are made void."""
    where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    parts = {k: v for k, v in sample.items() if not k.startswith("__")}
    s = decode_parts(sample["__key__"], parts, where)
    bad = set(np.unique(s.label).tolist()) - SHARD_LABEL_VALUES
    if bad:
        raise ShardDataError(f"{where}: label values {sorted(bad)} are outside trainIds 0-18, {ANOMALY}, {VOID}")
    meta = json.loads(s.meta) if s.meta else {}
    label = s.label if min_visibility is None else void_hidden_objects(s.label, meta, min_visibility)
    return {"__key__": s.key, "image": s.image, "label": label, "condition": meta.get("condition")}


def _hidden(after: float | None, before: float | None, threshold: float) -> bool:
    return after is not None and before is not None and after < threshold and after < before


def void_hidden_objects(label: np.ndarray, meta: dict, min_visibility: float) -> np.ndarray:
    """``label`` with the anomaly pixels of every object the weather hid set to void: its visibility (ΔE to its
    surround) fell under the effect and ends below ``min_visibility``. Such an object is taught as neither anomaly
    nor inlier. Objects that were faint before the effect, clear samples and runs without weather are kept; boxes
    never overlap."""
    objects = meta.get("objects", [])
    hidden = [o["box"] for o in objects if _hidden(o.get("visibility"), o.get("visibility_clear"), min_visibility)]
    if not hidden:
        return label
    label = label.copy()
    for x0, y0, x1, y1 in hidden:
        region = label[y0:y1, x0:x1]
        region[region == ANOMALY] = VOID
    return label


def validation_samples(urls: list[str], fraction: float, limit: int | None = None) -> Iterator[dict]:
    """The held-in validation composites, whole images, in shard order (one pass)."""
    n = 0
    for s in wds.DataPipeline(wds.SimpleShardList(urls), tar_samples):
        if fraction > 0 and not in_validation(s["__key__"], fraction):
            continue
        yield decode_sample(s)
        n += 1
        if limit is not None and n >= limit:
            return


def count_samples(version: str | Path, fraction: float) -> tuple[int, int]:
    """(training samples, validation samples) of a version (local or an fsspec URL), from its manifest."""
    keys = Store(version).read_parquet(SAMPLES, ["key"]).column("key").to_pylist()
    val = sum(in_validation(k, fraction) for k in keys)
    return len(keys) - val, val


@dataclass
class ShardSplit:
    """The held-in validation split of a shard version (sample keys chosen by hash, ``in_validation``; every
    sample with ``val_fraction`` 0): the composites with evaluation labels (254 → anomaly), their trainIds for the
    closed-set mIoU, and the condition their ``meta.json`` records (a weather evaluation split, ``synth`` with
    ``weather.mode: every``)."""

    name: str
    kind: str
    version: str
    val_fraction: float

    def samples(self, limit: int | None = None) -> Iterator[EvalSample]:
        for s in validation_samples(shard_urls(self.version), self.val_fraction, limit):
            yield EvalSample(s["__key__"], s["image"], to_eval_labels(s["label"]), s["condition"], s["label"])
