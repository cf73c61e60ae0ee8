import math

import pytest
import torch

from models.scores import anomaly_score, eel, energy, entropy, max_logit, max_min, msp, smooth


def _logits():
    # pixel 0: confident class 0; pixel 1: uniform over 3 classes
    return torch.tensor([[[[4.0, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]]])  # (1, 3, 1, 2)


def test_hand_computed_values():
    x = _logits()
    p0 = math.exp(4) / (math.exp(4) + 2)
    assert msp(x)[0, 0].tolist() == pytest.approx([1 - p0, 1 - 1 / 3], rel=1e-5)
    assert max_logit(x)[0, 0].tolist() == [-4.0, 0.0]
    h0 = -(p0 * math.log(p0) + 2 * ((1 - p0) / 2) * math.log((1 - p0) / 2))
    assert entropy(x)[0, 0].tolist() == pytest.approx([h0, math.log(3)], rel=1e-5)
    assert energy(x)[0, 0].tolist() == pytest.approx([-math.log(math.exp(4) + 2), -math.log(3)], rel=1e-5)
    assert eel(x, alpha=2.0)[0, 0].tolist() == pytest.approx(
        [2 * h0 - math.log(math.exp(4) + 2), 2 * math.log(3) - math.log(3)], rel=1e-5
    )
    assert max_min(x)[0, 0].tolist() == [-4.0, 0.0]


@pytest.mark.parametrize("name", ["msp", "max_logit", "entropy", "energy", "eel", "max_min"])
def test_uncertain_pixel_scores_higher(name):
    s = anomaly_score(_logits(), name)
    assert s.shape == (1, 1, 2) and s[0, 0, 1] > s[0, 0, 0]


def test_smoothing_keeps_constants_and_spreads_a_peak():
    flat = torch.full((1, 9, 9), 2.0)
    assert torch.allclose(smooth(flat), flat)
    peak = torch.zeros(1, 9, 9)
    peak[0, 4, 4] = 1.0
    out = smooth(peak)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5) and out[0, 4, 4] < 1 and out[0, 4, 5] > 0
    k1 = math.exp(-0.5) / sum(math.exp(-(i * i) / 2) for i in range(-3, 4))
    k0 = 1 / sum(math.exp(-(i * i) / 2) for i in range(-3, 4))
    assert out[0, 4, 5].item() == pytest.approx(k0 * k1, rel=1e-5)


def test_smoothing_without_gradients_equals_the_differentiable_path():
    """On a CPU without gradients ``smooth`` runs OpenCV's separable filter; with them, torch's shifted sums."""
    x = torch.randn(2, 13, 17, generator=torch.Generator().manual_seed(0))
    fast = smooth(x)
    slow = smooth(x.clone().requires_grad_()).detach()
    assert fast.shape == slow.shape == x.shape
    assert torch.allclose(fast, slow, atol=1e-6)  # the reflect border too
    assert not torch.equal(fast, x)


def test_unknown_score_is_named():
    with pytest.raises(ValueError, match="unknown score 'foo'; registered: msp, max_logit"):
        anomaly_score(_logits(), "foo")
