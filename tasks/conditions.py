"""Weather condition names, shared by synthesis (tagging samples), evaluation (per-condition rows) and the
benchmark readers: ``clear``, then every entry of ``WEATHER`` in registry order (``tasks/weather.py`` registers
the physical effects, family ``weather``; ``tasks/corruptions.py`` the ImageNet-C corruptions, family
``corruption``; plug-ins add theirs)."""

from __future__ import annotations

from schemas import ADVERSE, CLEAR
from schemas.registries import WEATHER

__all__ = [
    "ADVERSE",
    "CLEAR",
    "adverse_conditions",
    "condition_order",
    "conditions",
    "families",
    "family_of",
    "condition_tag",
    "split_tag",
]


def conditions(family: str | None = None) -> tuple[str, ...]:
    """Every condition a sample or a benchmark image can be tagged with: ``clear``, then the registered effects
    (those of one ``family`` only: ``weather``, what synthesis renders; ``corruption``, ImageNet-C)."""
    return (CLEAR, *adverse_conditions(family))


def adverse_conditions(family: str | None = None) -> tuple[str, ...]:
    return tuple(n for n in WEATHER.names() if family is None or family_of(n) == family)


def condition_order(name: str) -> tuple[int, float, str]:
    """Sort key of report rows: clear, the registered conditions in registry order (each followed by its
    severities, lightest first), adverse, then anything else."""
    order = (*conditions(), ADVERSE)
    cond, sev = split_tag(name)
    try:
        level = -1.0 if sev is None else float(sev)
    except ValueError:
        level = float("inf")
    return (order.index(cond) if cond in order else len(order), level, name)


def family_of(name: str) -> str | None:
    """The family of a registered condition (``weather``, ``corruption``, a plug-in's); None for clear."""
    return None if name == CLEAR else getattr(WEATHER.get(name), "family", "weather")


def families() -> dict[str, tuple[str, ...]]:
    """{family: its conditions in registry order}, families in the order of their first condition."""
    out: dict[str, list[str]] = {}
    for name in WEATHER.names():
        out.setdefault(family_of(name), []).append(name)
    return {f: tuple(names) for f, names in out.items()}


SEVERITY_SEP = "@"


def condition_tag(condition: str, severity: str | float | int | None) -> str:
    """The evaluation tag of an image rendered at a severity: ``fog@0.67``, ``c_gaussian_noise@3``; the condition
    alone without one. Its metrics also pool into the condition's (and, but for clear, into adverse)."""
    if severity is None or severity == "":
        return condition
    return f"{condition}{SEVERITY_SEP}{severity if isinstance(severity, str) else format(severity, 'g')}"


def split_tag(tag: str) -> tuple[str, str | None]:
    """``fog@0.67`` -> (``fog``, ``0.67``); ``fog`` -> (``fog``, None)."""
    cond, sep, sev = tag.partition(SEVERITY_SEP)
    return cond, (sev if sep else None)
