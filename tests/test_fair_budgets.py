"""Fair budgets (tasks/train/sweep.py, tasks/train/optim.py): the warm-up scales with the budget, the sweep scales
every lr group, and the pick follows the held-in metrics."""

from __future__ import annotations

import math

import pytest
import torch

from models.methods import method_config
from schemas import TrainConfig
from tasks.train.optim import poly_schedule
from tasks.train.sweep import beyond_edge, pick_multiplier, sweep_record, sweep_steps, swept


def test_the_warm_up_and_the_decay_are_shares_of_the_budget():
    f = poly_schedule(100, 1.0, warmup=0.05)  # 5 warm-up steps, then linear decay (power 1)
    assert [f(s) for s in range(5)] == pytest.approx([0.2 * 1.0, 0.4 * 0.99, 0.6 * 0.98, 0.8 * 0.97, 1.0 * 0.96])
    assert f(50) == pytest.approx(0.5) and f(100) == 0.0
    g = poly_schedule(40_000, 1.0, warmup=0.05)  # the same shape at 400× the budget
    for frac in (0.01, 0.03, 0.5, 0.9):  # the factor after the same share of the steps
        assert g(round(frac * 40_000) - 1) == pytest.approx(f(round(frac * 100) - 1), abs=0.011)
    assert poly_schedule(10, 0.9)(0) == 1.0  # no warm-up: the plain poly schedule


def test_the_trainer_steps_the_warm_up():
    cfg = TrainConfig(max_steps=20, lr_warmup=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_schedule(cfg.max_steps, cfg.poly_power, cfg.lr_warmup))
    lrs = []
    for _ in range(4):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5 * 1.0, 1.0 * (19 / 20) ** 0.9, (18 / 20) ** 0.9, (17 / 20) ** 0.9])


def test_a_swept_config_scales_every_parameter_group():
    cfg = TrainConfig(method=method_config({"name": "rpl", "lr": 1e-4}), max_steps=200)
    fast = swept(cfg, 10.0, steps=50)
    assert fast.method.lr == pytest.approx(1e-3) and fast.max_steps == 50 and cfg.method.lr == 1e-4
    assert fast.method.head_lr_mult == cfg.method.head_lr_mult  # a ratio to lr: the new layers scale too
    assert fast.content_hash() != cfg.content_hash()  # a sweep run never reuses the full run's model
    assert swept(cfg, 1.0).method.lr == cfg.method.lr and swept(cfg, 1.0).max_steps == 200


def test_the_pick_is_the_best_held_in_ap_then_fpr95_then_the_paper_lr():
    assert pick_multiplier({1: {"ap": 0.10, "fpr95": 0.5}, 10: {"ap": 0.30, "fpr95": 0.4}, 100: {"ap": 0.2}}) == 10
    assert pick_multiplier({1: {"ap": 0.3, "fpr95": 0.5}, 10: {"ap": 0.3, "fpr95": 0.2}}) == 10  # tie: FPR95
    assert (
        pick_multiplier({0.1: {"ap": 0.3, "fpr95": 0.2}, 1: {"ap": 0.3, "fpr95": 0.2}, 10: {"ap": 0.3, "fpr95": 0.2}})
        == 1
    )
    # a diverged or undefined trial (no AP, NaN) never wins
    assert pick_multiplier({1: {"ap": 0.01}, 100: {"ap": math.nan}, 10: {"metrics_error": "no anomaly pixel"}}) == 1
    assert pick_multiplier({10: {"metrics_error": "x"}, 1: {"metrics_error": "x"}}) == 1
    with pytest.raises(ValueError):
        pick_multiplier({})
    assert sweep_steps(150, None) == 37 and sweep_steps(2, None) == 1 and sweep_steps(150, 20) == 20
    rec = sweep_record(1e-5, 10.0, 37, {1: {"ap": 0.1, "fpr95": 0.6}, 10: {"ap": 0.2, "fpr95": 0.5}})
    assert rec == {
        "base_lr": 1e-5,
        "picked": 10.0,
        "lr": pytest.approx(1e-4),
        "steps": 37,
        "held_in": {"1": {"ap": 0.1, "fpr95": 0.6}, "10": {"ap": 0.2, "fpr95": 0.5}},
    }


def test_a_sweep_whose_best_is_at_an_edge_goes_one_step_of_its_ratio_further():
    assert beyond_edge({1: {"ap": 0.40}, 10: {"ap": 0.41}, 100: {"ap": 0.44}}) == pytest.approx(1000)
    assert beyond_edge({1: {"ap": 0.50}, 10: {"ap": 0.48}, 100: {"ap": 0.08}}) == pytest.approx(0.1)
    assert beyond_edge({1: {"ap": 0.50}, 10: {"ap": 0.60}, 100: {"ap": 0.08}}) is None  # inside: found
    assert beyond_edge({1: {"ap": 0.2}, 30: {"ap": 0.3}}) == pytest.approx(900)  # the grid's own ratio
    unsorted = {0.5: {"ap": 0.3}, 2: {"ap": 0.2}, 1: {"ap": 0.1}}
    assert beyond_edge(unsorted) == pytest.approx(0.25)  # best ×0.5, next ×1: ratio 2 down
    # after an extension the new edge is judged the same way: a diverged ×1000 stops the sweep at ×100
    assert beyond_edge({1: {"ap": 0.4}, 10: {"ap": 0.4}, 100: {"ap": 0.5}, 1000: {"metrics_error": "diverged"}}) is None
    assert beyond_edge({1: {"ap": 0.4}}) is None  # one multiple: no ratio
    assert beyond_edge({1: {"metrics_error": "x"}, 10: {"metrics_error": "x"}}) is None  # nothing to go by


def test_the_sweep_table_bolds_a_picked_multiple_that_is_not_round():
    from tasks.eval.compare import sweep_markdown

    third = 1 / 30  # an extension below ×1 of a [1, 30] grid
    rec = sweep_record(1e-4, third, 5, {1: {"ap": 0.1}, 30: {"ap": 0.05}, third: {"ap": 0.2}})
    lines = sweep_markdown({"real/rpl": rec})
    assert lines[4] == "| method | base lr | ×0.0333333 | ×1 | ×30 | lr used |"  # sorted by multiple
    assert lines[6] == "| real/rpl | 0.0001 | **20.0** | 10.0 | 5.0 | 3.3e-06 |"
