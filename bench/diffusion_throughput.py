"""Diffusion throughput (``make bench-diffusion``): images/s and fraction of peak FLOP/s, plain diffusers
call vs our optimized path (``tasks.synth.diffusion.load_pipeline`` + ``generate_images``) in the same run.

Random weights (same work as real ones). ``--size sd15``: the UNet of Stable Diffusion 1.5 (860 M params)
at 512x512 — meant for a GPU. ``--size tiny`` (default without CUDA): a small UNet at 64x64 so that CI runs
it on CPU in seconds. Both paths run the same number of denoising steps with classifier-free guidance, so
the ratio measures the execution path (dtype, SDPA, channels_last, compile), not fewer steps.

FLOPs are counted once with ``torch.utils.flop_counter`` over a whole pipeline call. Peak: the datasheet
dense figure for known GPUs; otherwise (CPU, unknown GPU) a measured large-matmul rate in the same dtype,
labelled as measured.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from schemas import DiffusionConfig
from tasks.synth.diffusion import generate_images, load_pipeline, resolve_device, resolve_dtype
from tasks.synth.prompts import load_vocabulary, plan_specs
from tasks.synth.random_pipeline import save_random_pipeline

# dense tensor-core peaks (FLOP/s) from the datasheets, by dtype
DATASHEET = {
    "H100": {torch.float16: 989e12, torch.bfloat16: 989e12, torch.float32: 67e12},
    "H200": {torch.float16: 989e12, torch.bfloat16: 989e12, torch.float32: 67e12},
    "A100": {torch.float16: 312e12, torch.bfloat16: 312e12, torch.float32: 19.5e12},
}


def measured_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, table in DATASHEET.items():
            if key in name and dtype in table:
                return table[dtype], f"{name} datasheet"
    return measured_peak(device, dtype), f"measured {str(dtype).removeprefix('torch.')} matmul on {device.type}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (compile, cuDNN autotune, allocator)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    ap.add_argument("--size", choices=["tiny", "sd15"], default="sd15" if cuda else "tiny")
    ap.add_argument("--resolution", type=int, default=None, help="default: 512 for sd15, 64 for tiny")
    ap.add_argument("--batch", type=int, default=4 if cuda else 2)
    ap.add_argument("--steps", type=int, default=20 if cuda else 4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also torch.compile the UNet in our path")
    ap.add_argument("--model-dir", type=Path, default=None, help="reuse a saved random pipeline")
    args = ap.parse_args()
    res = args.resolution or (512 if args.size == "sd15" else 64)
    device = resolve_device("auto")

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_dir or save_random_pipeline(Path(tmp) / f"random-{args.size}", "sd", args.size)
        cfg = DiffusionConfig(
            model=str(model), width=res, height=res, steps=args.steps, batch_size=args.batch, compile=args.compile
        )
        specs = plan_specs(load_vocabulary(), cfg.model_copy(update={"seeds_per_prompt": 1}), 0, set())[: args.batch]
        prompts = [s.prompt for s in specs]

        from diffusers import DiffusionPipeline

        plain = DiffusionPipeline.from_pretrained(str(model), local_files_only=True).to(device)
        plain.set_progress_bar_config(disable=True)

        def run_plain():
            with torch.inference_mode():
                plain(prompts, num_inference_steps=args.steps, height=res, width=res, output_type="np")

        with FlopCounterMode(display=False) as fc:
            run_plain()
        flops = fc.get_total_flops()
        t_plain = time_call(run_plain, device, args.repeats)
        peak_plain, src_plain = peak(device, torch.float32)
        plain.to("cpu")  # free the device for our path

        ours = load_pipeline(cfg, device)
        t_ours = time_call(lambda: generate_images(ours, specs, cfg), device, args.repeats)
        peak_ours, src_ours = peak(device, ours.dtype)

    n = len(prompts)
    params = sum(p.numel() for p in ours.pipe.unet.parameters()) / 1e6
    print(
        f"{args.size} UNet ({params:.0f} M params), {res}x{res}, batch {n}, {args.steps} steps with CFG, "
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'})"
    )
    print(f"work per image: {flops / n / 1e9:.2f} GFLOP (UNet x steps x 2 for guidance, + text encoder + VAE)")
    for name, t, dt, pk, src, sched in (
        ("plain diffusers", t_plain, torch.float32, peak_plain, src_plain, "pipeline default"),
        ("ours", t_ours, ours.dtype, peak_ours, src_ours, cfg.scheduler),
    ):
        rate = flops / t
        print(
            f"  {name:16s}: {n / t:8.3f} images/s  {rate / 1e12:8.3f} TFLOP/s  {100 * rate / pk:5.1f} % of peak "
            f"({pk / 1e12:.1f} TFLOP/s, {src}); {str(dt).removeprefix('torch.')}, scheduler {sched}"
        )
    print(f"speed-up ours / plain: {t_plain / t_ours:.2f}x (same steps; {resolve_dtype('auto', device)} on {device})")


if __name__ == "__main__":
    main()
