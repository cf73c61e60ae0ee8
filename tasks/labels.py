"""The one label convention of anomalyforge.

Training shards carry Cityscapes trainIds 0-18, ``VOID`` (255) for ignored pixels and ``ANOMALY`` (254)
where an object was pasted. Evaluation labels are 0 inlier, 1 anomaly, 255 void. The Cityscapes label
table itself comes from ``cityscapesscripts`` and is never re-typed here.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

ANOMALY: int = 254
VOID: int = 255

EVAL_INLIER: int = 0
EVAL_ANOMALY: int = 1
EVAL_VOID: int = 255

NUM_TRAIN_CLASSES: int = 19

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
