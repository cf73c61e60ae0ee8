"""Planning a version's samples up front: which scene, which objects' seeds, which condition, in which shard.

Work is cut into shards of a fixed list of samples decided here, so a shard is a pure function of (config, shard
index): re-running a config only writes the shards that are missing, and the result is byte-identical to an
uninterrupted run."""

from __future__ import annotations

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
    ``<i>_<scene>__<condition>`` (``tasks.sample_format.composite_key`` gives back the shared part)."""
    if not scene_ids:
        raise ValueError("no scenes to synthesize on")
    order = rng_for(seed, "scene-order").permutation(len(scene_ids))
    plans = []
    for i in range(num_samples):
        s = int(order[i % len(scene_ids)])
        key = f"{i:07d}_{scene_ids[s]}".replace(".", "_")
        base = SamplePlan(index=len(plans), key=key, scene_index=s, seed=derive_seed(seed, "sample", i))
        if weather is None:
            plans.append(base)
            continue
        rng = rng_for(seed, "weather", i)
        severity = round(float(rng.uniform(*weather.severity)), 4)
        if weather.mode == "every":
            for cond in weather.rendered():
                plans.append(
                    replace(
                        base,
                        index=len(plans),
                        key=f"{key}{CONDITION_SEP}{cond}",
                        condition=cond,
                        severity=0.0 if cond == CLEAR else severity,
                    )
                )
            continue
        names, p = weather.weighted()
        cond = CLEAR if rng.random() < weather.clear else names[int(rng.choice(len(names), p=p))]
        plans.append(replace(base, condition=cond, severity=0.0 if cond == CLEAR else severity))
    return plans


def split_into_shards(plans: list[SamplePlan], samples_per_shard: int) -> list[list[SamplePlan]]:
    return [plans[i : i + samples_per_shard] for i in range(0, len(plans), samples_per_shard)]
