import cv2
import numpy as np
import pytest

from schemas import MaskGateConfig
from tasks.synth.saliency import SalientMasker, gate_mask, mask_quality, model_file
from tests.helpers import u2netp_or_skip


def _scene(disc=True):
    img = np.full((120, 160, 3), 235, np.uint8)
    soft = np.zeros((120, 160), np.float32)
    if disc:
        cv2.circle(img, (80, 60), 30, (30, 40, 160), -1)
        cv2.circle(soft, (80, 60), 30, 1.0, -1)
    return img, soft


def test_clean_mask_passes():
    img, soft = _scene()
    fig = mask_quality(img, soft)
    assert fig["components"] == 1 and fig["border_frac"] == 0 and fig["contrast"] > 30
    assert gate_mask(fig, MaskGateConfig()) is None


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda img, s: s.fill(0), "empty_mask"),
        (lambda img, s: (s.fill(0), cv2.circle(s, (80, 60), 4, 1.0, -1)), "tiny_mask"),
        (lambda img, s: [cv2.circle(s, (20 + 40 * k, 100), 12, 1.0, -1) for k in range(4)], "fragmented_mask"),
        (lambda img, s: cv2.circle(s, (0, 60), 70, 1.0, -1), "touches_border"),
        (lambda img, s: s.__setitem__(s > 0, 0.5), "low_contrast"),  # undecided soft mask
        (lambda img, s: img.fill(235), "low_contrast"),  # object colour = background colour
    ],
)
def test_each_gate_reason(mutate, reason):
    img, soft = _scene()
    mutate(img, soft)
    failed = gate_mask(mask_quality(img, soft), MaskGateConfig())
    assert failed is not None and failed[0] == reason


def test_missing_weights_fail_fast_with_instructions(tmp_path):
    with pytest.raises(FileNotFoundError, match="u2netp.*make install"):
        model_file("u2netp", tmp_path)


def test_u2netp_cuts_out_a_salient_object():
    home = u2netp_or_skip()
    img, truth = _scene()
    soft = SalientMasker("u2netp", home)(img)
    assert soft.shape == truth.shape and 0 <= soft.min() and soft.max() <= 1
    pred, gt = soft >= 0.5, truth > 0
    iou = (pred & gt).sum() / (pred | gt).sum()
    assert iou > 0.8
    assert gate_mask(mask_quality(img, soft), MaskGateConfig()) is None
