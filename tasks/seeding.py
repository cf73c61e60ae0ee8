"""The one seed-derivation helper: every random choice comes from (config seed, stable names)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


def derive_seed(seed: int, *names: object) -> int:
    """A 63-bit seed from a root seed and a path of names, stable across runs, processes and platforms.

    ``derive_seed(0, "sample", 17)`` is independent of the order in which samples are produced, which
    is what makes a resumed run byte-identical to an uninterrupted one.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(str(int(seed)).encode())
    for n in names:
        h.update(b"\x1f")
        h.update(str(n).encode())
    return int.from_bytes(h.digest(), "little") >> 1


def rng_for(seed: int, *names: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *names))


@dataclass(frozen=True)
class TrainingSeeds:
    """The seeds of one training process from ``step`` on: the shard stream's order and crops, the extra-data
    providers (patches, AnomalyMix draws) and the loss's own sampling. A resumed run (``step`` > 0) draws new
    samples instead of replaying the ones it already saw; every process of a multi-process run draws its own."""

    stream: int
    extras: int
    loss: int


def training_seeds(seed: int, step: int = 0, rank: int = 0) -> TrainingSeeds:
    """The training seeds of process ``rank`` resuming at ``step``. Rank 0's seeds keep the arithmetic the trainer
    has always used (``seed·7919 + step`` for the stream, ``seed + step`` for extras and loss), so recorded training
    runs reproduce; other ranks derive theirs (``derive_seed``)."""
    extras = seed + step if rank == 0 else derive_seed(seed, "extras", step, rank)
    return TrainingSeeds(stream=seed * 7919 + step, extras=extras, loss=seed + step)


def stream_worker_seed(stream_seed: int, rank: int, worker: int) -> int:
    """The seed of one data-loader worker of process ``rank`` (its shard resampling and crops; its shuffle buffer
    takes the next integer). Kept as the arithmetic the stream has always used, so recorded runs reproduce."""
    return stream_seed * 1_000_003 + rank * 1009 + worker
