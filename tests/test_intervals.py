"""Image-level bootstrap intervals (tasks/intervals.py): hand-computed resamples, agreement with a brute-force
bootstrap over pixels, memory per image, and the intervals in the evaluation results."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.intervals import ImageHistograms, image_histogram
from tasks.metrics import PixelMetrics, metrics_from_groups
from tasks.scoring import EvalSample, ScoredImage, evaluate_samples

# image A ranks its anomaly first (perfect), image B ranks its inlier first (worst)
A = (np.array([0.9, 0.1], np.float32), np.array([1, 0], np.uint8))
B = (np.array([0.8, 0.2], np.float32), np.array([0, 1], np.uint8))
# pooled by hand, descending score: AA = A; BB = B; AB = 0.9 (1), 0.8 (0), 0.2 (1), 0.1 (0)
HAND = {
    "AA": {"auroc": 1.0, "ap": 1.0, "fpr95": 0.0},
    "AB": {"auroc": 3 / 4, "ap": 1 / 2 * 1 + 1 / 2 * 2 / 3, "fpr95": 1 / 2},
    "BB": {"auroc": 0.0, "ap": 1 / 2, "fpr95": 1.0},
}


def test_pooled_histograms_give_the_hand_computed_metrics():
    h = ImageHistograms()
    h.add(*A)
    h.add(*B)
    h.add(np.array([0.5, 0.5], np.float32), np.array([0, 1], np.uint8))  # one tie group
    assert h.resampled([0, 1], resamples=1)["whole"] == pytest.approx(HAND["AB"])
    # A + B twice: 0.9 (1), 0.8 (0, 0), 0.2 (1, 1), 0.1 (0); P = N = 3
    want = {"auroc": (3 + 2) / 9, "ap": 1 / 3 * 1 + 2 / 3 * 3 / 5, "fpr95": 2 / 3}
    assert h.resampled([0, 1, 1], resamples=1)["whole"] == pytest.approx(want)
    # a tie counts half its pairs for AUROC; its precision is that of the whole group
    assert h.resampled([2], resamples=1)["whole"] == pytest.approx({"auroc": 0.5, "ap": 0.5, "fpr95": 1.0})
    keys = np.arange(4, dtype=np.uint32)[::-1]
    neg, pos = np.array([0, 1, 0, 1.0]), np.array([1, 0, 1, 0.0])
    assert {k: v for k, v in metrics_from_groups(keys, neg, pos).items() if k in want} == pytest.approx(HAND["AB"])


def test_two_images_resample_to_the_three_hand_computed_pools():
    h = ImageHistograms()
    h.add(*A)
    h.add(*B)
    got = h.resampled(resamples=1000, seed=3)
    for m in ("auroc", "ap", "fpr95"):
        vals = np.round(got[m], 9)
        assert set(vals) == {round(HAND[k][m], 9) for k in HAND}
    # multinomial weights: AB in half the resamples, AA and BB a quarter each (±4 σ of 1000 draws)
    share = np.mean(np.isclose(got["ap"], HAND["AB"]["ap"]))
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / 1000)
    assert got["whole"]["ap"] == pytest.approx(HAND["AB"]["ap"])
    ci = h.intervals(exact=HAND["AB"], resamples=1000, seed=3)
    assert ci["ap"] == pytest.approx([0.5, 1.0])
    assert ci["auroc"] == pytest.approx([0.0, 1.0])
    assert ci["fpr95"] == pytest.approx([0.0, 1.0])
    assert ci["binning"] == pytest.approx({"auroc": 0.0, "ap": 0.0, "fpr95": 0.0})
    assert ci["resamples"] == 1000 and ci["level"] == 0.95
    assert h.intervals(exact=HAND["AB"], seed=3) == ci  # seeded


def test_one_image_gives_an_interval_of_width_zero_at_the_exact_metric():
    rng = np.random.default_rng(0)
    label = (rng.random((40, 60)) < 0.1).astype(np.uint8)
    score = (rng.random((40, 60)) + label).astype(np.float32)
    exact = PixelMetrics()
    exact.update(score, label)
    m = exact.compute()
    h = ImageHistograms()
    h.add(score, label)
    ci = h.intervals(exact=m, resamples=200)
    for k in ("auroc", "ap", "fpr95"):
        assert ci[k][0] == pytest.approx(m[k], abs=1e-12) and ci[k][1] == pytest.approx(m[k], abs=1e-12)
        assert abs(ci["binning"][k]) < 2e-3  # 0.2 %-wide bins: random ties cost little


def test_the_bootstrap_equals_a_brute_force_bootstrap_over_the_pixels():
    """Scores on a grid of 1/64 (one per bin): the histogram resamples are exactly the pooled pixels of the
    resampled images, computed here the slow way with the same multinomial draws."""
    rng = np.random.default_rng(1)
    images = []
    for _ in range(5):
        label = rng.choice(np.array([0, 1, 255], np.uint8), size=(12, 16), p=[0.7, 0.2, 0.1])
        score = (np.round(rng.random((12, 16)) * 32 + 32 * (label == 1)) / 64).astype(np.float32)
        images.append((score, label))
    h = ImageHistograms()
    for s, lab in images:
        h.add(s, lab)
    got = h.resampled(resamples=40, seed=7)
    weights = np.random.default_rng(7).multinomial(5, np.full(5, 0.2), size=40)
    for r, w in enumerate(weights):
        s = np.concatenate([np.tile(images[i][0].ravel(), w[i]) for i in range(5)])
        lab = np.concatenate([np.tile(images[i][1].ravel(), w[i]) for i in range(5)])
        keep = lab != 255
        s, lab = s[keep], lab[keep]
        values = np.unique(s)[::-1]
        neg = np.array([np.sum((s == v) & (lab == 0)) for v in values], float)
        pos = np.array([np.sum((s == v) & (lab == 1)) for v in values], float)
        want = metrics_from_groups(values.view(np.uint32), neg, pos) if pos.sum() else None
        for m in ("auroc", "ap", "fpr95"):
            if want is None:
                assert np.isnan(got[m][r])
            else:
                assert got[m][r] == pytest.approx(want[m], abs=1e-12)


def test_resamples_without_an_anomaly_are_left_out_and_counted():
    h = ImageHistograms()
    h.add(*A)  # the only image with an anomaly pixel ranked... anywhere
    inlier_only = (np.array([0.3, 0.4], np.float32), np.array([0, 0], np.uint8))
    h.add(*inlier_only)
    h.add(*inlier_only)
    ci = h.intervals(resamples=1000)
    # P(image A never drawn in 3 draws) = (2/3)^3 = 0.296: about 704 resamples count (±4 σ)
    assert abs(ci["resamples"] - 704) < 4 * np.sqrt(1000 * 0.296 * 0.704)
    # with A drawn, the anomaly (0.9) outranks every inlier: AP 1 in each counted resample
    assert ci["ap"] == pytest.approx([1.0, 1.0])


def test_memory_per_image_does_not_grow_with_its_pixels():
    rng = np.random.default_rng(2)
    small = rng.random((1000, 1000), np.float32)
    large = rng.random((2000, 2000), np.float32)
    zeros = np.zeros((2000, 2000), np.uint8)
    bins_s, counts_s = image_histogram(small, zeros[:1000, :1000])
    bins_l, counts_l = image_histogram(large, zeros)
    assert counts_l.sum() == 4_000_000 and counts_s.sum() == 1_000_000  # every labelled pixel, once
    assert bins_l.size < 1.3 * bins_s.size  # 4× the pixels, about the same bins (a few more octaves near 0)
    three = np.repeat(np.float32([0.1, 0.5, 7.0]), 1000)
    bins, counts = image_histogram(three, np.tile(np.uint8([0, 1, 255]), 1000))
    assert bins.size == 3 and counts.tolist() == [[334, 333], [333, 334], [333, 333]]  # by hand: i % 3 per block
    assert counts.sum() == 2000  # void pixels are not counted


def _samples(n: int):
    for i in range(n):
        label = np.zeros((32, 48), np.uint8)
        label[8:16, 8 + i : 20 + i] = 1
        label[:2] = 255
        yield EvalSample(f"img{i}", np.zeros((32, 48, 3), np.uint8), label, condition="clear" if i % 2 else "fog")


def test_evaluation_results_carry_pooled_and_per_condition_intervals():
    samples = list(_samples(8))
    rng = np.random.default_rng(5)
    maps = [(rng.random((32, 48)) + 0.6 * (s.label == 1)).astype(np.float32) for s in samples]
    it = iter(maps)
    r = evaluate_samples(lambda image: ScoredImage(next(it)), samples, "toy", progress=False, bootstrap=300)["metrics"]
    ci = r["intervals"]
    assert ci["resamples"] == 300
    for m in ("auroc", "ap", "fpr95"):
        assert ci[m][0] <= r[m] <= ci[m][1]
        assert ci[m][1] - ci[m][0] > 0  # eight different images: the metrics move between resamples
    for cond in ("clear", "fog"):
        cm = r["conditions"][cond]
        assert cm["images"] == 4
        assert cm["intervals"]["ap"][0] <= cm["ap"] <= cm["intervals"]["ap"][1]
    # the same evaluation again: the same interval (seeded)
    it = iter(maps)
    again = evaluate_samples(lambda image: ScoredImage(next(it)), samples, "toy", progress=False, bootstrap=300)
    assert again["metrics"]["intervals"] == ci
    it = iter(maps)
    none = evaluate_samples(lambda image: ScoredImage(next(it)), samples, "toy", progress=False, bootstrap=0)
    assert "intervals" not in none["metrics"]


def test_the_eval_table_prints_each_interval_in_brackets_and_the_chart_draws_it(tmp_path):
    from tasks.eval.report import condition_chart, markdown_table, table_rows

    ci = {"auroc": [0.8, 0.9], "ap": [0.3, 0.6], "fpr95": [0.1, 0.4], "level": 0.95, "resamples": 1000}
    cond = {"auroc": 0.85, "ap": 0.45, "fpr95": 0.2, "intervals": ci, "images": 2}
    m = {"auroc": 0.85, "ap": 0.45, "fpr95": 0.2, "f1_best": 0.5, "intervals": ci}
    m["conditions"] = {"clear": cond, "fog": cond | {"ap": 0.35}}
    rows = table_rows([{"name": "fs", "metrics": m, "score": "energy"}])
    assert (rows[0]["ap_lo"], rows[0]["ap_hi"], rows[0]["fpr95_lo"]) == (30.0, 60.0, 10.0)
    table = markdown_table(rows)
    assert "| fs | all | 85.00 [80.00, 90.00] | 45.00 [30.00, 60.00] | 20.00 [10.00, 40.00] | 50.0 |" in table
    assert condition_chart([{"name": "fs", "metrics": m}], tmp_path / "c.png").is_file()
