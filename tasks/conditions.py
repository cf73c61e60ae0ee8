"""Weather condition names, shared by synthesis (tagging samples), evaluation (per-condition rows) and the
benchmark readers: ``clear``, then every entry of ``WEATHER`` in registry order (``tasks/weather.py`` registers
the built-in effects; plug-ins add theirs)."""

from __future__ import annotations

from schemas import ADVERSE, CLEAR
from schemas.registries import WEATHER

__all__ = ["ADVERSE", "CLEAR", "adverse_conditions", "condition_order", "conditions"]


def conditions() -> tuple[str, ...]:
    """Every condition a sample or a benchmark image can be tagged with: ``clear``, then the registered effects."""
    return (CLEAR, *WEATHER.names())


def adverse_conditions() -> tuple[str, ...]:
    return tuple(WEATHER.names())


def condition_order(name: str) -> tuple[int, str]:
    """Sort key of report rows: clear, the registered conditions in registry order, adverse, then anything else."""
    order = (*conditions(), ADVERSE)
    return (order.index(name) if name in order else len(order), name)
