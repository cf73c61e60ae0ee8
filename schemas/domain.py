"""Domain tables the configs default to: COCO classes that are never anomalies, real-world object heights."""

from __future__ import annotations

# Classes that overlap Cityscapes and therefore are never anomalies. The RPL/PEBAL/Meta-OoD scripts
# forgot "train"; it is here.
COCO_CITYSCAPES_OVERLAP: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "bus",
    "train",
    "truck",
    "traffic light",
    "stop sign",
)

# Real-world heights in metres (min, max) per object class; the placement samples within the range.
DEFAULT_SIZE_PRIOR: dict[str, tuple[float, float]] = {
    "cat": (0.25, 0.45),
    "dog": (0.4, 0.9),
    "horse": (1.4, 1.8),
    "cow": (1.2, 1.6),
    "sheep": (0.6, 1.0),
    "bird": (0.15, 0.4),
    "bear": (1.0, 1.6),
    "elephant": (2.5, 3.3),
    "zebra": (1.2, 1.5),
    "giraffe": (4.0, 5.5),
    "deer": (0.9, 1.3),
    "chair": (0.8, 1.0),
    "sofa": (0.8, 1.0),
    "couch": (0.8, 1.0),
    "bottle": (0.2, 0.35),
    "cup": (0.1, 0.15),
    "suitcase": (0.5, 0.8),
    "tire": (0.6, 0.8),
    "box": (0.3, 0.8),
    "rocket": (1.0, 2.0),
    "teddy bear": (0.3, 0.8),
    "potted plant": (0.4, 1.2),
}
