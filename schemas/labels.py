"""The label ids of the one label convention (``tasks/labels.py`` is the convention's module: encodings, names,
colours). They live here, at the bottom layer, so the losses and methods in ``models/`` use the same numbers.

Training shards: Cityscapes trainIds 0-18, ``VOID`` (255) ignored, ``ANOMALY`` (254) where an object was pasted.
Evaluation labels: ``EVAL_INLIER`` 0, ``EVAL_ANOMALY`` 1, ``EVAL_VOID`` 255.
"""

ANOMALY: int = 254
VOID: int = 255

EVAL_INLIER: int = 0
EVAL_ANOMALY: int = 1
EVAL_VOID: int = 255

NUM_TRAIN_CLASSES: int = 19
