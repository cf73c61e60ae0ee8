"""Streaming training data from a shard version (WebDataset), plus the object-context images CoroCL contrasts.

A chain of small stages over an iterator of dicts, like webdataset's own:

    shard URLs ─▶ resampled shards ─▶ tar samples ─▶ split filter ─▶ shuffle buffer ─▶ decode ─▶ crop + flip
               ─▶ batches of (image float N×3×H×W in [0, 1], label int64 N×H×W)

Samples are decoded by ``tasks.sample_format`` (either image format; labels as single-channel PNGs, which
webdataset's ``rgb8`` decoder would turn into three channels); shards are opened through fsspec, so any URL
fsspec knows works. The split is a pure function of the sample key, so train and validation never overlap, whatever the
shard order. Every random choice is drawn from generators seeded by (config seed, rank, worker).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tasks.labels import ANOMALY, SHARD_LABEL_VALUES, VOID
from tasks.sample_format import DATASET, SAMPLES, SHARDS, SampleFormatError, composite_key, decode_parts
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
    import fsspec

    for sample in src:
        url = sample["url"]
        try:
            stream = fsspec.open(url, "rb").open() if is_url(url) else open(url, "rb")  # noqa: SIM115
        except OSError as e:
            raise ShardDataError(f"{url}: cannot open shard ({e})") from e
        yield sample | {"stream": stream}


def _tar_samples(src: Iterator[dict]) -> Iterator[dict]:
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


def random_crop_flip(image: np.ndarray, label: np.ndarray, crop: tuple[int, int], rng: random.Random):
    """A random (H, W) crop (padding with void / black when the image is smaller) and a horizontal flip (p=½)."""
    ch, cw = crop
    h, w = label.shape
    if h < ch or w < cw:
        ph, pw = max(0, ch - h), max(0, cw - w)
        image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        label = cv2.copyMakeBorder(label, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=VOID)
        h, w = label.shape
    y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)  # inclusive ends: every position is possible
    image, label = image[y : y + ch, x : x + cw], label[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0, torch.from_numpy(label.astype(np.int64))


class TrainStream(IterableDataset):
    """Endless stream of augmented training samples (resampled shards: each worker draws shards with
    replacement, so epochs are counted in samples, not passes)."""

    def __init__(
        self,
        urls: list[str],
        crop,
        val_fraction: float,
        shuffle_buffer: int,
        seed: int,
        rank: int = 0,
        min_visibility: float | None = None,
    ):
        self.urls, self.crop, self.val_fraction = urls, tuple(crop), val_fraction
        self.shuffle_buffer, self.seed, self.rank = shuffle_buffer, seed, rank
        self.min_visibility = min_visibility

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info else 0
        seed = self.seed * 1_000_003 + self.rank * 1009 + worker
        rng = random.Random(seed)
        pipeline = wds.DataPipeline(
            wds.ResampledShards(self.urls, seed=seed, deterministic=True),
            _tar_samples,
            wds.select(lambda s: not in_validation(s["__key__"], self.val_fraction)),
            wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 16), rng=random.Random(seed + 1)),
            wds.map(partial(decode_sample, min_visibility=self.min_visibility)),
        )
        for s in pipeline:
            yield to_tensors(*random_crop_flip(s["image"], s["label"], self.crop, rng))


def validation_samples(urls: list[str], fraction: float, limit: int | None = None) -> Iterator[dict]:
    """The held-in validation composites, whole images, in shard order (one pass)."""
    n = 0
    for s in wds.DataPipeline(wds.SimpleShardList(urls), _tar_samples):
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


def check_splits(version: str | Path, fraction: float, need_validation: bool = True) -> tuple[int, int]:
    """(training, validation) sample counts, or a ``ShardDataError`` naming the version when a split that will
    be read is empty (an endless resampled stream over empty shards would otherwise wait forever)."""
    n_train, n_val = count_samples(version, fraction)
    total = n_train + n_val
    if n_train == 0:
        raise ShardDataError(
            f"{version}: {total} samples, none of them for training (val_fraction {fraction}); nothing to train on"
        )
    if need_validation and fraction > 0 and n_val == 0:
        raise ShardDataError(
            f"{version}: the held-in validation split is empty ({total} samples, val_fraction {fraction}); raise "
            f"val_fraction, or set it to 0 to evaluate on the training composites"
        )
    return n_train, n_val


def check_rank_splits(version: str | Path, fraction: float, world: int) -> None:
    """A ``ShardDataError`` when the shards of some process of ``world`` (``rank_shards``) hold no training sample: that
    process's endless stream would never yield, and the others would wait for it in the all-reduce forever. Every
    process checks every rank, so all of them stop together."""
    if world <= 1:
        return
    rows = Store(version).read_parquet(SAMPLES, ["key", "shard"]).to_pylist()
    train_shards = {r["shard"] for r in rows if not in_validation(r["key"], fraction)}
    names = [u.rsplit("/", 1)[-1] for u in shard_urls(version)]
    for rank in range(world):
        own = rank_shards(names, rank, world)
        if not train_shards & set(own):
            raise ShardDataError(
                f"{version}: the shards of process {rank} of {world} ({', '.join(own)}) hold no training sample "
                f"(val_fraction {fraction}); write the version with more samples per shard or launch fewer processes"
            )


def rank_shards(urls: list[str], rank: int, world: int) -> list[str]:
    """The shards process ``rank`` of ``world`` streams: every ``world``-th one from ``rank`` on, so the processes of
    a multi-GPU run read disjoint shards. A version with fewer shards than processes is an error."""
    if world > len(urls):
        raise ShardDataError(
            f"{len(urls)} shards for {world} processes: each process streams its own shards; write the version with "
            f"more, smaller shards (shards.samples_per_shard) or launch fewer processes"
        )
    return urls[rank::world]


def train_loader(urls: list[str], cfg, rank: int = 0, world: int = 1) -> DataLoader:
    """Batches for process ``rank`` of ``world``, from its own shards (``rank_shards``). Workers are capped at the
    number of those shards (each worker needs its own)."""
    urls = rank_shards(urls, rank, world)
    workers = max(0, min(cfg.workers, len(urls)))
    stream = TrainStream(urls, cfg.crop, cfg.val_fraction, cfg.shuffle_buffer, cfg.seed, rank, cfg.min_visibility)
    return DataLoader(stream, batch_size=cfg.batch_size, num_workers=workers, persistent_workers=workers > 0)


# ---- CoroCL's object context ------------------------------------------------------------------------------------


def context_batch(objects: list[np.ndarray], n: int, size: int, rng: random.Random):
    """``n`` object-source images (RGBA bank crops: the object on its own background) resized into ``size``²
    squares: label ANOMALY under the object's mask, 0 (inlier) on its background, VOID in the padding."""
    images, labels = [], []
    for _ in range(n):
        rgba = objects[rng.randrange(len(objects))]
        h, w = rgba.shape[:2]
        s = size / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        rgba = cv2.resize(rgba, (nw, nh), interpolation=cv2.INTER_LINEAR)
        img = np.zeros((size, size, 3), np.uint8)
        lab = np.full((size, size), VOID, np.uint8)
        y, x = (size - nh) // 2, (size - nw) // 2
        img[y : y + nh, x : x + nw] = rgba[..., :3]
        lab[y : y + nh, x : x + nw] = np.where(rgba[..., 3] >= 128, ANOMALY, 0)
        if rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        t_img, t_lab = to_tensors(np.ascontiguousarray(img), np.ascontiguousarray(lab))
        images.append(t_img)
        labels.append(t_lab)
    return torch.stack(images), torch.stack(labels)
