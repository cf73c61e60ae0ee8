"""Optimizers a method's config can name (``MethodConfig.optimizer``), one registry like the others: the
trainer builds whichever the config names from the spec's parameter groups, and never branches on the name."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from schemas import MethodConfig
from schemas.registries import OPTIMIZERS

Builder = Callable[[list[dict], MethodConfig, float], torch.optim.Optimizer]


@OPTIMIZERS.register("adam")
def adam(groups: list[dict], cfg: MethodConfig, weight_decay: float) -> torch.optim.Optimizer:
    """Adam (RPL, CoroCL and EEL train with it)."""
    return torch.optim.Adam(groups, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict], cfg: MethodConfig, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (the top-K one-vs-rest fine-tuning); its decoupled weight decay is the run's or the method's."""
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict], cfg: MethodConfig, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with ``cfg.momentum`` (SLEEG's authors train with SGD, lr 0.01)."""
    return torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=weight_decay)


def build_optimizer(groups: list[dict], cfg: MethodConfig, weight_decay: float) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.optimizer)(groups, cfg, weight_decay)


def poly_schedule(total_steps: int, power: float, warmup: float = 0.0) -> Callable[[int], float]:
    """lr factor min(1, (step + 1) / w) · (1 − step / total)^power: a linear warm-up over the first
    w = ⌈warmup · total⌉ steps, then the poly decay. Both are shares of the budget, so a 150-step run and a
    40 000-step one have the same shape."""
    w = math.ceil(warmup * total_steps) if warmup > 0 else 0
    return lambda step: (
        min(1.0, (step + 1) / w if w else 1.0) * max(0.0, 1.0 - min(step, total_steps) / total_steps) ** power
    )
