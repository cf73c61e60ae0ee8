"""The shard sample format, written once: the keys and encodings of a sample and the file names of a shard set.

The shard writer, the validator, the run report and the training reader all import this module, so a sample
written in either image format is read the same way everywhere.

A sample is the group of tar members sharing a key (no dots, no slashes)::

    <key>.image.jpg | <key>.image.png   RGB composite (``ShardConfig.image_format``)
    <key>.label.png                     uint8 trainIds 0-18, 254 anomaly, 255 void (single channel)
    <key>.mask.png                      uint8 0/255, the pasted objects
    <key>.meta.json                     ``schemas.SampleMeta``

A shard set (one version) holds ``shard-*.tar`` plus the manifests named below. The samples of one composite
rendered in several weather conditions (an evaluation split) are keyed ``<composite>__<condition>``; the held-in
split is decided on ``composite_key``, so the renderings of a composite are never split between training and
validation.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass

import numpy as np

from tasks.imageio import BadInputError, decode_gray, decode_rgb, encode_gray_png, encode_rgb

IMAGE_FORMATS: tuple[str, ...] = ("jpg", "png")
IMAGE_PREFIX = "image."
LABEL = "label.png"
MASK = "mask.png"
META = "meta.json"
REQUIRED = (LABEL, MASK, META)  # besides exactly one image.<format>

# the shard set's manifests
SAMPLES = "samples.parquet"
SHARDS = "shards.parquet"
REJECTS = "rejects.parquet"
DATASET = "dataset.json"
SHARD_PATTERN = "shard-{:06d}.tar"
CONDITION_SEP = "__"  # <composite>__<condition>


def composite_key(key: str) -> str:
    """The key of the composite a sample renders (the key itself unless it ends in ``__<condition>``)."""
    return key.split(CONDITION_SEP, 1)[0]


class SampleFormatError(BadInputError):
    """A sample that does not follow the format (the message names the shard and key)."""


def image_part(fmt: str) -> str:
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {fmt!r} ({' or '.join(IMAGE_FORMATS)})")
    return IMAGE_PREFIX + fmt


def encode_sample(
    key: str,
    image: np.ndarray,
    label: np.ndarray,
    mask: np.ndarray,
    meta_json: bytes,
    image_format: str = "jpg",
    jpeg_quality: int = 95,
) -> dict:
    """The tar members of one sample (``webdataset.ShardWriter`` input)."""
    return {
        "__key__": key,
        image_part(image_format): encode_rgb(image, image_format, jpeg_quality),
        LABEL: encode_gray_png(label),
        MASK: encode_gray_png(mask),
        META: meta_json,
    }


def find_image(parts: dict, where: str) -> str:
    """The sample's one ``image.<format>`` member name."""
    images = [k for k in parts if k.startswith(IMAGE_PREFIX)]
    if len(images) != 1:
        raise SampleFormatError(
            f"{where}: expected one of {', '.join(map(image_part, IMAGE_FORMATS))}, found {images or 'none'}"
        )
    if images[0][len(IMAGE_PREFIX) :] not in IMAGE_FORMATS:
        raise SampleFormatError(f"{where}: {images[0]} is not a known image format ({', '.join(IMAGE_FORMATS)})")
    return images[0]


@dataclass
class DecodedSample:
    key: str
    image: np.ndarray  # H×W×3 uint8 RGB
    label: np.ndarray  # H×W uint8 trainIds / 254 / 255
    mask: np.ndarray | None
    meta: bytes | None


def decode_parts(key: str, parts: dict, where: str, with_mask: bool = False) -> DecodedSample:
    """Decode one sample's members (``parts``: member suffix → bytes). Image and label are required; the mask
    and meta are decoded when present (and the mask required with ``with_mask``). Errors name ``where``."""
    img_key = find_image(parts, where)
    needed = (LABEL, MASK) if with_mask else (LABEL,)
    missing = [p for p in needed if p not in parts]
    if missing:
        raise SampleFormatError(f"{where}: sample lacks {', '.join(missing)} (has {sorted(parts)})")
    try:
        image = decode_rgb(parts[img_key], f"{where}/{img_key}")
        label = decode_gray(parts[LABEL], f"{where}/{LABEL}")
        mask = decode_gray(parts[MASK], f"{where}/{MASK}") if MASK in parts else None
    except BadInputError as e:
        raise SampleFormatError(str(e)) from None
    if label.shape != image.shape[:2]:
        raise SampleFormatError(f"{where}: label {label.shape} and image {image.shape[:2]} differ in size")
    return DecodedSample(key, image, label, mask, parts.get(META))


PARTS = (*map(image_part, IMAGE_FORMATS), *REQUIRED)


def split_member(name: str) -> tuple[str, str]:
    """``<key>.<part>`` → (key, part); the key is everything before the first dot."""
    key, _, part = name.partition(".")
    return key, part


def member_problem(m: tarfile.TarInfo) -> str | None:
    """Why a tar member is not a sample part we may read (None when it is one). Unsafe members (absolute
    paths, ``..``, links, devices, fifos) are never extracted or opened."""
    name = m.name
    if name.startswith("/") or ".." in name.split("/"):
        return f"unsafe_member {name!r} (a path outside the shard)"
    if not (m.isfile() or m.isdir()):
        kind = "link" if (m.issym() or m.islnk()) else "device or fifo"
        return f"unsafe_member {name!r} (a {kind})"
    if m.isdir():
        return None  # a directory entry holds nothing to read
    if "/" in name:
        return f"key_has_slash {name!r} (sample keys are flat names)"
    key, part = split_member(name)
    if not part:
        return f"member {name!r} has no extension"
    if part not in PARTS and any(part.endswith("." + p) for p in PARTS):
        return f"key_has_dot {name!r} (the key is everything before the first dot: keys carry no dots)"
    return None


def read_tar_samples(tar: tarfile.TarFile, where: str) -> tuple[dict[str, dict[str, bytes]], list[str]]:
    """(the readable members of an open shard grouped by sample key, in tar order; problems). A member that
    ``member_problem`` names is skipped, never opened, and listed in the problems."""
    samples: dict[str, dict[str, bytes]] = {}
    problems: list[str] = []
    for m in tar:  # in order, so a tar opened as a stream (mode "r|", one pass over a download) reads too
        problem = member_problem(m)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        if m.isdir():
            continue
        key, part = split_member(m.name)
        samples.setdefault(key, {})[part] = tar.extractfile(m).read()
    return samples, problems
