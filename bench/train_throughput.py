"""Training throughput (``make bench-train``): steps/s of a registered method (``--method``, default EEL on RPL)
over ESPNetv2 s=2.0 at a fixed crop, through the method spec as the trainer runs it.

Two runs in the same process, same model, same number of steps:
  * baseline  — one batch kept in memory and reused: pure compute (forward of the frozen network, the head, the
                loss, backward, the method's optimizer step; extra data such as SLEEG's patches included);
  * streamed  — batches from WebDataset shards through ``tasks.train.data.train_loader`` (decode, crop, flip,
                collate in worker processes), as ``anomalyforge train`` runs.
Prints steps/s of both, their ratio, and the share of the streamed step time spent waiting for data.
Uses the real ESPNetv2 weights from ../shared when present (speed does not depend on them). On a GPU
(``--device cuda``) the same, with bf16 autocast when supported.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from models.methods import TrainingProgress, get_method
from models.segmenters import build_segmenter
from schemas import TrainConfig
from tasks.shards import write_tar_shard
from tasks.train.data import train_loader
from tasks.train.extras import build_extras
from tasks.train.optim import build_optimizer


def write_shards(root: Path, shards: int, per_shard: int, size=(512, 1024)) -> list[str]:
    rng = np.random.default_rng(0)
    urls = []
    for s in range(shards):
        samples = []
        for i in range(per_shard):
            img = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            lab = rng.integers(0, 19, size, dtype=np.uint8)
            lab[100:200, 300:420] = 254
            samples.append(
                {
                    "__key__": f"s{s:03d}_{i:04d}",
                    "image.jpg": cv2.imencode(".jpg", img)[1].tobytes(),
                    "label.png": cv2.imencode(".png", lab)[1].tobytes(),
                }
            )
        path = root / f"shard-{s:06d}.tar"
        write_tar_shard(path, samples)
        urls.append(str(path))
    return urls


def run(
    spec, mcfg, model, batches, steps: int, device: str, autocast: bool, extras: dict
) -> tuple[float, float, float]:
    """(steps/s, seconds spent waiting for data, seconds spent making the method's extra data)."""
    opt = build_optimizer(spec.param_groups(mcfg, model), mcfg, 0.0)
    gen = torch.Generator().manual_seed(0)
    model.train()
    wait = extra = 0.0
    it = iter(batches)
    x, y = next(it)  # warm-up step (allocations, worker start) not timed
    t0 = None
    for step in range(steps + 1):
        if step:
            tw = time.perf_counter()
            x, y = next(it)
            wait += time.perf_counter() - tw
        te = time.perf_counter()
        batch_extras = {name: e.batch(x, y, device) for name, e in extras.items()}  # as the trainer: CPU batch in
        extra += time.perf_counter() - te
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
            loss = spec.loss(mcfg, model, x, y, batch_extras, gen, TrainingProgress(step, steps + 1))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step == 0:
            t0, wait, extra = time.perf_counter(), 0.0, 0.0
    return steps / (time.perf_counter() - t0), wait, extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--crop", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--method", default="eel", help="a registered method (extra data: only providers that need no object bank)"
    )
    args = ap.parse_args()
    spec = get_method(args.method)
    mcfg = spec.default_config()
    torch.manual_seed(0)
    seg = build_segmenter("espnetv2")
    weights = Path(__file__).resolve().parents[2] / "shared/data/espnetv2/espnetv2_s_2.0_city_1024x512.pth"
    if weights.is_file():
        from models.segmenters import load_segmenter_weights

        load_segmenter_weights(seg, torch.load(weights, map_location="cpu", weights_only=True))
    model = spec.build(mcfg, seg).to(args.device)
    autocast = args.device.startswith("cuda") and torch.cuda.is_bf16_supported()
    cfg = TrainConfig(crop=tuple(args.crop), batch_size=args.batch_size, workers=args.workers, shuffle_buffer=8)
    with tempfile.TemporaryDirectory() as tmp:
        urls = write_shards(Path(tmp), shards=max(2, args.workers), per_shard=8)
        fixed = next(iter(train_loader(urls, cfg.model_copy(update={"workers": 0}))))

        def repeat():
            while True:
                yield fixed

        try:
            extras = build_extras(spec.extras(mcfg), tmp, 0)
        except FileNotFoundError as e:
            ap.error(f"{args.method} needs extra data this benchmark does not have: {e}")
        base, _, _ = run(spec, mcfg, model, repeat(), args.steps, args.device, autocast, extras)
        streamed, wait, extra = run(
            spec, mcfg, model, train_loader(urls, cfg), args.steps, args.device, autocast, extras
        )
    print(
        f"{args.method}: device {args.device}, crop {args.crop[0]}x{args.crop[1]}, batch {args.batch_size}, {args.steps} steps"
    )
    print(f"  baseline (batch in memory): {base:.2f} steps/s")
    print(f"  streamed (WebDataset, {args.workers} workers): {streamed:.2f} steps/s")
    print(f"  ratio streamed/baseline: {streamed / base:.2f}")
    print(f"  data wait: {wait / (args.steps / streamed) * 100:.1f} % of streamed step time")
    if extras:
        print(
            f"  extra data ({', '.join(extras)}): {extra / args.steps * 1000:.1f} ms/step, "
            f"{extra / (args.steps / streamed) * 100:.1f} % of streamed step time"
        )


if __name__ == "__main__":
    main()
