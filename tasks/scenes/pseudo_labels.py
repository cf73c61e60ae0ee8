"""Pseudo labels: a frozen Cityscapes segmenter's trainIds where it is confident, void elsewhere.

Every method here trains over a frozen segmenter, and RPL's, EEL's and SLEEG's inlier terms compare against that
network's own prediction, so a frame the segmenter labels with confidence is a usable inlier scene: the label
decides where the road is (placement) and which pixels count as inliers (training). A pixel is kept when the
softmax over the 19 trainIds gives its arg-max a probability >= ``threshold``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tasks.labels import VOID


@dataclass(frozen=True)
class LabelRequest:
    """One frame to label: its RGB at the working size, and the size (W, H) its label is wanted at."""

    key: str
    image: np.ndarray  # HxWx3 uint8, the working size the segmenter runs at
    out_size: tuple[int, int]


def confident_labels(logits, out_size: tuple[int, int] | None, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(trainIds with void where the confidence is below ``threshold``, confidence) from 1×C×h×w logits, resized
    bilinearly to ``out_size`` (W, H) before the softmax when given."""
    with torch.inference_mode():
        if out_size is not None and tuple(logits.shape[-2:]) != (out_size[1], out_size[0]):
            logits = F.interpolate(
                logits.float(), size=(out_size[1], out_size[0]), mode="bilinear", align_corners=False
            )
        conf, label = torch.softmax(logits.float(), dim=1).max(dim=1)
    label = label[0].to(torch.uint8).cpu().numpy()
    conf = conf[0].cpu().numpy()
    label[conf < threshold] = VOID
    return label, conf


def label_batches(
    load_segmenter: Callable[[], object],
    requests: Iterable[LabelRequest],
    threshold: float,
    batch_size: int,
    device: str,
    on_label: Callable[[LabelRequest, np.ndarray], None],
) -> None:
    """Run the segmenter (a module giving logits ``N×19×H×W`` from RGB in [0, 1]) over the requests in batches of
    frames with the same working size, and hand each frame's confident label to ``on_label`` as soon as it is made.
    ``load_segmenter`` is called at the first batch: requests that all fail to decode never load the network."""
    net = []
    pending: list[LabelRequest] = []

    def flush():
        if not pending:
            return
        if not net:
            net.append(load_segmenter().to(device).eval())
        segmenter = net[0]
        x = torch.from_numpy(np.stack([r.image for r in pending])).to(device).permute(0, 3, 1, 2).float().div(255)
        with torch.inference_mode():
            logits = segmenter(x)
        for i, r in enumerate(pending):
            label, _ = confident_labels(logits[i : i + 1], r.out_size, threshold)
            on_label(r, label)
        pending.clear()

    for r in requests:
        if pending and (pending[0].image.shape != r.image.shape or len(pending) >= batch_size):
            flush()
        pending.append(r)
    flush()
