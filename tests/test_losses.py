"""Losses against values worked out by hand; signs; gradients reach only the trainable head; after training
the frozen network is bitwise unchanged and its closed-set prediction identical."""

from __future__ import annotations

import math

import pytest
import torch

from models.losses import consistency_loss, corocl_loss, eel_loss, rpl_eel_loss, rpl_loss, supervised_contrastive
from models.rpl import ResidualAnomalyModel
from models.segmenters import build_segmenter


def px(*pixels):
    """Logits of a 1×C×1×P image from per-pixel logit lists."""
    return torch.tensor(pixels, dtype=torch.float32).T[None, :, None, :]


def lab(*values):
    return torch.tensor(values)[None, None, :]


def H(*logits):  # softmax entropy, by hand
    z = sum(math.exp(v) for v in logits)
    return -sum(math.exp(v) / z * math.log(math.exp(v) / z) for v in logits)


def test_rpl_loss_by_hand():
    # pixel 0: inlier (class 0), ŷ = [1, 0], ỹ = [2, 0]; pixel 1: anomaly, ŷ = [0, 0]; pixel 2: void
    y_hat, y_frozen = px([1, 0], [0, 0], [5, -5]), px([2, 0], [0, 0], [0, 0])
    parts = rpl_loss(y_hat, y_frozen, lab(0, 254, 255))
    ce = math.log(1 + math.exp(-1))  # −log softmax([1, 0])[0]
    ent = (H(2, 0) - H(1, 0)) ** 2
    out = math.log(2)  # relu(logsumexp([0, 0]))
    assert parts["in_ce"].item() == pytest.approx(ce, abs=1e-6)
    assert parts["in_entropy"].item() == pytest.approx(ent, abs=1e-6)
    assert parts["out_energy"].item() == pytest.approx(out, abs=1e-6)
    assert parts["loss"].item() == pytest.approx(ce + ent + 0.05 * out, abs=1e-6)
    # an anomaly pixel whose logsumexp is already negative costs nothing
    assert rpl_loss(px([-3, -3]), px([0, 0]), lab(254))["out_energy"].item() == 0.0


def test_eel_loss_by_hand():
    parts = eel_loss(px([0, 0], [2, 0]), lab(254, 0))
    e_anom, e_in = math.log(2), math.log(math.exp(2) + 1)
    assert parts["eel_anomaly"].item() == pytest.approx(math.log(1 + math.exp(e_anom)) - H(0, 0), abs=1e-6)
    assert parts["eel_inlier"].item() == pytest.approx(math.log(1 + math.exp(-e_in)) + H(2, 0), abs=1e-6)
    # −log p with p = sigmoid(−E) is ln 3 for E = ln 2
    assert math.log(1 + math.exp(e_anom)) == pytest.approx(math.log(3))


def test_consistency_and_total_eel_by_hand():
    y_hat, y_frozen = px([1, 0], [0, 0]), px([2, 0], [3, 3])
    cons = consistency_loss(y_hat, y_frozen, lab(0, 254))
    p = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    q = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    assert cons["cons_kl"].item() == pytest.approx(kl, abs=1e-6)
    assert cons["cons"].item() == pytest.approx(math.log(1 + math.exp(-1)) + kl + (H(2, 0) - H(1, 0)) ** 2, abs=1e-6)
    total = rpl_eel_loss(y_hat, y_frozen, lab(0, 254))
    assert total["loss"].item() == pytest.approx(cons["cons"].item() + 0.05 * total["eel"].item(), abs=1e-6)
    # identical ŷ and ỹ: no KL, no entropy gap
    same = consistency_loss(y_frozen, y_frozen, lab(0, 0))
    assert same["cons_kl"].item() == pytest.approx(0, abs=1e-7)
    assert same["cons_entropy"].item() == pytest.approx(0, abs=1e-7)


@pytest.mark.parametrize("loss", ["rpl", "eel"])
def test_loss_falls_when_anomaly_logits_shrink(loss):
    torch.manual_seed(0)
    frozen = torch.randn(1, 19, 4, 4) * 3
    labels = torch.randint(0, 19, (1, 4, 4))
    labels[0, :2, :2] = 254

    def value(scale):
        y = frozen.clone()
        y[..., :2, :2] *= scale  # anomaly logits shrink towards 0
        y[..., :2, :2] -= 4 * (1 - scale)
        f = rpl_loss if loss == "rpl" else rpl_eel_loss
        return f(y, frozen, labels)["loss"].item()

    assert value(1.0) > value(0.5) > value(0.1)


def test_supervised_contrastive_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.cat([a, torch.tensor([[1.0, 0.0], [0.0, 1.0]])])
    la, lc = torch.tensor([1, 0]), torch.tensor([1, 0, 1, 0])
    # each anchor: one positive at cosine 1, two negatives at cosine 0 → log(1 + 2/e) with τ = 1
    got = supervised_contrastive(a, la, c, lc, tau=1.0)
    assert got.item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)
    # anomalies closer to other anomalies than to inliers → lower loss
    far = supervised_contrastive(a, la, c, lc, tau=0.1)
    mixed = supervised_contrastive(a, la, torch.cat([a, a.flip(0)]), lc, tau=0.1)
    assert far < mixed


def test_corocl_samples_at_most_max_views_and_is_zero_without_a_pool():
    emb = torch.randn(1, 8, 6, 6, requires_grad=True)
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, :3] = 254
    loss = corocl_loss(emb, labels, emb, labels, max_views=4, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() > 0 and emb.grad.abs().sum() > 0
    no_anomaly = torch.zeros(1, 6, 6, dtype=torch.long)
    assert corocl_loss(emb, no_anomaly, emb, labels).item() == 0.0


@pytest.mark.parametrize("method", ["eel", "rpl_corocl"])
def test_gradients_reach_only_the_head_and_the_frozen_network_is_untouched(method):
    torch.manual_seed(0)
    seg = build_segmenter("espnetv2_demo")
    model = ResidualAnomalyModel.create(seg, dim=16, projector_dim=8 if method == "rpl_corocl" else None)
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    x = torch.rand(2, 3, 64, 64)
    labels = torch.randint(0, 19, (2, 64, 64))
    labels[:, 20:40, 20:40] = 254
    with torch.no_grad():
        frozen_before = seg(x)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        out = model(x, with_embeddings=True)
        loss = rpl_eel_loss(out.logits, out.frozen_logits, labels)["loss"]
        if method == "rpl_corocl":
            loss = rpl_loss(out.logits, out.frozen_logits, labels)["loss"] + corocl_loss(
                out.embeddings, labels, out.embeddings, labels
            )
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in seg.parameters())
        assert model.residual.out.weight.grad.abs().sum() > 0
        opt.step()
    after = seg.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bitwise, BN statistics included
    with torch.no_grad():
        assert torch.equal(seg(x), frozen_before)
        out = model(x)
        assert torch.equal(out.frozen_logits, frozen_before)
        assert not torch.equal(out.logits, frozen_before)  # the residual did learn something


def test_zero_initialised_residual_starts_from_the_frozen_prediction():
    seg = build_segmenter("espnetv2_demo")
    model = ResidualAnomalyModel.create(seg, dim=16).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 48))
    assert torch.equal(out.logits, out.frozen_logits)
