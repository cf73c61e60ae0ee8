"""Benchmark of the weather effects at 2048x1024 (``make bench-weather``).

One scene with its trainId label: demo scene 0 (``tasks.scenes.demo``) rendered at full Cityscapes size,
with the flat-ground camera of a scene without a camera file (focal ``WeatherConfig.focal_px_per_width`` x width,
camera height 1.22 m). A flat demo scene encodes faster than a textured photo, so the JPEG ratios are pessimistic.
Timed, median of N after one warm-up, in one process:

- baselines: the image encoded as JPEG q95 and as PNG (``encode_rgb``), and the whole sample as the shard writer
  encodes it (``encode_sample``: JPEG q95 image, PNG label, PNG mask of zeros, a small meta.json);
- every condition of the weather family's ``render`` (the ImageNet-C family weathers benchmarks, not shards) at the given severity, each call on a fresh ``Frame`` (a real run
  builds one per sample, so the depth map it caches is part of the cost) and a fresh rng of the same seed.

The ratios are what we track: an effect's cost against what a sample already pays to be encoded. OpenCV runs
with ``--threads`` threads (default 1, as ``tasks.runtime.configure_process`` sets it: one shard worker per core).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np

from schemas import DemoScenesConfig, WeatherConfig
from tasks.conditions import adverse_conditions
from tasks.imageio import encode_rgb
from tasks.labels import label_ids_to_train_ids
from tasks.runtime import configure_process
from tasks.sample_format import encode_sample
from tasks.scenes.demo import CAMERA_Z, render_scene
from tasks.weather import WEATHER_FAMILY, Frame, render


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def load_inputs(args: argparse.Namespace, wcfg: WeatherConfig) -> tuple[np.ndarray, np.ndarray, Frame, str]:
    """(image RGB, trainId label, a Frame of the scene's geometry, a description of the scene)."""
    W, H = args.width, args.height
    image, label_ids, _, horizon = render_scene(0, DemoScenesConfig(width=W, height=H), args.seed)
    label = label_ids_to_train_ids(label_ids)
    frame = Frame(label, horizon, CAMERA_Z, wcfg.focal_px_per_width * W, wcfg.max_depth_m)
    return image, label, frame, f"demo scene 0, seed {args.seed}"


def main() -> None:
    configure_process()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=10, help="median of N timings (after one warm-up)")
    ap.add_argument("--severity", type=float, nargs="+", default=[0.5], help="one or more severities in [0, 1]")
    ap.add_argument("--threads", type=int, default=1, help="OpenCV threads (1: one shard worker per core)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the demo scene and of the effects' rng")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if any(not 0 <= s <= 1 for s in args.severity):
        ap.error("--severity values must be in [0, 1]")
    cv2.setNumThreads(args.threads)  # after configure_process, which sets 1

    W, H = args.width, args.height
    wcfg = WeatherConfig()
    image, label, geometry, source = load_inputs(args, wcfg)
    mask = np.zeros(label.shape, np.uint8)
    meta = json.dumps({"key": "bench-000000", "condition": "clear", "severity": 0.0, "objects": []}).encode()

    def frame() -> Frame:
        """A fresh Frame (no cached depth map) of the scene's geometry, as a real run builds per sample."""
        g = geometry
        return Frame(g.label, g.horizon, g.camera_height, g.focal, g.max_depth)

    t_jpg = median_ms(lambda: encode_rgb(image, "jpg", 95), args.repeats)
    t_png = median_ms(lambda: encode_rgb(image, "png"), args.repeats)
    t_sample = median_ms(lambda: encode_sample("bench-000000", image, label, mask, meta, "jpg", 95), args.repeats)
    t_depth = median_ms(lambda: frame().depth_half, args.repeats)

    rows: list[tuple[str, float]] = []
    for severity in args.severity:
        for name in adverse_conditions(WEATHER_FAMILY):  # what synthesis renders (ImageNet-C is for benchmarks)
            options = wcfg.options.get(name)

            def call(name=name, severity=severity, options=options):
                return render(name, image, frame(), severity, np.random.default_rng(args.seed), options)

            rows.append((f"{name} @ {severity:g}", median_ms(call, args.repeats)))

    print(
        f"scene {W}x{H} ({source}), median of {args.repeats} after 1 warm-up, OpenCV threads "
        f"{cv2.getNumThreads()}; horizon row {geometry.horizon:.0f}, focal {geometry.focal:.1f} px, "
        f"camera height {geometry.camera_height:g} m"
    )
    head = f"{'condition':<26} {'ms/image':>9} {'x jpg enc':>10} {'x sample enc':>13} {'x png enc':>10}"
    print(head)
    print("-" * len(head))

    def line(name: str, ms: float) -> None:
        print(f"{name:<26} {ms:9.1f} {ms / t_jpg:10.2f} {ms / t_sample:13.2f} {ms / t_png:10.2f}")

    line("baseline: jpg q95 image", t_jpg)
    line("baseline: png image", t_png)
    line("baseline: sample (jpg)", t_sample)
    line("  (depth map, in each row)", t_depth)
    print("-" * len(head))
    for name, ms in rows:
        line(name, ms)
    worst_name, worst = max(rows, key=lambda r: r[1])
    print(f"slowest: {worst_name}, {worst:.1f} ms = {worst / t_sample:.2f}x the whole-sample encode (jpg)")


if __name__ == "__main__":
    main()
