"""One forward for every score: the shared-reduction scores equal the papers' formulas, several scores in one pass
give the metrics of one pass per score, batching and the reading / updating threads change nothing, memory stays
bounded, and the faster component metrics equal their definition."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
import torch

from models.scores import CHUNK_ELEMENTS, anomaly_scores
from schemas import BenchmarkConfig, EvalConfig
from schemas.registries import SCORES
from tasks.eval.evaluate import evaluate_dataset, load_eval_model
from tasks.labels import EVAL_ANOMALY, EVAL_VOID
from tasks.scoring import EvalSample, ScoredImage, TensorScorer, evaluate_scores
from tasks.segmentation_metrics import GroundTruthComponents, _areas, _components, image_components

METRICS = ("auroc", "ap", "fpr95", "f1_best", "siou", "ppv", "f1_components")
PER_PIXEL = ["msp", "max_logit", "entropy", "energy", "eel", "max_min"]


def _reference(x: torch.Tensor, name: str) -> torch.Tensor:
    """The textbook form of each score (softmax, log_softmax, logsumexp), in float64."""
    x = x.double()
    p, logp = x.softmax(1), x.log_softmax(1)
    h = -(p * logp).sum(1)
    return {
        "msp": 1 - p.amax(1),
        "max_logit": -x.amax(1),
        "entropy": h,
        "energy": -torch.logsumexp(x, 1),
        "eel": h - torch.logsumexp(x, 1),
        "max_min": -(x.amax(1) - x.amin(1)),
    }[name]


def test_shared_reduction_scores_equal_the_textbook_formulas():
    x = torch.randn(2, 19, 13, 17, generator=torch.Generator().manual_seed(0)) * 6
    x[0, 3, 0, 0] = 40.0  # a very confident pixel: entropy ~1e-15 must stay tiny and non-negative
    got = anomaly_scores(x, PER_PIXEL)
    for name in PER_PIXEL:
        assert torch.allclose(got[name].double(), _reference(x, name), atol=2e-5), name
    assert 0 <= got["entropy"][0, 0, 0] < 1e-6


def test_piecewise_scores_on_a_cpu_equal_the_whole_tensor_and_a_plug_in_gets_the_whole_tensor(monkeypatch):
    x = torch.randn(1, 19, 40, 64, generator=torch.Generator().manual_seed(1))
    whole = anomaly_scores(x, PER_PIXEL, smoothing=True)
    seen = []

    def neighbour_difference(logits):  # a score that looks beyond its pixel: must see the whole map
        seen.append(tuple(logits.shape))
        return (logits[:, 0] - logits[:, 0].roll(1, dims=1)).abs()

    monkeypatch.setitem(SCORES._entries, "neighbour_difference", neighbour_difference)
    monkeypatch.setattr("models.scores.CHUNK_ELEMENTS", 19 * 64 * 3)  # bands of 3 rows
    with torch.inference_mode():
        banded = anomaly_scores(x, [*PER_PIXEL, "neighbour_difference"], smoothing=True)
    for name in PER_PIXEL:
        assert torch.equal(banded[name], whole[name]), name
    assert seen == [(1, 19, 40, 64)] and banded["neighbour_difference"].shape == (1, 40, 64)
    assert CHUNK_ELEMENTS >= 1 << 16  # a band is never a handful of pixels


def test_scores_keep_their_gradients_for_the_losses():
    x = torch.randn(1, 19, 4, 4, requires_grad=True)
    anomaly_scores(x, ["entropy", "energy"])["entropy"].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_several_scores_in_one_pass_equal_one_pass_per_score_on_a_benchmark_layout(setup, tmp_path):
    tmp, model_path = setup
    spec = BenchmarkConfig(kind="fishyscapes", root=tmp / "fs")
    names = ["msp", "energy", "entropy", "max_logit"]
    cfg = EvalConfig(model=model_path, datasets=[spec], score=",".join(names), panels=2)
    forwards = []
    model = load_eval_model(cfg)
    infer = model.scorer.infer
    model.scorer.infer = lambda x, size: (forwards.append(len(x)), infer(x, size))[1]
    together = evaluate_dataset(model, spec, cfg, progress=False)
    assert sum(forwards) == 4  # 4 images, one forward each for all 4 scores
    assert [r["score"] for r in together] == names
    for r in together:
        (alone,) = evaluate_dataset(load_eval_model(cfg.model_copy(update={"score": [r["score"]]})), spec, cfg, False)
        for k in METRICS:
            assert r["metrics"][k] == pytest.approx(alone["metrics"][k], abs=1e-9, nan_ok=True), (r["score"], k)
        assert r["metrics"]["conditions"].keys() == alone["metrics"]["conditions"].keys()
        assert len(r["panels"]) == 2 and np.array_equal(r["panels"][0][3], alone["panels"][0][3])


def test_a_method_is_scored_by_its_own_score_and_the_asked_ones_in_one_pass(trained_eel):
    spec = BenchmarkConfig(kind="shards", root=trained_eel.version, val_fraction=0.3)
    base = EvalConfig(model=trained_eel.model, datasets=[spec], panels=0)
    (own,) = evaluate_dataset(load_eval_model(base), spec, base, progress=False)
    both_cfg = base.model_copy(update={"score": ["msp"]})
    own2, msp = evaluate_dataset(load_eval_model(both_cfg), spec, both_cfg, progress=False)
    assert own2["score"] == own["score"] and msp["score"] == "msp of eel's logits"
    for k in (*METRICS, "miou", "closed_set_agreement"):
        assert own2["metrics"][k] == pytest.approx(own["metrics"][k], abs=1e-9, nan_ok=True), k
    assert msp["metrics"]["ap"] != own["metrics"]["ap"]
    # the demo held-in split, post-hoc scores of the frozen segmenter: together = one at a time
    seg = EvalConfig(model=trained_eel.segmenter, segmenter="espnetv2_demo", datasets=[spec], panels=0)
    together = evaluate_dataset(load_eval_model(seg.model_copy(update={"score": ["msp", "max_min"]})), spec, seg)
    for r in together:
        alone_cfg = seg.model_copy(update={"score": [r["score"]]})
        (alone,) = evaluate_dataset(load_eval_model(alone_cfg), spec, alone_cfg, progress=False)
        for k in (*METRICS, "miou"):
            assert r["metrics"][k] == pytest.approx(alone["metrics"][k], abs=1e-9, nan_ok=True), (r["score"], k)
        assert 0 < r["metrics"]["miou"] <= 1  # the prediction is made where trainId labels use it


def _samples(n, sizes, seed=0):
    rng = np.random.default_rng(seed)
    for k in range(n):
        h, w = sizes[k % len(sizes)]
        label = np.zeros((h, w), np.uint8)
        label[2 : 2 + h // 3, 3 : 3 + w // 3] = EVAL_ANOMALY
        label[0] = EVAL_VOID
        image = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
        image[label == EVAL_ANOMALY, 0] = 255
        yield EvalSample(f"im{k}", image, label, condition=["clear", "rain"][k % 2])


def _infer(x, size):
    from models.methods.base import Inference

    logits = torch.stack([x[:, 1] * 5, x[:, 0] * 5 - 2, x[:, 2]], 1)
    logits = torch.nn.functional.interpolate(logits, size=size, mode="bilinear")
    maps = anomaly_scores(logits, ["msp", "energy"])
    return Inference(maps["msp"], logits, None, scores=maps)


@pytest.mark.parametrize("batch_size", [2, 3])
def test_batches_and_threads_give_the_serial_results_in_order(batch_size):
    sizes = [(24, 32), (24, 32), (24, 32), (16, 32), (24, 32)]
    calls = []
    scorer = TensorScorer(_infer)
    real = scorer.batch
    scorer.batch = lambda images, want_pred=True: (calls.append([i.shape for i in images]), real(images, want_pred))[1]
    got = evaluate_scores(scorer, _samples(11, sizes), "b", progress=False, batch_size=batch_size, panels=1)
    serial = evaluate_scores(lambda img: TensorScorer(_infer)(img), _samples(11, sizes), "b", progress=False, panels=1)
    assert list(got) == ["msp", "energy"]
    for score in got:
        a, b = got[score]["metrics"], serial[score]["metrics"]
        assert [a[k] for k in METRICS] == pytest.approx([b[k] for k in METRICS], abs=0, nan_ok=True)
        assert a["images"] == 11 and a["conditions"].keys() == b["conditions"].keys() == {"clear", "rain", "adverse"}
        assert a["conditions"]["rain"]["ap"] == b["conditions"]["rain"]["ap"]
        assert got[score]["panels"][0][0] == serial[score]["panels"][0][0] == "im0"
    assert all(len(set(c)) == 1 and len(c) <= batch_size for c in calls)  # one size per batch
    assert max(len(c) for c in calls) == batch_size and sum(len(c) for c in calls) == 11


def test_images_in_flight_stay_bounded_and_a_reading_error_surfaces():
    live, peak, lock = [0], [0], threading.Lock()

    class Counted(np.ndarray):
        def __del__(self):
            with lock:
                live[0] -= 1

    def stream(n):
        for s in _samples(n, [(24, 32)]):
            with lock:
                live[0] += 1
                peak[0] = max(peak[0], live[0])
            yield EvalSample(s.item_id, s.image.view(Counted), s.label, s.condition)

    evaluate_scores(TensorScorer(_infer), stream(40), "m", progress=False, batch_size=2)
    assert peak[0] <= (2 * 2 + 1) * 2 + 5  # the module docstring's bound (in_flight 2, batch 2), not the stream

    def broken():
        yield from _samples(3, [(24, 32)])
        raise ValueError("frame 4.png: not an image")

    with pytest.raises(ValueError, match="frame 4.png: not an image"):
        evaluate_scores(TensorScorer(_infer), broken(), "e", progress=False)


def test_a_scorer_that_changes_its_scores_midway_is_named():
    maps = iter([{"a": np.zeros((4, 4), np.float32)}, {"b": np.zeros((4, 4), np.float32)}])
    samples = [EvalSample(f"i{k}", np.zeros((4, 4, 3), np.uint8), np.eye(4, dtype=np.uint8)) for k in range(2)]
    with pytest.raises(ValueError, match=r"i1: scored \['b'\], the images before \['a'\]"):
        evaluate_scores(lambda img: ScoredImage(next(maps)), samples, "x", progress=False)


def _cc(mask):
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return n, lab, stats[:, cv2.CC_STAT_AREA]


def _components_by_definition(pred, labels, min_pred, min_gt):
    """The SMIYC definition written plainly (OpenCV's areas, np.isin, np.add.at over every pixel): the reference."""
    labels = labels.copy()
    n_gt, gt, gt_area = _cc(labels == EVAL_ANOMALY)
    small = np.flatnonzero(gt_area[1:] < min_gt) + 1
    labels[np.isin(gt, small)] = EVAL_VOID
    gt[np.isin(gt, small)] = 0
    n_pr, pr, pr_area = _cc(pred & (labels != EVAL_VOID))
    big = np.flatnonzero(pr_area[1:] >= min_pred) + 1
    pr = np.where(np.isin(pr, big), pr, 0)
    inter = np.zeros((n_gt, n_pr), np.int64)
    np.add.at(inter, (gt.ravel(), pr.ravel()), 1)
    gts, prs = np.bincount(gt.ravel(), minlength=n_gt), np.bincount(pr.ravel(), minlength=n_pr)
    sious = []
    for k in range(1, n_gt):
        if gts[k]:
            t = np.flatnonzero(inter[k, 1:]) + 1
            inside = inter[k, t].sum()
            sious.append(inside / (gts[k] + prs[t].sum() - inside - (inter[1:, t].sum() - inside)))
    return sious, [inter[1:, j].sum() / prs[j] for j in big.tolist()]


@pytest.mark.parametrize("seed", range(6))
def test_component_metrics_equal_their_definition_and_the_shared_ground_truth(seed):
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random((60, 80)) < 0.35, EVAL_ANOMALY, 0).astype(np.uint8)
    labels[rng.random((60, 80)) < 0.05] = EVAL_VOID
    pred = rng.random((60, 80)) < 0.4
    ref = _components_by_definition(pred, labels, 5, 4)
    for got in (image_components(pred, labels, 5, 4), image_components(pred, GroundTruthComponents(labels, 4), 5, 4)):
        assert got[0] == pytest.approx(ref[0], abs=1e-12) and got[1] == pytest.approx(ref[1], abs=1e-12)
    assert len(ref[0]) > 3 and len(ref[1]) > 3  # the case has components of both kinds
    n, lab, area = _components(pred)
    assert np.array_equal(area, _cc(pred)[2]) and np.array_equal(_areas(lab, n), np.bincount(lab.ravel()))


def test_score_lists_are_validated_by_name(tmp_path):
    datasets = [BenchmarkConfig(kind="fishyscapes", root=tmp_path)]
    assert EvalConfig(model=tmp_path / "m.pt", datasets=datasets, score=" msp, energy").score == ["msp", "energy"]
    with pytest.raises(ValueError, match="a score is named twice: msp, energy, msp"):
        EvalConfig(model=tmp_path / "m.pt", datasets=datasets, score="msp,energy,msp")
    with pytest.raises(ValueError, match="unknown score 'energi'"):
        EvalConfig(model=tmp_path / "m.pt", datasets=datasets, score=["msp", "energi"])
