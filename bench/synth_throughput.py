"""Benchmark of the composite path at 2048x1024 (``make bench-synth``).

Full path   = place + harmonize + composite + encode + shard write, per sample.
Baseline    = encode + shard write of the same scene images, labels and masks (no synthesis).
Both run on the same decoded scenes in the same process; the ratio full/baseline is what we track
(target <= 2.0). Scenes are the demo profile's procedural scenes rendered at full Cityscapes size, objects
the demo bank (real photos cut out with rembg).

Dask = the whole ``synth`` flow with its shard tasks on a local Dask cluster (prefect-dask) of 1 and of 2 worker
processes, at the same scene size, 16 samples per shard task: samples/s of the composite + shards stage, the
2-worker speed-up, and the fixed cost of the cluster (the stage's time beyond the shards' own work divided among
the workers: worker start-up, imports, each worker's compositor, Prefect's task-run API calls).
``--dask-samples`` (0 to skip); tasks far smaller than that fixed cost measure it, not the scaling.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from schemas import DemoScenesConfig, ObjectBankConfig, SynthConfig
from tasks.imageio import encode_gray_png, encode_rgb
from tasks.object_bank import read_object_bank
from tasks.runtime import configure_process
from tasks.scenes import load_scene
from tasks.scenes.cityscapes import index_cityscapes
from tasks.scenes.demo import write_demo_scenes
from tasks.shards import write_tar_shard
from tasks.synth.compositor import Compositor
from tasks.synth.pipeline import build_object_bank
from tasks.synth.placement import NoPlacementError
from tasks.synth.plan import plan_samples
from tasks.synth.writer import encode_composite


def main() -> None:
    configure_process()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3, help="best of N timings for each path")
    ap.add_argument("--dask-samples", type=int, default=192, help="samples per Dask run; 0: skip")
    args = ap.parse_args()

    cfg = SynthConfig(
        name="bench",
        num_samples=args.samples,
        scenes={"kind": "demo", "demo": DemoScenesConfig(num_scenes=args.scenes, width=args.width, height=args.height)},
        objects=ObjectBankConfig(demo_objects=True),
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_demo_scenes(tmp / "scenes", cfg.scenes.demo, cfg.seed)
        refs, _ = index_cityscapes(tmp / "scenes")
        scenes = [load_scene(r) for r in refs]
        bank = read_object_bank(build_object_bank(cfg, tmp / "objects", scenes=refs))
        comp = Compositor(cfg, bank)
        plans = plan_samples([s.scene_id for s in scenes], cfg.num_samples, cfg.seed)

        # samples whose placement fails are quarantined in a real run; both paths use the same samples
        ok_plans = []
        for p in plans:
            try:
                comp.compose(scenes[p.scene_index], p)
                ok_plans.append(p)
            except NoPlacementError:
                pass
        quarantined = len(plans) - len(ok_plans)
        plans = ok_plans

        def compose_all() -> list:
            return [comp.compose(scenes[p.scene_index], p) for p in plans]

        def full() -> int:
            samples = [encode_composite(c, "jpg", 95) for c in compose_all()]
            write_tar_shard(tmp / "full.tar", samples)
            return len(samples)

        empty = np.zeros(scenes[0].label.shape, np.uint8)

        def baseline() -> int:
            samples = []
            for p in plans:
                s = scenes[p.scene_index]
                samples.append(
                    {
                        "__key__": p.key,
                        "image.jpg": encode_rgb(s.image, "jpg", 95),
                        "label.png": encode_gray_png(s.label),
                        "mask.png": encode_gray_png(empty),
                        "meta.json": b"{}",
                    }
                )
            write_tar_shard(tmp / "base.tar", samples)
            return len(samples)

        def best(fn) -> float:
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return min(times)

        n = len(plans)
        t_base, t_full = best(baseline), best(full)
        # where the full path's time goes (one pass)
        t = time.perf_counter()
        comps = compose_all()
        t_compose = time.perf_counter() - t

    print(f"scenes {args.width}x{args.height}, {n} samples, objects in bank: {len(bank)}, best of {args.repeats}")
    print(
        f"baseline  encode + shard write          : {n / t_base:7.2f} samples/s  ({1000 * t_base / n:6.1f} ms/sample)"
    )
    print(
        f"full      place+harmonize+composite+enc : {n / t_full:7.2f} samples/s  ({1000 * t_full / n:6.1f} ms/sample)"
    )
    print(
        f"          of which place+harmonize+composite: {1000 * t_compose / n:6.1f} ms/sample "
        f"({sum(len(c.meta.objects) for c in comps) / n:.2f} objects/sample; {quarantined} more quarantined, not timed)"
    )
    print(f"ratio full / baseline: {t_full / t_base:.2f}  (target <= 2.0)")
    if args.dask_samples:
        dask_workers(args.dask_samples, args.width, args.height)


def dask_workers(samples: int, width: int, height: int, per_shard: int = 16) -> None:
    """The synth flow on a local Dask cluster of 1, then 2 worker processes (same bank and scenes, new seeds)."""
    import json

    import yaml

    from flows.synth import run_synth

    cfg = {
        "name": "bench-dask",
        "num_samples": samples,
        "scenes": {"kind": "demo", "demo": {"num_scenes": 4, "width": width, "height": height}},
        "objects": {"demo_objects": True},
        "shards": {"samples_per_shard": per_shard},
    }
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(cfg))
        for seed, workers in ((1, 1), (2, 2)):
            res = run_synth(str(path), f"{tmp}/run", {"seed": seed}, workers, task_runner="dask")
            stage = res["timings"]["composite + shards"]
            work = sum(json.loads(p.read_text())["seconds"] for p in Path(res["shard_dir"]).glob(".parts/*.json"))
            rates[workers] = res["samples"] / stage
            print(
                f"dask, {workers} worker process{'es' if workers > 1 else '  '}  : {rates[workers]:7.2f} samples/s  "
                f"({res['samples']} samples of {width}x{height} in {res['shards']} tasks; shard work {work:.1f} s, "
                f"cluster overhead {stage - work / workers:.1f} s)"
            )
    print(f"dask speed-up 2 / 1 workers: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
