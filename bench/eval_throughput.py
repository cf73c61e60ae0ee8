"""Benchmark of the whole evaluation against the bare network (``make bench-eval``).

A RoadAnomaly-sized benchmark built here: ``--images`` 1280x720 JPEG frames (smooth noise) with 0/1/255 labels
(an anomaly box, a void band) in the ``road_anomaly_pre`` layout, evaluated at ``--input-width`` 1024 (the
network runs at 1024x576, scores are computed at the label's 1280x720, as the readers give them). The model is the
demo profile's ESPNetv2 (``espnetv2_demo``, random weights of a fixed seed: its cost does not depend on what it
learnt) saved as a state dict and loaded through ``load_eval_model``, as ``anomalyforge eval`` loads it.

Timed in one process, best of ``--repeats``, the two interleaved (this machine's speed drifts by ±25 %):

- baseline: the bare forward of the same network over the same images, decoded and resized beforehand (decode
  excluded), one image per forward;
- whole evaluation with every score of ``--scores`` in one pass (``evaluate_dataset``: read and decode, forward,
  every score, pixel metrics, component metrics, the score cache), at ``--batch-size``;
- the same scores one pass each, as evaluation ran before one forward served every score (``--old`` to time it).

The ratio whole / baseline is the target (<= 1.15 with 5 scores). The pipeline's fill and drain (the first
image's forward waits for nothing to overlap, the last one's scores and metrics have no forward to hide behind) and
the component pass after it are paid once per benchmark: 24 frames by default (RoadAnomaly has 60), since at 8
they add about 0.1 to the ratio. The metrics of the one-pass evaluation are
checked against the one-score passes (largest difference printed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.segmenters import build_segmenter
from schemas import BenchmarkConfig, EvalConfig
from tasks.eval.benchmarks import load_benchmark
from tasks.eval.evaluate import evaluate_dataset, load_eval_model
from tasks.scoring import run_size

METRICS = ("auroc", "ap", "fpr95", "f1_components")


def make_benchmark(root: Path, n: int, width: int, height: int, seed: int = 0) -> None:
    """``n`` frames in the ``road_anomaly_pre`` layout: ``original/<id>.jpg``, ``labels/<id>.png`` (0/1/255)."""
    rng = np.random.default_rng(seed)
    (root / "original").mkdir(parents=True)
    (root / "labels").mkdir()
    for k in range(n):
        img = cv2.GaussianBlur((rng.random((height, width, 3)) * 255).astype(np.uint8), (0, 0), 3)
        lab = np.zeros((height, width), np.uint8)
        y, x = rng.integers(height // 3, height - height // 4), rng.integers(0, width - width // 6)
        lab[y : y + height // 8, x : x + width // 8] = 1
        lab[: height // 14] = 255
        cv2.imwrite(str(root / "original" / f"{k:03d}.jpg"), img)
        cv2.imwrite(str(root / "labels" / f"{k:03d}.png"), lab)


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--input-width", type=int, default=1024)
    ap.add_argument("--scores", default="msp,max_logit,entropy,energy,max_min")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--old", action="store_true", help="also time one pass per score (the path before)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples of the 95 %% intervals (0: none)")
    args = ap.parse_args()
    scores = args.scores.split(",")
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory(prefix="anomalyforge-bench-eval-") as tmp:
        root = Path(tmp) / "ra"
        make_benchmark(root, args.images, args.width, args.height)
        ckpt = Path(tmp) / "espnetv2_demo.pt"
        torch.save(build_segmenter("espnetv2_demo").net.state_dict(), ckpt)
        spec = BenchmarkConfig(kind="road_anomaly_pre", root=root, name="ra")
        common = {"model": ckpt, "segmenter": "espnetv2_demo", "datasets": [spec], "input_width": args.input_width}
        common |= {"device": args.device, "panels": 0, "bootstrap": args.bootstrap}
        cfg = EvalConfig(**common, score=scores, batch_size=args.batch_size)
        model = load_eval_model(cfg)

        # baseline: the bare forward over decoded, resized images (decode excluded)
        ds = load_benchmark(spec.kind, spec.root, spec.name, spec.split, spec.val_fraction)
        from schemas import SegmenterConfig
        from tasks.checkpoints import frozen_segmenter

        seg = frozen_segmenter(SegmenterConfig(name="espnetv2_demo"), ckpt).to(args.device)
        size = run_size((args.height, args.width), seg.size_multiple, args.input_width)
        xs = []
        for s in ds.samples():
            x = torch.from_numpy(s.image).to(args.device).permute(2, 0, 1)[None].float() / 255.0
            xs.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))

        def bare():
            with torch.inference_mode():
                for x in xs:
                    seg(x)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()

        results = {}

        def whole():
            results["all"] = evaluate_dataset(model, spec, cfg, progress=False)

        bare()  # warm-ups (numba, the allocator)
        whole()
        n, t_bare, t_all = len(xs), float("inf"), float("inf")
        for _ in range(args.repeats):  # interleaved, so both see the machine in the same state
            t_bare = min(t_bare, best_of(bare, 1) / n)
            t_all = min(t_all, best_of(whole, 1) / n)
        print(f"{n} images {args.width}x{args.height} -> network at {size[1]}x{size[0]}, espnetv2_demo, "
              f"{args.device}, {torch.get_num_threads()} torch threads, batch {args.batch_size}, best of {args.repeats}, "
              f"{args.bootstrap} bootstrap resamples")  # fmt: skip
        print(f"baseline  bare forward (decode excluded)      : {1 / t_bare:6.2f} img/s  ({1000 * t_bare:7.1f} ms/img)")
        print(f"whole     evaluation, {len(scores)} scores in one pass   : {1 / t_all:6.2f} img/s  "
              f"({1000 * t_all:7.1f} ms/img)")  # fmt: skip

        one = {}
        for score in scores:  # one-score passes: the metrics the one-pass results must equal
            c1 = EvalConfig(**common, score=[score])
            m1 = load_eval_model(c1)
            if args.old:
                t = best_of(
                    lambda m1=m1, c1=c1, score=score: one.update({score: evaluate_dataset(m1, spec, c1, False)}), 1
                )  # noqa: E501
                one[f"t_{score}"] = t / n
            else:
                one[score] = evaluate_dataset(m1, spec, c1, progress=False)
        if args.old:
            t_old = sum(one[f"t_{s}"] for s in scores)
            print(f"before    one pass per score ({len(scores)} passes)        : {1 / t_old:6.2f} img/s  "
                  f"({1000 * t_old:7.1f} ms/img)")  # fmt: skip
        by_score = {r["score"]: r["metrics"] for r in results["all"]}
        diff = max(abs(by_score[s][k] - one[s][0]["metrics"][k]) for s in scores for k in METRICS)
        print(f"largest metric difference, one pass vs one score each: {diff:.2e} ({', '.join(METRICS)})")
        print(f"ratio whole / bare forward: {t_all / t_bare:.2f}  (target <= 1.15)")
        if args.old:
            print(f"ratio before / bare forward: {t_old / t_bare:.2f}; one pass is {t_old / t_all:.1f}x faster")


if __name__ == "__main__":
    main()
