"""What a Mask2Former costs on the machine at hand (``make bench-mask2former``): seconds per image and peak memory of
the frozen network's forward (the per-pixel class scores L_k, what evaluation runs) at 1024×512, for the
Cityscapes-semantic Swin-T and Swin-L architectures (``facebook/mask2former-swin-{tiny,large}-cityscapes-semantic``:
same configs, random weights: speed and memory do not depend on the values), against ESPNetv2 s = 2.0, the
per-pixel segmenter of the demo and the frames flow, as the baseline of the same run.

Each network runs in a process of its own, so its peak resident memory (``ru_maxrss``) is its own: printed as the
whole process and as the growth over the process with the model built (the forward's activations). On a GPU
(``--device cuda``) the forward runs under ``torch.autocast`` in ``--dtype`` (bf16 / fp16, what ``accelerate``'s
``mixed_precision`` does) and the peak is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

SWIN = {
    "swin-t": {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "window_size": 7},
    "swin-l": {"embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48], "window_size": 12},
}


def build(name: str):
    """The segmenter adapter around a random network of ``name``'s architecture."""
    if name == "espnetv2":
        from models.segmenters import build_segmenter

        return build_segmenter("espnetv2")
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    from models.segmenters.mask2former import Mask2FormerSegmenter

    backbone = SwinConfig(**SWIN[name], out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, num_labels=19, num_queries=100)  # the checkpoints' values
    return Mask2FormerSegmenter(Mask2FormerForUniversalSegmentation(config), name=f"mask2former-{name}")


def measure(name: str, width: int, height: int, repeats: int, device: str, dtype: str) -> dict:
    """In this process: build, one warm-up forward, ``repeats`` timed ones."""
    torch.manual_seed(0)
    seg = build(name).to(device).eval()
    params = sum(p.numel() for p in seg.parameters())
    x = torch.rand(1, 3, height, width, device=device)
    built_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    autocast = (
        torch.autocast(device, dtype=getattr(torch, dtype)) if device != "cpu" else torch.autocast("cpu", enabled=False)
    )
    times = []
    with torch.no_grad(), autocast:
        for i in range(repeats + 1):
            t = time.perf_counter()
            out = seg(x)
            if device != "cpu":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row = {
        "model": name,
        "params_m": params / 1e6,
        "s_per_image": min(times),
        "s_median": sorted(times)[len(times) // 2],
    }
    row |= {"out": list(out.shape), "peak_rss_gib": peak_kb / 2**20, "forward_rss_gib": (peak_kb - built_kb) / 2**20}
    if device != "cpu":
        row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="espnetv2,swin-t,swin-l")
    ap.add_argument("--size", default="1024x512", help="W×H of the input")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16", help="GPU autocast dtype: bfloat16 or float16")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # run one model in this process and print its row as JSON
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))
    if args.one:
        print(json.dumps(measure(args.one, width, height, args.repeats, args.device, args.dtype)))
        return
    rows = []
    for name in args.models.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--size", args.size, "--repeats", str(args.repeats)]
        cmd += ["--device", args.device, "--dtype", args.dtype]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{name}: {r['params_m']:.1f} M params, {r['s_per_image']:.2f} s/image (median {r['s_median']:.2f}), "
            f"peak RSS {r['peak_rss_gib']:.2f} GiB (+{r['forward_rss_gib']:.2f} GiB in the forward)",
            flush=True,
        )
    base = rows[0]
    print(
        f"\n{args.device}, {torch.get_num_threads()} threads, {width}×{height}, best of {args.repeats}; "
        f"ratios against {base['model']}:"
    )
    print("| model | params (M) | s / image | × time | peak RSS (GiB) | forward (GiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params_m']:.1f} | {r['s_per_image']:.2f} | {r['s_per_image'] / base['s_per_image']:.1f} "
            f"| {r['peak_rss_gib']:.2f} | {r['forward_rss_gib']:.2f} |"
        )


if __name__ == "__main__":
    main()
