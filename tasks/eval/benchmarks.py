"""Readers for anomaly-segmentation benchmarks: Fishyscapes (Lost & Found, Static), RoadAnomaly (original
release and the common preprocessed copy), SMIYC RoadAnomaly21 / RoadObstacle21, LostAndFound and a generic
folder + manifest dataset with weather/light conditions. Every reader yields ``EvalItem``s whose labels
``EvalDataset.load`` converts to evaluation labels (0 inlier, 1 anomaly, 255 void). The layouts and label
values of each kind are in ``data_manifests/benchmarks.md``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.registries import BENCHMARKS, WEATHER
from tasks.conditions import CLEAR, condition_tag, conditions
from tasks.imageio import BadInputError, read_gray, read_rgb
from tasks.labels import EVAL_ANOMALY, EVAL_INLIER, EVAL_VOID
from tasks.scoring import EvalSample
from tasks.shardset import ShardSplit
from tasks.versions import resolve_version

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class EvalItem:
    item_id: str
    image: Path
    label: Path
    condition: str | None = None


@dataclass
class EvalDataset:
    name: str
    kind: str
    items: list[EvalItem]
    to_eval: Callable[[np.ndarray], np.ndarray]

    def __len__(self) -> int:
        return len(self.items)

    def load(self, item: EvalItem) -> tuple[np.ndarray, np.ndarray]:
        """(RGB image, evaluation label 0/1/255); BadInputError names the file on any problem."""
        image = read_rgb(item.image)
        label = self.to_eval(read_gray(item.label))
        if label.shape != image.shape[:2]:
            raise BadInputError(f"{item.label}: label is {label.shape[::-1]}, image is {image.shape[1::-1]}")
        bad = ~np.isin(label, (EVAL_INLIER, EVAL_ANOMALY, EVAL_VOID))
        if bad.any():
            raise BadInputError(f"{item.label}: unexpected label values {np.unique(label[bad])[:5].tolist()}")
        return image, label

    def samples(self, limit: int | None = None) -> Iterator[EvalSample]:
        """The dataset as a stream for ``tasks.scoring.evaluate_samples`` (the first ``limit`` items)."""
        for item in self.items[:limit] if limit else self.items:
            image, label = self.load(item)
            yield EvalSample(item.item_id, image, label, item.condition)


def _identity(label: np.ndarray) -> np.ndarray:
    return label


def _road_anomaly_original(label: np.ndarray) -> np.ndarray:
    return np.where(label == 2, EVAL_ANOMALY, np.where(label == 0, EVAL_INLIER, EVAL_VOID)).astype(np.uint8)


def _lost_and_found(label: np.ndarray) -> np.ndarray:
    out = np.full(label.shape, EVAL_VOID, np.uint8)
    out[label == 1] = EVAL_INLIER
    out[(label >= 2) & (label != 255)] = EVAL_ANOMALY
    return out


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"benchmark folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    return files


def _pair(images: list[Path], label_of: Callable[[Path], Path], root: Path) -> list[EvalItem]:
    items, missing = [], []
    for img in images:
        lab = label_of(img)
        if lab.is_file():
            items.append(EvalItem(img.stem, img, lab))
        else:
            missing.append(str(lab))
    if missing:
        raise FileNotFoundError(f"{root}: {len(missing)} images have no label, e.g. {missing[0]}")
    return items


# BENCHMARKS: kind -> factory(root, name, split, val_fraction) -> a dataset with ``name``, ``kind`` and
# ``samples(limit)``. Adding a layout is one decorated reader here (or in a plug-in) plus its section in
# data_manifests/benchmarks.md; configs validate ``kind`` against the registry.


def register_layout(kind: str):
    """Register a file layout as benchmark ``kind``: a reader ``(root, split) -> (items, label conversion to
    0/1/255)`` wrapped in the factory ``BENCHMARKS`` holds."""

    def deco(reader):
        def factory(root: str | Path, name: str | None, split: str, val_fraction: float) -> EvalDataset:
            root = Path(root)
            items, conv = reader(root, split)
            return EvalDataset(name or root.name, kind, items, conv)

        factory.__qualname__ = f"layout:{reader.__module__}.{reader.__qualname__}"
        BENCHMARKS.register(kind, factory)
        return reader

    return deco


@BENCHMARKS.register("shards")
def _shards(root: str | Path, name: str | None, split: str, val_fraction: float) -> ShardSplit:
    # root stays a string: an fsspec URL (s3://bucket/run/versions/v0003-...) must keep its double slash
    return ShardSplit(name or "held-in", "shards", resolve_version(root), val_fraction)


# Label namings of the Fishyscapes / SMIYC copies in circulation, as paths relative to the root: the official
# SMIYC release (``labels_masks/<stem>_labels_semantic.png``), the widely shared validation copies of both
# (``labels_masks/<stem>.png``) and the Fishyscapes release (``labels/<stem>.png``). All hold 0 / 1 / 255.
SMIYC_LABELS = ("labels_masks/{stem}_labels_semantic.png", "labels_masks/{stem}.png", "labels/{stem}.png")
FISHYSCAPES_LABELS = ("labels/{stem}.png", "labels_masks/{stem}.png", "labels_masks/{stem}_labels_semantic.png")
_LISTED = 8  # unpaired / per-naming images named in an error before "and N more"


def _image_folder(root: Path, names: tuple[str, ...]) -> list[Path]:
    """The images of the first of ``names`` (folders under ``root``) that exists."""
    for name in names:
        if (root / name).is_dir():
            return _images(root / name)
    raise FileNotFoundError(f"benchmark folder not found: no {' or '.join(n + '/' for n in names)} folder in {root}")


def _listed(paths: list[Path], root: Path) -> str:
    names = [p.relative_to(root).as_posix() for p in paths[:_LISTED]]
    more = f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else ""
    return ", ".join(names) + more


def _pair_namings(images: list[Path], namings: tuple[str, ...], root: Path) -> list[EvalItem]:
    """Pair every image with its label under the first naming (``namings``, e.g. ``labels/{stem}.png``) that has
    a label for every image. When none does, the error says how many (and which) images each naming pairs and
    which images have no label under any of them."""
    found = {n: [img for img in images if (root / n.format(stem=img.stem)).is_file()] for n in namings}
    for n in namings:
        if len(found[n]) == len(images):
            return [EvalItem(img.stem, img, root / n.format(stem=img.stem)) for img in images]
    shown = {n: n.format(stem="<stem>") for n in namings}
    paired = {img for n in namings for img in found[n]}
    unpaired = [img for img in images if img not in paired]
    used = [n for n in namings if found[n]]
    parts = []
    if not used:
        parts.append(f"0 of {len(images)} images paired with any of {', '.join(shown.values())}")
    elif len(used) == 1:
        parts.append(f"{len(found[used[0]])} of {len(images)} images paired with {shown[used[0]]}")
    else:
        parts.append(
            "labels follow more than one naming (rename them to one): "
            + "; ".join(
                f"{len(found[n])} of {len(images)} images paired with {shown[n]} ({_listed(found[n], root)})"
                for n in used
            )
        )
    if unpaired:
        parts.append(f"no label for {_listed(unpaired, root)}")
    head = f"{len(unpaired)} images have no label" if unpaired else "every image has a label, but not under one naming"
    raise FileNotFoundError(f"{root}: {head}: " + "; ".join(parts))


@register_layout("fishyscapes")
def _fishyscapes(root: Path, split: str):
    return _pair_namings(_image_folder(root, ("original", "images")), FISHYSCAPES_LABELS, root), _identity


@register_layout("road_anomaly_pre")
def _road_anomaly_pre(root: Path, split: str):
    return _pair(_images(root / "original"), lambda p: root / "labels" / f"{p.stem}.png", root), _identity


@register_layout("road_anomaly")
def _road_anomaly(root: Path, split: str):
    items = _pair(_images(root / "frames"), lambda p: p.parent / f"{p.stem}.labels" / "labels_semantic.png", root)
    return items, _road_anomaly_original


@register_layout("smiyc")
def _smiyc(root: Path, split: str):
    return _pair_namings(_image_folder(root, ("images", "original")), SMIYC_LABELS, root), _identity


@register_layout("lost_and_found")
def _lost_and_found_layout(root: Path, split: str):
    base = root / "leftImg8bit" / split
    images = sorted(base.glob("*/*_leftImg8bit.png"))
    if not images:
        raise FileNotFoundError(f"no */*_leftImg8bit.png under {base}")

    def label_of(p: Path) -> Path:
        return (
            root
            / "gtCoarse"
            / split
            / p.parent.name
            / p.name.replace("_leftImg8bit.png", "_gtCoarse_labelTrainIds.png")
        )

    items = _pair(images, label_of, root)
    return [EvalItem(i.image.name[: -len("_leftImg8bit.png")], i.image, i.label) for i in items], _lost_and_found


@register_layout("folder")
def _folder(root: Path, split: str):
    return _folder_manifest(root), _identity


def load_benchmark(
    kind: str, root: str | Path, name: str | None = None, split: str = "test", val_fraction: float = 0.1
) -> EvalDataset | ShardSplit:
    """Index a benchmark by kind (see ``BENCHMARKS`` and data_manifests/benchmarks.md)."""
    return BENCHMARKS.get(kind)(root, name, split, val_fraction)


def check_benchmarks(configs: list) -> None:
    """Index every configured dataset (``BenchmarkConfig``s) once, so a missing folder or split fails before any
    training starts; the error lists every dataset that cannot be opened."""
    problems = []
    for b in configs:
        try:
            load_benchmark(b.kind, b.root, b.name, b.split, b.val_fraction)
        except (OSError, ValueError) as e:
            problems.append(f"{b.name or b.kind} ({b.kind} at {b.root}): {e}")
    if problems:
        raise FileNotFoundError("benchmarks that cannot be read:\n  " + "\n  ".join(problems))


def _folder_manifest(manifest: Path) -> list[EvalItem]:
    """A CSV with ``image,label[,condition[,severity]]`` columns (others are kept for the reader's eye); paths
    relative to the manifest's folder. A severity makes the image's tag ``condition@severity``."""
    if manifest.is_dir():
        manifest = manifest / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"folder dataset manifest not found: {manifest}")
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise ValueError(f"{manifest}: needs columns image,label[,condition]")
    items = []
    for r in rows:
        cond = (r.get("condition") or "").strip().lower() or None
        if cond is not None and cond not in conditions():
            raise ValueError(
                f"{manifest}: unknown condition {cond!r} for {r['image']} (one of {', '.join(conditions())})"
            )
        severity = (r.get("severity") or "").strip() or None
        if severity is not None:
            if cond is None or cond == CLEAR:
                raise ValueError(f"{manifest}: {r['image']} has a severity but no adverse condition")
            levels = WEATHER.get(cond).levels
            try:
                ok = float(severity) in levels if levels else 0 <= float(severity) <= 1
            except ValueError:
                ok = False
            if not ok:
                allowed = f"one of {list(levels)}" if levels else "in [0, 1]"
                raise ValueError(f"{manifest}: {r['image']}: severity {severity!r} of {cond} is not {allowed}")
        img = manifest.parent / r["image"]
        tag = None if cond is None else condition_tag(cond, severity)
        items.append(EvalItem(Path(r["image"]).stem, img, manifest.parent / r["label"], tag))
    return items
