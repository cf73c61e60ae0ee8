import cv2
import numpy as np

from schemas import HarmonizeConfig
from tasks.labels import ANOMALY, VOID
from tasks.synth.composite import paste, resize_object
from tasks.synth.harmonize import LabHarmonizer, feather_alpha, make_harmonizer


def _lab_mean(rgb, mask):
    return cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[mask].mean(0)


def _scene_and_object():
    scene = np.zeros((100, 100, 3), np.uint8)
    scene[:] = (40, 40, 60)  # dark, bluish
    obj = np.full((20, 20, 3), (230, 220, 200), np.uint8)  # bright, warm
    obj[::2] = (210, 200, 180)  # some texture so std > 0
    mask = np.zeros((20, 20), bool)
    mask[2:18, 3:17] = True
    return scene, obj, mask, (40, 40, 60, 60)


def test_full_strength_matches_surround_mean_zero_strength_keeps_object():
    scene, obj, mask, box = _scene_and_object()
    out, alpha, rec = LabHarmonizer(HarmonizeConfig(strength_l=1.0, strength_ab=1.0, feather_px=0))(
        scene, obj, mask, box
    )
    bg = _lab_mean(scene, np.ones(scene.shape[:2], bool))
    assert np.allclose(_lab_mean(out, mask), bg, atol=2.0)
    assert rec.method == "lab" and rec.params["strength_l"] == 1.0
    same, _, _ = LabHarmonizer(HarmonizeConfig(strength_l=0.0, strength_ab=0.0))(scene, obj, mask, box)
    assert np.abs(same.astype(int) - obj).max() <= 1  # Lab round trip only


def test_partial_strength_moves_luminance_part_way():
    scene, obj, mask, box = _scene_and_object()
    out, _, _ = LabHarmonizer(HarmonizeConfig(strength_l=0.5, strength_ab=0.0))(scene, obj, mask, box)
    l_obj, l_out, l_bg = (
        _lab_mean(obj, mask)[0],
        _lab_mean(out, mask)[0],
        _lab_mean(scene, np.ones((100, 100), bool))[0],
    )
    assert abs(l_out - (l_obj + 0.5 * (l_bg - l_obj))) < 1.5


def test_feather_is_inward_only():
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    a = feather_alpha(mask, 2.0)
    assert (a[~mask] == 0).all() and a[15, 15] > 0.99 and 0 < a[5, 15] < 1


def test_poisson_blend_at_the_image_border_does_not_fail():
    scene, obj, mask, _ = _scene_and_object()
    mask[:] = True
    out, _, rec = make_harmonizer(HarmonizeConfig(poisson=True))(scene, obj, mask, (0, 80, 20, 100))
    assert out.shape == obj.shape and rec.params["poisson"] is True


def test_composite_is_eq1():
    """x = Pad(1−m)⊙x_in + Pad(m⊙x_obj) with α = m (no feather), y = Pad(1−m)⊙y_in + Pad(m)·254."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (50, 60), dtype=np.uint8)
    label[:5] = VOID
    obj = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    m = np.zeros((10, 12), bool)
    m[2:8, 1:11] = True
    x_in, y_in = image.copy(), label.copy()
    amask = np.zeros_like(label)
    paste(image, label, amask, obj, m.astype(np.float32), m, (20, 0, 32, 10))
    M = np.zeros((50, 60), bool)
    M[0:10, 20:32] = m
    expect_x = np.where(M[..., None], 0, x_in)
    expect_x[0:10, 20:32][m] = obj[m]
    assert np.array_equal(image, expect_x)
    assert np.array_equal(label, np.where(M, ANOMALY, y_in))
    assert np.array_equal(amask == 255, M)
    assert (label[:5][~M[:5]] == VOID).all()  # void kept as is outside the mask


def test_resize_object_keeps_a_binary_mask_and_flips():
    rgba = np.zeros((40, 20, 4), np.uint8)
    rgba[:, :10, 3] = 255
    rgb, m = resize_object(rgba, 10, 20, flip=True)
    assert rgb.shape == (20, 10, 3) and m.dtype == bool
    assert m[:, 5:].all() and not m[:, :5].any()


def test_method_none_keeps_colours_and_only_feathers():
    scene, obj, mask, box = _scene_and_object()
    out, alpha, rec = make_harmonizer(HarmonizeConfig(method="none", feather_px=1.0))(scene, obj, mask, box)
    assert out is obj and rec.method == "none" and (alpha[~mask] == 0).all() and alpha.max() > 0.99
