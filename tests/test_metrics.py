"""PixelMetrics against scikit-learn on random and adversarial inputs (to 1e-4, the contract)."""

import warnings

import numpy as np
import pytest
import torch

from tasks.metrics import PixelMetrics
from tests.helpers import reference


def run(scores, labels, chunks=1, second_pass=True, **kw):
    """PixelMetrics as a user runs it: one pass, and the second pass when it asks for one."""
    m = PixelMetrics(**kw)
    images = list(zip(np.array_split(scores, chunks), np.array_split(labels, chunks), strict=True))
    for i, (s, y) in enumerate(images):
        m.update(s, y, name=f"img{i}")
    if second_pass and m.needs_second_pass():
        m.start_second_pass()
        for i, (s, y) in reversed(list(enumerate(images))):  # any order
            m.update(s, y, name=f"img{i}")
    if second_pass:
        return m.compute()
    with warnings.catch_warnings():  # a one-pass result beyond the tolerance warns; here that is the point
        warnings.simplefilter("ignore")
        return m.compute()


def assert_within_bounds(got, ref, context):
    """The reported error bounds hold, and the contract (1e-4) holds."""
    for k in ("auroc", "ap", "fpr95"):
        err = abs(got[k] - ref[k])
        assert err <= got[f"{k}_error_bound"] + 1e-12, (context, k, err, got[f"{k}_error_bound"])
        assert err < 1e-4, (context, k, got[k], ref[k])
    assert got["within_tolerance"]


rng = np.random.default_rng(0)
N = 60_000


def _labels(p=0.05, n=N):
    return (rng.random(n) < p).astype(np.uint8)


def _case(name):
    y = _labels()
    if name == "normal":
        return rng.normal(size=N) + y, y
    if name == "heavy_ties":
        return np.round(rng.normal(size=N) + y, 1), y
    if name == "few_values":
        return rng.integers(0, 4, N).astype(np.float64) + (rng.random(N) < 0.3 * y), y
    if name == "constant":
        return np.full(N, 3.0), y
    if name == "infinities":
        s = rng.normal(size=N) + y
        s[rng.random(N) < 0.02] = np.inf
        s[rng.random(N) < 0.02] = -np.inf
        return s, y
    if name == "magnitudes":
        return 10.0 ** rng.uniform(-30, 30, N) * (1 + 3 * y), y
    if name == "narrow":
        return 0.5 + 1e-5 * (rng.random(N) + 0.3 * y), y
    if name == "signed_tiny":
        return rng.normal(size=N) * 1e-20 + y * 1e-21, y
    if name == "void":
        y2 = y.copy()
        y2[rng.random(N) < 0.2] = 255
        return rng.normal(size=N) + y, y2
    if name == "rare_anomaly":
        y = _labels(0.001)
        return rng.gamma(2.0, size=N) * (1 + y), y
    if name == "perfect":
        return y.astype(np.float64) + rng.random(N) * 0.5, y
    if name == "inverted":
        return -(y.astype(np.float64)) + rng.random(N) * 0.5, y
    raise KeyError(name)


CASES = ["normal", "heavy_ties", "few_values", "constant", "infinities", "magnitudes", "narrow",
         "signed_tiny", "void", "rare_anomaly", "perfect", "inverted"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunks", [1, 9])
def test_agrees_with_sklearn(case, chunks):
    scores, labels = _case(case)
    got, ref = run(scores, labels, chunks), reference(scores, labels)
    assert_within_bounds(got, ref, case)
    assert abs(got["f1_best"] - ref["f1_best"]) < 1e-4
    assert got["pixels"] == (labels != 255).sum()


def test_hand_computed_example():
    # scores 4 3 3 2 1 with labels 1 0 1 0 0: tie group {3: one pos, one neg}
    m = PixelMetrics()
    m.update(np.array([4.0, 3, 3, 2, 1]), np.array([1, 0, 1, 0, 0]))
    out = m.compute()
    # ROC points (0,0) (0,.5) (1/3,1) (2/3,1) (1,1): area = .5*(1/3)*(.5+1)/... = 1/3*.75 + 2/3*1
    assert out["auroc"] == pytest.approx(1 / 3 * 0.75 + 2 / 3)
    # AP = .5*1 + .5*(2/3)
    assert out["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert out["fpr95"] == pytest.approx(1 / 3)
    assert out["f1_best"] == pytest.approx(0.8) and out["f1_threshold"] == 3.0


def test_torch_tensors_and_2d_maps():
    scores, labels = _case("normal")
    m = PixelMetrics()
    m.update(torch.from_numpy(scores.reshape(200, 300)).half().float(), torch.from_numpy(labels.reshape(200, 300)))
    ref = reference(torch.from_numpy(scores).half().float().numpy(), labels)
    assert abs(m.compute()["auroc"] - ref["auroc"]) < 1e-4


def test_nan_names_the_image():
    m = PixelMetrics()
    s = np.zeros(10)
    s[7] = np.nan
    with pytest.raises(ValueError, match="road_042: score is NaN at pixel 7"):
        m.update(s, np.zeros(10, np.uint8), name="road_042")


def test_bad_labels_and_shapes_are_errors():
    m = PixelMetrics()
    with pytest.raises(ValueError, match="label 2 at pixel 1"):
        m.update(np.zeros(3), np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        m.update(np.zeros(3), np.array([0, 1]))


def test_images_without_anomalies_are_fine_but_a_dataset_without_is_an_error():
    m = PixelMetrics()
    m.update(np.arange(10.0), np.zeros(10, np.uint8))
    with pytest.raises(ValueError, match="no anomaly pixel"):
        m.compute()
    m.update(np.arange(10.0) + 5, np.r_[np.zeros(5), np.ones(5)].astype(np.uint8))
    assert 0.5 < m.compute()["auroc"] <= 1.0


def test_per_image_average():
    a_s, a_y = np.array([3.0, 2, 1, 0]), np.array([1, 0, 0, 0])  # perfect: AUROC 1
    b_s, b_y = np.array([0.0, 1, 2, 3]), np.array([1, 0, 0, 0])  # inverted: AUROC 0
    c_s, c_y = np.array([1.0, 2]), np.array([0, 0])  # no anomaly: not in the average
    m = PixelMetrics(per_image=True)
    for s, y in ((a_s, a_y), (b_s, b_y), (c_s, c_y)):
        m.update(s, y)
    out = m.compute()
    assert out["per_image"]["auroc"] == pytest.approx(0.5) and out["per_image"]["images"] == 2


def test_memory_does_not_grow_with_pixels():
    m = PixelMetrics()
    sizes = {}
    for i in range(1, 41):
        s, y = _case("normal")
        m.update(s, y)
        if i in (20, 40):
            sizes[i] = m.compute()["memory_bytes"]
    # the score range is covered and the refinement has settled: twice the pixels cost (almost) nothing
    assert sizes[40] <= 1.05 * sizes[20], sizes


def _random_mixture(seed):
    """A random dataset built from random pieces: smooth, quantised, constant, huge/tiny, ±inf, void."""
    r = np.random.default_rng(seed)
    n = int(r.integers(200, 40_000))
    y = (r.random(n) < r.uniform(0.001, 0.5)).astype(np.uint8)
    y[0], y[1] = 0, 1  # both classes present
    s = r.normal(size=n) * r.choice([1e-30, 1e-6, 1.0, 1e6, 1e30]) + y * r.normal() * r.choice([0.0, 1e-6, 1.0])
    piece = r.random(n)
    q = r.choice([1, 2, 16, 256])
    s = np.where(piece < 0.3, np.round(s * q) / q, s)  # ties
    s = np.where((piece > 0.9) & (r.random(n) < 0.5), r.choice([0.0, -0.0, 1.0, 7.5]), s)  # a repeated value
    s[r.random(n) < 0.01] = np.inf
    s[r.random(n) < 0.01] = -np.inf
    y[(r.random(n) < 0.1) & (np.arange(n) > 1)] = 255
    chunks = int(r.integers(1, 12))
    return s, y, chunks


@pytest.mark.parametrize("seed", range(40))
def test_random_mixtures_agree_with_sklearn(seed):
    scores, labels, chunks = _random_mixture(seed)
    one = run(scores, labels, chunks, second_pass=False)
    got, ref = run(scores, labels, chunks), reference(scores, labels)
    for k in ("auroc", "ap", "fpr95"):  # the one-pass bounds hold too
        assert abs(one[k] - ref[k]) <= one[f"{k}_error_bound"] + 1e-12, (seed, k)
    assert_within_bounds(got, ref, seed)
    assert abs(got["f1_best"] - ref["f1_best"]) < 1e-4


def test_ties_that_arrive_late_are_still_exact():
    # the first images are smooth (no refinement needed); later ones pile both classes onto a few values,
    # so bins are refined after they already hold pixels (the residual path)
    r = np.random.default_rng(7)
    smooth_y = (r.random(200_000) < 0.05).astype(np.uint8)
    smooth = r.normal(size=200_000) + smooth_y
    tied_y = (r.random(200_000) < 0.3).astype(np.uint8)
    tied = r.choice([0.25, 0.5, 0.75], 200_000) + 1e-7 * r.normal(size=200_000)  # ~same float32 bins
    scores, labels = np.r_[smooth, tied], np.r_[smooth_y, tied_y]
    one = run(scores, labels, chunks=8, second_pass=False)
    with pytest.warns(UserWarning, match="start_second_pass"):
        m = PixelMetrics()
        for s, y in zip(np.array_split(scores, 8), np.array_split(labels, 8), strict=True):
            m.update(s, y)
        m.compute()
    got, ref = run(scores, labels, chunks=8), reference(scores, labels)
    assert one["passes"] == 1 and got["passes"] == 2  # one pass cannot know; the bound says so
    assert not one["within_tolerance"]
    for k in ("auroc", "ap", "fpr95"):
        assert abs(one[k] - ref[k]) <= one[f"{k}_error_bound"] + 1e-12, k
    assert_within_bounds(got, ref, "late ties")


def test_a_second_pass_over_other_data_is_refused():
    scores, labels = _case("heavy_ties")
    m = PixelMetrics()
    m.update(scores, labels)
    m.start_second_pass()
    m.update(scores[::-1].copy(), labels)
    with pytest.raises(ValueError, match="other scores than the first"):
        m.compute()
    m = PixelMetrics()
    m.update(scores, labels)
    m.start_second_pass()
    with pytest.raises(ValueError, match="saw 0 labelled pixels"):
        m.compute()


def test_a_rejected_image_leaves_the_totals_untouched():
    s, y = _case("normal")
    m = PixelMetrics()
    m.update(s, y)
    before = m.compute()
    bad = s.copy()
    bad[-1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.update(bad, y)
    with pytest.raises(ValueError, match="label 7"):
        m.update(s, np.where(np.arange(y.size) == 5, 7, y))
    assert m.compute() == before
