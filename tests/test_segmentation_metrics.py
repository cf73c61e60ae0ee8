import numpy as np
import pytest

from tasks.segmentation_metrics import ComponentMetrics, ConfusionMatrix, image_components


def test_perfect_prediction():
    lab = np.zeros((20, 20), np.uint8)
    lab[2:6, 2:6] = 1
    s, p = image_components(lab == 1, lab, min_pred=1, min_gt=1)
    assert s == [1.0] and p == [1.0]


def test_hand_computed_siou_and_ppv():
    lab = np.zeros((20, 30), np.uint8)
    lab[0:4, 0:4] = 1  # GT k1: 16 px
    lab[0:4, 10:14] = 1  # GT k2: 16 px
    pred = np.zeros_like(lab, bool)
    pred[0:4, 2:12] = True  # one prediction (40 px) touching both: 8 px on k1, 8 px on k2, 24 elsewhere
    pred[10:12, 20:22] = True  # a false positive (4 px)
    s, p = image_components(pred, lab, min_pred=1, min_gt=1)
    # k1: |k1 ∩ K̂| = 8; k1 ∪ K̂ = 16 + 40 - 8 = 48; A (K̂ on k2) = 8 -> 8 / 40
    assert s == pytest.approx([8 / 40, 8 / 40])
    # the big prediction lies 16 of 40 px on GT it touches; the FP has PPV 0
    assert sorted(p) == pytest.approx([0.0, 16 / 40])


def test_small_components_void_and_dropped():
    lab = np.zeros((30, 30), np.uint8)
    lab[0:2, 0:2] = 1  # 4 px: below min_gt -> void, and predictions there are zeroed
    lab[10:20, 10:20] = 1
    pred = np.zeros_like(lab, bool)
    pred[0:2, 0:2] = True
    pred[10:20, 10:20] = True
    pred[25:27, 25:27] = True  # 4 px: below min_pred -> dropped
    s, p = image_components(pred, lab, min_pred=10, min_gt=10)
    assert s == [1.0] and p == [1.0]


def test_void_zeroes_predictions():
    lab = np.full((10, 10), 255, np.uint8)
    lab[5:, :] = 0
    pred = np.ones_like(lab, bool)
    s, p = image_components(pred, lab, min_pred=1, min_gt=1)
    assert s == [] and p == [0.0]  # only the inlier half remains predicted, touching no GT


def test_f1_over_taus_sums_counts_over_images():
    m = ComponentMetrics(threshold=0.5, min_pred=1, min_gt=1)
    lab = np.zeros((10, 10), np.uint8)
    lab[0:4, 0:4] = 1
    m.update(np.where(lab == 1, 1.0, 0.0), lab)  # TP at every tau
    m.update(np.zeros((10, 10)), lab)  # FN at every tau
    out = m.compute()
    assert out["f1_components"] == pytest.approx(2 / 3) and out["siou"] == pytest.approx(0.5) and out["ppv"] == 1.0


def test_miou():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 255]))
    out = cm.compute()
    assert out["iou"] == pytest.approx([1 / 2, 1 / 2, 1.0]) and out["miou"] == pytest.approx(2 / 3)
