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

import random
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tasks.imageio import BadInputError
from tasks.labels import ANOMALY, VOID
from tasks.runtime import ignore_interrupts
from tasks.sample_format import SAMPLES
from tasks.seeding import stream_worker_seed
from tasks.shardset import (
    ShardDataError,
    count_samples,
    decode_sample,
    in_validation,
    shard_urls,
    tar_samples,
)
from tasks.storage import Store


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
        seed = stream_worker_seed(self.seed, self.rank, worker)
        rng = random.Random(seed)
        pipeline = wds.DataPipeline(
            wds.ResampledShards(self.urls, seed=seed, deterministic=True),
            tar_samples,
            wds.select(lambda s: not in_validation(s["__key__"], self.val_fraction)),
            wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 16), rng=random.Random(seed + 1)),
            wds.map(partial(decode_sample, min_visibility=self.min_visibility)),
        )
        for s in pipeline:
            yield to_tensors(*random_crop_flip(s["image"], s["label"], self.crop, rng))


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


class CropTooLargeError(BadInputError):
    """The training ``crop`` is larger than the version's images (``check_crop``)."""


def check_crop(version: str | Path, crop: tuple[int, int]) -> None:
    """A ``CropTooLargeError`` (one line) when the (H, W) ``crop`` is taller or wider than every image of the
    version (its ``samples.parquet``): each crop would then be the image plus void padding, a slow step that
    trains on nothing. Images smaller than the crop among larger ones are padded (``random_crop_flip``), as before.
    Run once before training, from the manifest (no shard is opened)."""
    ch, cw = (int(c) for c in crop)
    try:
        table = Store(version).read_parquet(SAMPLES, ["height", "width"])
    except ValueError:  # a manifest without image sizes: nothing to check against
        return
    heights = [h for h in table.column("height").to_pylist() if h]
    widths = [w for w in table.column("width").to_pylist() if w]
    if not heights or not widths:
        return
    mh, mw = max(heights), max(widths)
    if ch <= mh and cw <= mw:
        return
    uniform = min(heights) == mh and min(widths) == mw
    images = f"the shard images {mh}x{mw}" if uniform else f"the largest shard images ({mh}x{mw})"
    fit_h, fit_w = min(ch, mh), min(cw, mw)
    raise CropTooLargeError(
        f"crop {ch}x{cw} (H x W) is larger than {images} in {version}: the rest of every crop would be void "
        f"padding; set crop to at most {fit_h}x{fit_w} (--set crop=[{fit_h},{fit_w}])",
        reason="crop_too_large",
    )


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
    return DataLoader(
        stream,
        batch_size=cfg.batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        worker_init_fn=ignore_interrupts if workers else None,
    )


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
