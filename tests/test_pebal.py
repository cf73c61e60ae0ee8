"""PEBAL (Tian et al., ECCV 2022): the energy regulariser and the gambler loss by hand, the abstention head's
initialisation, which parameters learn, and training end to end through `anomalyforge eval --model`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from models.losses import energy_reward, gambler_loss, pebal_energy_loss, pebal_loss
from models.methods import TrainingProgress, get_method, method_config
from models.segmenters import build_segmenter
from tasks.labels import ANOMALY, VOID
from tests.helpers import tiny_method, tiny_train_config

LN2 = math.log(2)


def _logits_with_energy(energy: np.ndarray, abstain: float = 0.0) -> torch.Tensor:
    """1×3×H×W logits, two equal class logits a per pixel (E = −(a + ln 2)) and an abstention logit."""
    a = torch.tensor(-energy - LN2, dtype=torch.float32)
    return torch.stack([a, a, torch.full_like(a, abstain)])[None]


def test_energy_regulariser_by_hand():
    energy = np.array([[-14.0, -10.0], [-9.0, -8.0]])
    labels = torch.tensor([[[0, 1], [ANOMALY, VOID]]])
    parts = pebal_energy_loss(_logits_with_energy(energy), labels)
    # inliers: relu(−14 + 12)² = 0, relu(−10 + 12)² = 4 → mean 2; anomaly: relu(−6 + 9)² = 9 → ½(2 + 9)
    assert parts["energy_hinge"].item() == pytest.approx(5.5, rel=1e-5)
    assert parts["energy_sparse"].item() == pytest.approx(5e-4 * 9.0, rel=1e-5)  # ‖[−9]‖₂
    # every pixel, void included: dy 5, 2; dx 4, 1 → ½·3e-6·(25 + 4 + 16 + 1)
    assert parts["energy_smooth"].item() == pytest.approx(3e-6 * 0.5 * 46, rel=1e-4)
    assert parts["energy"].item() == pytest.approx(5.5 + 4.5e-3 + 6.9e-5, rel=1e-5)
    # no anomaly pixel: the inlier hinge alone, no sparsity
    clean = pebal_energy_loss(_logits_with_energy(energy), torch.tensor([[[0, 1], [2, VOID]]]))
    assert clean["energy_hinge"].item() == pytest.approx((0 + 4 + 9) / 3, rel=1e-5) and clean["energy_sparse"] == 0


def test_gambler_loss_by_hand_on_a_constant_map():
    # every pixel: class logits 0, 0 and abstention ln 2 → p = (¼, ¼, ½); E = −ln 2, reward = (ln 2)² everywhere
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 2] = LN2
    assert torch.allclose(energy_reward(logits), torch.full((1, 4, 4), LN2**2))
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0, :2] = ANOMALY
    labels[0, 3] = VOID
    bet = 0.25 + 0.5 / LN2**2  # p_y + p_abstain / reward
    parts = gambler_loss(logits, labels, out_weight=0.1)
    assert parts["gambler_in"].item() == pytest.approx(-math.log(bet), rel=1e-5)
    assert parts["gambler_out"].item() == pytest.approx(-0.1 * math.log(bet), rel=1e-5)
    total = pebal_loss(logits, labels)
    assert total["loss"].item() == pytest.approx(
        total["gambler_in"].item() + total["gambler_out"].item() + 0.1 * total["energy"].item(), rel=1e-6
    )
    # no anomaly pixel: no anomaly term
    assert gambler_loss(logits, torch.zeros(1, 4, 4, dtype=torch.long))["gambler_out"].item() == 0


def test_gambler_gradients_favour_the_class_on_inliers_and_abstention_on_anomalies():
    # confident class logits (reward (ln Σ e^f)² ≈ 32): the abstention term is small and the bet is the class's
    logits = torch.tensor([5.0, 5.0, 0.0]).view(1, 3, 1, 1).repeat(1, 1, 4, 4).requires_grad_()
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    gambler_loss(logits, labels)["gambler_in"].backward()
    g = logits.grad[0, :, 1, 1]
    assert g[0] < 0  # raising the true class logit lowers the loss
    # on an anomaly with low class logits (reward (ln 2)²) abstaining lowers the loss
    low = torch.zeros(1, 3, 4, 4, requires_grad=True)
    gambler_loss(low, torch.full((1, 4, 4), ANOMALY))["gambler_out"].backward()
    assert low.grad[0, 2, 1, 1] < 0


def test_the_head_starts_as_the_frozen_classifier_and_only_it_learns():
    spec = get_method("pebal")
    cfg = method_config({"name": "pebal", "lr": 1e-3})
    torch.manual_seed(0)
    model = spec.build(cfg, build_segmenter("espnetv2_demo"))
    x, y = torch.rand(2, 3, 64, 96), torch.randint(0, 19, (2, 64, 96))
    y[:, 20:40, 30:60] = ANOMALY
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.logits.shape == (2, 20, 64, 96) and torch.equal(out.logits[:, :19], out.frozen_logits)
    frozen_before = {k: v.clone() for k, v in model.segmenter.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    opt = torch.optim.Adam(spec.param_groups(cfg, model))
    model.train()
    for step in range(3):
        parts = spec.loss(cfg, model, x, y, {}, torch.Generator(), TrainingProgress(step, 3))
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
    assert all(torch.equal(v, frozen_before[k]) for k, v in model.segmenter.state_dict().items())
    changed = [k for k, v in model.head.state_dict().items() if not torch.equal(v, head_before[k])]
    assert changed and any("merge_layer.3" in k for k in changed)  # the output layer (abstention row) learns
    assert set(spec.head_state(model)) == {f"head.{k}" for k in model.head.state_dict()}
    inf = spec.infer(cfg, model.eval(), x, (32, 48))
    assert inf.score.shape == (2, 32, 48) and inf.logits.shape[1] == 19


@pytest.mark.slow
def test_pebal_trains_end_to_end_and_is_scored_by_eval(trained_eel, tmp_path):
    from tasks.checkpoints import load_method
    from tasks.train.trainer import train_method
    from tests.helpers import eval_cli

    cfg = tiny_train_config("pebal")
    cfg = cfg.model_copy(
        update={
            "method": method_config(tiny_method("pebal") | {"lr": 1e-3}),
            "segmenter": cfg.segmenter.model_copy(update={"checkpoint": trained_eel.segmenter}),
        }
    )
    res = train_method(cfg, trained_eel.version, tmp_path / "pebal", progress=False, log=lambda m: None)
    assert res.steps == 4 and np.isfinite(res.first_loss) and np.isfinite(res.last_loss)
    m = json.loads((tmp_path / "pebal" / "metrics.json").read_text())
    assert m["method"] == "pebal" and 0 <= m["auroc"] <= 1 and 0 < m["closed_set_agreement"] <= 1
    loaded = load_method(res.model)
    assert loaded.spec.name == "pebal" and loaded.model.head is not None
    datasets = [{"kind": "shards", "root": trained_eel.version, "name": "held", "val_fraction": 0.3}]
    output, metrics = eval_cli(tmp_path, datasets, "--model", str(res.model))
    assert "method, score pebal" in output
    held = metrics["datasets"]["held"]
    assert held["images"] >= m["images"] and 0 <= held["auroc"] <= 1 and metrics["settings"]["method"] == "pebal"


def test_the_anomaly_gambler_term_averages_over_the_classes():
    # constant map, unequal class logits (1, 0) and abstention 0: p = (e, 1, 1) / (e + 2); reward (ln(e + 1))²
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 0] = 1.0
    z = math.e + 2
    p0, p1, pa = math.e / z, 1 / z, 1 / z
    reward = math.log(math.e + 1) ** 2
    labels = torch.full((1, 4, 4), ANOMALY)
    got = gambler_loss(logits, labels, out_weight=0.1)["gambler_out"].item()
    expected = -0.1 * (math.log(p0 + pa / reward) + math.log(p1 + pa / reward)) / 2
    assert got == pytest.approx(expected, rel=1e-5)
