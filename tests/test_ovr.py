"""Top-K one-vs-rest fine-tuning with AnomalyMix (Zhang et al.): the loss by hand (ties, K, s), only the output
layer learning, the mixing rate over a seeded stream, and training end to end through `anomalyforge eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.losses import ovr_loss, topk_ovr_loss
from models.methods import TrainingProgress, get_method, method_config
from models.segmenters import build_segmenter
from tasks.labels import ANOMALY, VOID
from tests.helpers import tiny_train_config


def _pixels(*rows: list[float]) -> torch.Tensor:
    """1×C×1×N logits, one row of C class logits per pixel."""
    return torch.tensor(rows).T.reshape(1, len(rows[0]), 1, len(rows))


def test_topk_ovr_by_hand_with_ties_k_and_s():
    logits = _pixels([3.0, 1.0, 1.0, 0.0, -1.0, -2.0], [9.0, 9.0, 9.0, 9.0, 9.0, 9.0])
    labels = torch.tensor([[[ANOMALY, 0]]])  # the second pixel is an inlier: no L_ood there
    sp = lambda v: float(F.softplus(torch.tensor(float(v))))  # noqa: E731  −log σ(−x) = softplus(x)
    assert topk_ovr_loss(logits, labels, k=2, s=2.0).item() == pytest.approx((sp(6) + sp(2)) / 2, rel=1e-6)
    # K = 3 takes one of two tied logits of 1: the value is the same whichever
    assert topk_ovr_loss(logits, labels, k=3, s=2.0).item() == pytest.approx((sp(6) + 2 * sp(2)) / 3, rel=1e-6)
    assert topk_ovr_loss(logits, labels, k=1, s=0.5).item() == pytest.approx(sp(1.5), rel=1e-6)
    none = topk_ovr_loss(logits.requires_grad_(), torch.tensor([[[0, VOID]]]))
    assert none.item() == 0 and none.requires_grad


def test_ovr_total_is_inlier_ce_plus_gamma_ood_and_pushes_top_logits_down():
    logits = _pixels([2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [5.0, 4.0, -3.0]).requires_grad_()
    labels = torch.tensor([[[0, VOID, ANOMALY]]])
    parts = ovr_loss(logits, labels, gamma=0.05, k=2, s=2.0)
    ce = -torch.log_softmax(torch.tensor([2.0, 0.0, 0.0]), 0)[0].item()  # only the inlier pixel
    ood = (float(F.softplus(torch.tensor(10.0))) + float(F.softplus(torch.tensor(8.0)))) / 2
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6) and parts["ood"].item() == pytest.approx(ood, rel=1e-6)
    assert parts["loss"].item() == pytest.approx(ce + 0.05 * ood, rel=1e-6)
    parts["loss"].backward()
    g = logits.grad[0, :, 0, 2]  # the anomaly pixel: its two largest logits go down, the third is left alone
    assert g[0] > 0 and g[1] > 0 and g[2] == 0


def test_only_the_output_layer_learns():
    spec = get_method("ovr")
    cfg = method_config({"name": "ovr", "lr": 1e-2, "mix_probability": 1.0})
    torch.manual_seed(0)
    model = spec.build(cfg, build_segmenter("espnetv2_demo"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from tasks.train.optim import build_optimizer

    opt = build_optimizer(spec.param_groups(cfg, model), cfg, 0.0)
    assert isinstance(opt, torch.optim.AdamW)
    x, y = torch.rand(2, 3, 64, 96), torch.randint(0, 19, (2, 64, 96))
    y[:, 16:48, 32:64] = ANOMALY
    model.train()
    assert not model.block.training and not model.segmenter.net.training
    for step in range(3):
        parts = spec.loss(cfg, model, x, y, {}, torch.Generator(), TrainingProgress(step, 3))
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(spec.head_state(model)) == {"block.merge_layer.3.weight", "block.merge_layer.3.bias"}
    with pytest.raises(ValueError, match="missing"):
        spec.load_head(model, {}, "x.pt")


@pytest.mark.slow
def test_anomaly_mix_keeps_objects_at_its_rate_and_otherwise_gives_clean_scenes(trained_eel):
    from tasks.train.extras import build_extras

    mix = build_extras({"anomaly_mix": {"probability": 0.1}}, trained_eel.version, seed=5)["anomaly_mix"]
    kept = total = 0
    for _ in range(150):
        x = torch.full((8, 3, 32, 48), 0.5)
        y = torch.full((8, 32, 48), ANOMALY)  # a sentinel no clean scene has
        xm, ym = mix.batch(x, y, "cpu")
        same = (ym == ANOMALY).flatten(1).all(1)
        assert torch.equal(xm[same], x[same])
        clean = ym[~same]
        assert ((clean < 19) | (clean == VOID)).all()  # clean scenes: trainIds and void, never anomaly
        kept += int(same.sum())
        total += 8
    assert abs(kept / total - 0.1) < 0.03  # 1200 draws: σ ≈ 0.009
    # the same seed: the same draws
    x, y = torch.full((8, 3, 32, 48), 0.5), torch.full((8, 32, 48), ANOMALY)
    a, b = (build_extras({"anomaly_mix": {"probability": 0.1}}, trained_eel.version, 5)["anomaly_mix"] for _ in "ab")
    assert all(torch.equal(u, v) for u, v in zip(a.batch(x, y, "cpu"), b.batch(x, y, "cpu"), strict=True))


@pytest.mark.slow
def test_ovr_trains_end_to_end_with_anomaly_mix_and_is_scored_by_eval(trained_eel, tmp_path):
    from tasks.train.trainer import train_method
    from tests.helpers import eval_cli

    cfg = tiny_train_config("ovr")
    cfg = cfg.model_copy(
        update={
            "method": method_config({"name": "ovr", "lr": 1e-3, "mix_probability": 0.5}),
            "segmenter": cfg.segmenter.model_copy(update={"checkpoint": trained_eel.segmenter}),
        }
    )
    res = train_method(cfg, trained_eel.version, tmp_path / "ovr", progress=False, log=lambda m: None)
    assert res.steps == 4 and np.isfinite(res.first_loss)
    m = json.loads((tmp_path / "ovr" / "metrics.json").read_text())
    assert m["method"] == "ovr" and 0 <= m["auroc"] <= 1 and 0 <= m["miou"] <= 1
    datasets = [{"kind": "shards", "root": trained_eel.version, "name": "held", "val_fraction": 0.3}]
    output, metrics = eval_cli(tmp_path, datasets, "--model", str(res.model))
    assert "method, score ovr" in output and 0 <= metrics["datasets"]["held"]["auroc"] <= 1


def test_labels_land_where_the_upsampled_logits_do():
    from models.methods.ovr import labels_at

    # a 30×45 image padded to 32×48; classifier at 1/4: 8×12. Low pixel i ↦ padded row round(i·31/7)
    labels = torch.arange(30)[None, :, None].expand(1, 30, 45) % 250
    small = labels_at(labels, (32, 48), (8, 12))
    rows = [round(i * 31 / 7) for i in range(8)]
    expect = [r if r < 30 else VOID for r in rows]  # rows 30, 31 are padding
    assert small.shape == (1, 8, 12) and small[0, :, 0].tolist() == expect
    cols = labels_at(torch.arange(45)[None, None, :].expand(1, 30, 45), (32, 48), (8, 12))[0, 0]
    assert cols.tolist() == [round(j * 47 / 11) if round(j * 47 / 11) < 45 else VOID for j in range(12)]
