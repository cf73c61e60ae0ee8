"""The one label convention of anomalyforge.

Training shards carry Cityscapes trainIds 0-18, ``VOID`` (255) for ignored pixels and ``ANOMALY`` (254)
where an object was pasted. Evaluation labels are 0 inlier, 1 anomaly, 255 void. The Cityscapes label
table itself comes from ``cityscapesscripts`` and is never re-typed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

from schemas.labels import ANOMALY, EVAL_ANOMALY, EVAL_INLIER, EVAL_VOID, NUM_TRAIN_CLASSES, VOID
from schemas.registries import LABEL_ENCODINGS

#: trainId -> class name, in trainId order (road ... bicycle).
_BY_TRAIN_ID = {lab.trainId: lab.name for lab in _CS_LABELS if 0 <= lab.trainId < NUM_TRAIN_CLASSES}
TRAIN_ID_NAMES: tuple[str, ...] = tuple(_BY_TRAIN_ID[i] for i in range(NUM_TRAIN_CLASSES))
_NAME_TO_TRAIN_ID = {name: i for i, name in enumerate(TRAIN_ID_NAMES)}
_NAME_TO_LABEL_ID = {lab.name: lab.id for lab in _CS_LABELS if lab.id >= 0}

#: Values a training-shard label may contain.
SHARD_LABEL_VALUES: frozenset[int] = frozenset(range(NUM_TRAIN_CLASSES)) | {ANOMALY, VOID}


def _label_id_to_train_id_lut() -> np.ndarray:
    lut = np.full(256, VOID, dtype=np.uint8)
    for lab in _CS_LABELS:
        if 0 <= lab.id < 256:
            lut[lab.id] = lab.trainId if 0 <= lab.trainId < NUM_TRAIN_CLASSES else VOID
    return lut


#: 256-entry lookup table: Cityscapes labelId -> trainId (255 for every ignored class).
LABEL_ID_TO_TRAIN_ID: np.ndarray = _label_id_to_train_id_lut()
LABEL_ID_TO_TRAIN_ID.setflags(write=False)


def _train_id_colours() -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)  # void: black
    for lab in _CS_LABELS:
        if 0 <= lab.trainId < NUM_TRAIN_CLASSES:
            lut[lab.trainId] = lab.color
    lut[ANOMALY] = (255, 255, 255)
    return lut


#: 256×3 RGB lookup table: trainId -> the Cityscapes colour of its class (anomaly white, void black).
TRAIN_ID_COLOURS: np.ndarray = _train_id_colours()
TRAIN_ID_COLOURS.setflags(write=False)


def train_id(name: str) -> int:
    """trainId of a Cityscapes class name (``"road"`` -> 0); KeyError names the valid ones."""
    try:
        return _NAME_TO_TRAIN_ID[name]
    except KeyError:
        raise KeyError(f"unknown Cityscapes train class {name!r}; known: {', '.join(TRAIN_ID_NAMES)}") from None


def label_id(name: str) -> int:
    """Cityscapes labelId of a class name (``"road"`` -> 7), including non-train classes like ``"sky"``."""
    try:
        return _NAME_TO_LABEL_ID[name]
    except KeyError:
        raise KeyError(f"unknown Cityscapes class {name!r}") from None


def train_ids(names: list[str] | tuple[str, ...]) -> np.ndarray:
    return np.array([train_id(n) for n in names], dtype=np.uint8)


#: Values a Cityscapes labelIds image may contain (0-33 and the license plate's -1 stored as 255) and a
#: labelTrainIds image may contain (0-18, 255).
LABEL_ID_VALUES: frozenset[int] = frozenset(lab.id for lab in _CS_LABELS if lab.id >= 0) | {VOID}
TRAIN_ID_VALUES: frozenset[int] = frozenset(range(NUM_TRAIN_CLASSES)) | {VOID}


@dataclass(frozen=True)
class LabelEncoding:
    """How a dataset's label image maps to trainIds: a 256-entry table and the values the file may hold.
    Registered in ``LABEL_ENCODINGS`` by name (``SceneRef.label_kind``): ``LABEL_ENCODINGS.register(e.name, e)``."""

    name: str
    lut: np.ndarray  # value -> trainId (VOID for classes that are no train class)
    values: frozenset[int]  # the values a file of this encoding may contain; others are unknown (made void)
    description: str = ""
    check_train_ids: bool = False  # refuse files that look like trainIds saved under this encoding's name

    def __post_init__(self) -> None:
        if self.lut.shape != (256,) or self.lut.dtype != np.uint8:
            raise ValueError(f"label encoding {self.name!r}: the table must be 256 uint8 values")
        bad = sorted(set(np.unique(self.lut).tolist()) - TRAIN_ID_VALUES)
        if bad:
            raise ValueError(f"label encoding {self.name!r} maps to values {bad} that are no trainIds")
        self.lut.setflags(write=False)

    def to_train_ids(self, raw: np.ndarray) -> np.ndarray:
        if raw.dtype != np.uint8:
            raise TypeError(f"{self.name} labels must be uint8, got {raw.dtype}")
        return self.lut[raw]


def _identity_lut() -> np.ndarray:
    lut = np.full(256, VOID, dtype=np.uint8)
    lut[:NUM_TRAIN_CLASSES] = np.arange(NUM_TRAIN_CLASSES)
    return lut


LABEL_ENCODINGS.register(
    "labelIds",
    LabelEncoding(
        "labelIds", LABEL_ID_TO_TRAIN_ID.copy(), LABEL_ID_VALUES, "Cityscapes labelIds (cityscapesscripts)", True
    ),
)
LABEL_ENCODINGS.register(
    "labelTrainIds",
    LabelEncoding("labelTrainIds", _identity_lut(), TRAIN_ID_VALUES, "Cityscapes trainIds 0-18, 255 void"),
)


def unknown_label_values(label: np.ndarray, kind: str) -> tuple[int, list[int]]:
    """(pixels whose value is no id of the encoding ``kind`` (e.g. "labelIds", "labelTrainIds"), those values)."""
    valid = np.zeros(256, bool)
    valid[list(LABEL_ENCODINGS.get(kind).values)] = True
    counts = np.bincount(label.ravel(), minlength=256)
    bad = np.flatnonzero(~valid & (counts > 0))
    return int(counts[bad].sum()), bad.tolist()


def looks_like_train_ids(label_ids: np.ndarray) -> float | None:
    """The share of 0 when a "labelIds" image is almost certainly trainIds: every value a trainId or 255 (a
    real labelIds frame nearly always has sky 23, vegetation 21 or car 26) and >= 20 % zeros (road in trainIds,
    "unlabeled" in labelIds, which is never that large); None otherwise."""
    counts = cv2.calcHist([label_ids], [0], None, [256], [0, 256]).ravel()  # no int64 copy of the image
    if counts[NUM_TRAIN_CLASSES:VOID].any():
        return None
    zeros = float(counts[0] / label_ids.size)
    return zeros if zeros >= 0.2 else None


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a uint8 labelIds image to trainIds with the cityscapesscripts table."""
    if label_ids.dtype != np.uint8:
        raise TypeError(f"labelIds must be uint8, got {label_ids.dtype}")
    return LABEL_ID_TO_TRAIN_ID[label_ids]


def to_eval_labels(train_label: np.ndarray) -> np.ndarray:
    """Shard label (trainIds + 254 + 255) -> evaluation label (0 inlier, 1 anomaly, 255 void)."""
    out = np.full(train_label.shape, EVAL_INLIER, dtype=np.uint8)
    out[train_label == ANOMALY] = EVAL_ANOMALY
    out[train_label == VOID] = EVAL_VOID
    return out
