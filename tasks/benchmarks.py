"""Readers for anomaly-segmentation benchmarks: Fishyscapes (Lost & Found, Static), RoadAnomaly (original
release and the common preprocessed copy), SMIYC RoadAnomaly21 / RoadObstacle21, LostAndFound and a generic
folder + manifest dataset with weather/light conditions. Every reader yields ``EvalItem``s whose labels
``EvalDataset.load`` converts to evaluation labels (0 inlier, 1 anomaly, 255 void). The layouts and label
values of each kind are in ``data_manifests/benchmarks.md``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.imageio import BadInputError, read_gray, read_rgb
from tasks.labels import EVAL_ANOMALY, EVAL_INLIER, EVAL_VOID

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
CONDITIONS = ("clear", "rain", "night", "fog", "snow", "frost", "sandstorm")


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


def load_benchmark(kind: str, root: str | Path, name: str | None = None, split: str = "test") -> EvalDataset:
    """Index a benchmark by layout kind (see the module docstring)."""
    root = Path(root)
    if kind == "fishyscapes":
        items = _pair(_images(root / "original"), lambda p: root / "labels" / f"{p.stem}.png", root)
        conv = _identity
    elif kind == "road_anomaly_pre":
        items = _pair(_images(root / "original"), lambda p: root / "labels" / f"{p.stem}.png", root)
        conv = _identity
    elif kind == "road_anomaly":
        items = _pair(_images(root / "frames"), lambda p: p.parent / f"{p.stem}.labels" / "labels_semantic.png", root)
        conv = _road_anomaly_original
    elif kind == "smiyc":
        items = _pair(_images(root / "images"), lambda p: root / "labels_masks" / f"{p.stem}_labels_semantic.png", root)
        conv = _identity
    elif kind == "lost_and_found":
        base = root / "leftImg8bit" / split
        images = sorted(base.glob("*/*_leftImg8bit.png"))
        if not images:
            raise FileNotFoundError(f"no */*_leftImg8bit.png under {base}")
        items = _pair(
            images,
            lambda p: (
                root
                / "gtCoarse"
                / split
                / p.parent.name
                / p.name.replace("_leftImg8bit.png", "_gtCoarse_labelTrainIds.png")
            ),
            root,
        )
        items = [EvalItem(i.image.name[: -len("_leftImg8bit.png")], i.image, i.label) for i in items]
        conv = _lost_and_found
    elif kind == "folder":
        items = _folder_manifest(root)
        conv = _identity
    else:
        raise ValueError(
            f"unknown benchmark kind {kind!r}; one of fishyscapes, road_anomaly, road_anomaly_pre, smiyc, lost_and_found, folder"
        )
    return EvalDataset(name or root.name, kind, items, conv)


def _folder_manifest(manifest: Path) -> list[EvalItem]:
    """A CSV with ``image,label[,condition]`` columns; paths relative to the manifest's folder."""
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
        if cond is not None and cond not in CONDITIONS:
            raise ValueError(
                f"{manifest}: unknown condition {cond!r} for {r['image']} (one of {', '.join(CONDITIONS)})"
            )
        img = manifest.parent / r["image"]
        items.append(EvalItem(Path(r["image"]).stem, img, manifest.parent / r["label"], cond))
    return items
