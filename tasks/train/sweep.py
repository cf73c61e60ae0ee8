"""Fair budgets: a method's learning rate picked by a short sweep scored on the held-in split of the shards.

The paper learning rates assume the paper's schedules (RPL 7.5e-5 for 40 epochs, OvR and PEBAL 1e-5 for 20–40
epochs); at the budgets a 2-core machine or a quick comparison affords, 150 steps at 1e-5 leave a fine-tuned output
layer where it started, and an equal-step table compares a trained head with an untouched one. ``compare`` with
``lr_sweep: [1, 10, 100]`` trains each method ``sweep_steps`` steps at each multiple of its lr, keeps the multiple
with the best held-in AP — the shards' own validation composites, never a benchmark, so the benchmarks stay unseen
— and trains the full budget at it. When that best is the grid's largest (or smallest) multiple, the sweep goes
one step of the grid's ratio further (``sweep_extend`` times at most): OvR and PEBAL at 1e-5 are best at ×100 of
a [1, 10, 100] grid, which says only that the grid stopped too early. The schedule (warm-up share, poly decay)
scales with the steps either way (``TrainConfig.lr_warmup``, ``tasks.train.optim.poly_schedule``).
"""

from __future__ import annotations

import math

from schemas import TrainConfig


def swept(cfg: TrainConfig, multiplier: float, steps: int | None = None) -> TrainConfig:
    """``cfg`` with its method's lr × ``multiplier`` (every parameter group scales with it: ``head_lr_mult`` is a
    ratio to ``lr``), and ``steps`` steps when given."""
    method = cfg.method.model_copy(update={"lr": cfg.method.lr * multiplier})
    update: dict = {"method": method}
    if steps is not None:
        update["max_steps"] = steps
    return cfg.model_copy(update=update)


def sweep_steps(max_steps: int, steps: int | None) -> int:
    """Steps of each sweep run: ``steps``, else a quarter of the budget (at least 1)."""
    return steps if steps is not None else max(1, max_steps // 4)


def pick_multiplier(trials: dict[float, dict]) -> float:
    """The lr multiplier whose held-in metrics are best: highest AP, then lowest FPR95, then the multiplier closest
    to 1 (the paper's lr). A trial without an AP (no anomaly pixel in the split, or a diverged run) never wins
    over one with it; when none has one, 1 (or the first multiplier) stays."""

    def key(item: tuple[float, dict]) -> tuple:
        mult, m = item
        ap, fpr = m.get("ap"), m.get("fpr95")
        ok = ap is not None and math.isfinite(ap)
        return (
            ok,
            ap if ok else -1.0,
            -fpr if fpr is not None and math.isfinite(fpr) else -2.0,
            -abs(math.log(mult)),
        )

    if not trials:
        raise ValueError("no sweep trials to pick from")
    best = max(trials.items(), key=key)
    if best[1].get("ap") is None:
        return 1.0 if 1.0 in trials else next(iter(trials))
    return best[0]


def beyond_edge(trials: dict[float, dict]) -> float | None:
    """The next multiplier to try when the best of ``trials`` (``pick_multiplier``) is the largest or the smallest
    tried: one step of the grid's ratio at that edge further (best ×100 after ×10 → ×1000; best ×1 before ×10 →
    ×0.1). None when the best lies inside the grid, or fewer than two multipliers were tried (no ratio), or no trial
    has an AP. A diverged edge never wins, so a sweep stops extending at the lr that diverges."""
    if len(trials) < 2 or all(t.get("ap") is None for t in trials.values()):
        return None
    mults = sorted(trials)
    best = pick_multiplier(trials)
    if best == mults[-1]:
        return best * best / mults[-2]
    if best == mults[0]:
        return best * best / mults[1]
    return None


def sweep_record(lr: float, picked: float, steps: int, trials: dict[float, dict]) -> dict:
    """What the table reports of one method's sweep: the base lr, the picked multiplier and lr, the steps of each
    trial and each multiplier's held-in AP / FPR95 (fractions)."""
    held_in = {f"{m:g}": {"ap": t.get("ap"), "fpr95": t.get("fpr95")} for m, t in trials.items()}
    return {"base_lr": lr, "picked": picked, "lr": lr * picked, "steps": steps, "held_in": held_in}
