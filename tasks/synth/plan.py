"""Planning a version's samples up front: which scene, which objects' seeds, which condition, in which shard.

Work is cut into shards of a fixed list of samples decided here, so a shard is a pure function of (config, shard
index): re-running a config only writes the shards that are missing, and the result is byte-identical to an
uninterrupted run."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from schemas import WeatherConfig
from tasks.conditions import CLEAR
from tasks.sample_format import CONDITION_SEP
from tasks.seeding import derive_seed, rng_for


@dataclass(frozen=True)
class SamplePlan:
    index: int
    key: str
    scene_index: int
    seed: int  # of the composite (placement, harmonization): shared by the conditions of one composite
    condition: str = CLEAR
    severity: float = 0.0


def plan_samples(
    scene_ids: list[str], num_samples: int, seed: int, weather: WeatherConfig | None = None
) -> list[SamplePlan]:
    """Composite i uses scene perm[i mod n] of a seeded permutation: every scene is used before any repeats.

    With ``weather`` in mode ``random`` each sample draws its condition and severity (from the seed, so a plan is
    the same in every run); in mode ``every`` each composite becomes one sample per condition, keyed
    ``<i>_<scene>__<condition>`` (``tasks.sample_format.composite_key`` gives back the shared part). Every sample
    is a function of its composite index alone: ``shard_plans`` makes one shard's part without the rest."""
    return list(iter_samples(scene_ids, num_samples, seed, weather))


def iter_samples(
    scene_ids: list[str], num_samples: int, seed: int, weather: WeatherConfig | None = None, first: int = 0
) -> Iterator[SamplePlan]:
    """The samples of ``plan_samples`` one by one, lazily, from composite ``first`` on."""
    if not scene_ids:
        raise ValueError("no scenes to synthesize on")
    order = rng_for(seed, "scene-order").permutation(len(scene_ids))
    rendered = weather.rendered() if weather is not None and weather.mode == "every" else None
    weighted = weather.weighted() if weather is not None and rendered is None else None
    for i in range(first, num_samples):
        yield from _composite_samples(i, scene_ids, order, seed, weather, rendered, weighted)


def samples_per_composite(weather: WeatherConfig | None) -> int:
    return len(weather.rendered()) if weather is not None and weather.mode == "every" else 1


def _composite_samples(i, scene_ids, order, seed, weather, rendered, weighted) -> list[SamplePlan]:
    s = int(order[i % len(scene_ids)])
    key = f"{i:07d}_{scene_ids[s]}".replace(".", "_")
    per = len(rendered) if rendered is not None else 1
    base = SamplePlan(index=i * per, key=key, scene_index=s, seed=derive_seed(seed, "sample", i))
    if weather is None:
        return [base]
    rng = rng_for(seed, "weather", i)
    severity = round(float(rng.uniform(*weather.severity)), 4)
    if rendered is not None:
        return [
            replace(
                base,
                index=i * per + c,
                key=f"{key}{CONDITION_SEP}{cond}",
                condition=cond,
                severity=0.0 if cond == CLEAR else severity,
            )
            for c, cond in enumerate(rendered)
        ]
    names, p = weighted
    cond = CLEAR if rng.random() < weather.clear else names[int(rng.choice(len(names), p=p))]
    return [replace(base, condition=cond, severity=0.0 if cond == CLEAR else severity)]


def count_shards(num_samples: int, weather: WeatherConfig | None, samples_per_shard: int) -> int:
    return -(-num_samples * samples_per_composite(weather) // samples_per_shard)


def shard_plans(
    scene_ids: list[str],
    num_samples: int,
    seed: int,
    weather: WeatherConfig | None,
    samples_per_shard: int,
    shard_index: int,
) -> list[SamplePlan]:
    """Shard ``shard_index``'s part of ``plan_samples`` (samples ``[k S, (k+1) S)``), made without the others: the
    plan of a billion samples never exists in memory."""
    per = samples_per_composite(weather)
    lo = shard_index * samples_per_shard
    hi = min(num_samples * per, lo + samples_per_shard)
    out = []
    for plan in iter_samples(scene_ids, num_samples, seed, weather, first=lo // per):
        if plan.index >= hi:
            break
        if plan.index >= lo:
            out.append(plan)
    return out


def split_into_shards(plans: list[SamplePlan], samples_per_shard: int) -> list[list[SamplePlan]]:
    return [plans[i : i + samples_per_shard] for i in range(0, len(plans), samples_per_shard)]
