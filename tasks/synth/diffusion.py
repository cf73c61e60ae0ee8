"""Stable Diffusion object generation: load a pipeline offline, generate batches, cut objects out, store them.

``load_pipeline`` is the one loading path (hub id from the local HF cache, or a local pipeline directory;
SD 1.x/2.x and SDXL through ``AutoPipelineForText2Image``). It never downloads unless the config allows it
and never falls back to another model: missing weights are a ``WeightsNotFoundError`` saying which model,
where it looked and how to provide it.

The object store (``GeneratedStore``) is an object bank directory that grows batch by batch::

    gen-<batch>.tar          accepted objects of one batch (rgba.png, mask.png, json), as in every bank
    batches/gen-<batch>.json the batch record: spec ids, accepted ObjectRecords, RejectRecords, timings
    previews/gen-<batch>.jpg every generated image of the batch with its mask and the gate's verdict
    objects.parquet          manifest of all accepted objects (rebuilt from the batch records)
    rejects.parquet          every rejected spec with its reason

A batch record is written last, after its tar, so a batch that was interrupted is simply generated again;
ids of accepted and rejected specs are both "done", so nothing is ever generated twice.

diffusers and huggingface_hub are imported inside the functions that need them: seconds to import, and only the
generation stage uses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from data_manifests.parquet import OBJECT_SCHEMA
from schemas import DiffusionConfig, MaskGateConfig, ObjectRecord, RejectRecord
from schemas.registries import SCHEDULERS
from tasks.imageio import encode_rgb, write_bytes_atomic
from tasks.object_bank import OBJECT_MANIFEST, BankObject, bank_sample, manifest_row
from tasks.runtime import check_stop
from tasks.sample_format import REJECTS
from tasks.shards import write_json_atomic, write_rejects, write_table, write_tar_shard
from tasks.synth.photos import gated_object
from tasks.synth.prompts import PromptSpec

log = logging.getLogger(__name__)


class WeightsNotFoundError(FileNotFoundError):
    """The configured diffusion weights are not on this machine."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"diffusion.device is {name!r} but CUDA is not available on this machine")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: float16 on GPU (the UNet's native precision there), float32 on CPU (fp16 is slow there)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _hub_cache(cfg: DiffusionConfig) -> Path:
    if cfg.cache_dir is not None:
        return Path(cfg.cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _missing_weights_message(cfg: DiffusionConfig, cause: BaseException) -> str:
    local = Path(cfg.model).expanduser()
    if local.is_dir():
        where = f"the local directory {local} (it has no model_index.json, or a component is missing)"
    else:
        cache = _hub_cache(cfg)
        repo_dir = cache / ("models--" + cfg.model.replace("/", "--"))
        where = f"the Hugging Face cache {cache} (expected {repo_dir}; local_files_only={cfg.local_files_only})"
    return (
        f"diffusion weights not found: model {cfg.model!r} is not in {where}.\n"
        f"  cause: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}\n"
        "  To fix: on a machine with internet run\n"
        f"    hf download {cfg.model if not local.is_dir() else '<hub id>'} "
        "--exclude '*.ckpt' '*.bin' '*non_ema*'\n"
        "  and copy the cache (HF_HOME) here, or point `objects.diffusion.model` at a local diffusers pipeline\n"
        "  directory (one with model_index.json, e.g. saved by `pipe.save_pretrained(dir)`), or set\n"
        "  `objects.diffusion.cache_dir` to the cache that holds it. Nothing is downloaded at run time."
    )


@dataclass
class LoadedPipeline:
    pipe: object  # a diffusers text-to-image pipeline
    family: str  # the pipeline class name, e.g. StableDiffusionPipeline / StableDiffusionXLPipeline
    device: torch.device
    dtype: torch.dtype
    model: str


def _dpmpp_2m(pipe, karras: bool = False):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=karras
    )


def _euler_a(pipe):
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)


# name -> the pipeline's scheduler replaced (DiffusionConfig.scheduler is validated against these names)
SCHEDULERS.register("dpmpp_2m", _dpmpp_2m)
SCHEDULERS.register("dpmpp_2m_karras", lambda pipe: _dpmpp_2m(pipe, karras=True))
SCHEDULERS.register("euler_a", _euler_a)
SCHEDULERS.register("pipeline", lambda pipe: pipe.scheduler)  # the one the pipeline was saved with


def load_pipeline(cfg: DiffusionConfig, device: torch.device | None = None) -> LoadedPipeline:
    """Load ``cfg.model`` (hub id or local dir) offline and apply the fast path: scheduler, dtype, SDPA
    attention, channels_last and, if asked, ``torch.compile`` of the UNet."""
    from diffusers import AutoPipelineForText2Image

    device = device or resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(
            cfg.model,
            torch_dtype=dtype,
            local_files_only=cfg.local_files_only,
            cache_dir=cfg.cache_dir,
            revision=cfg.revision,
        )
    except (OSError, ValueError) as e:  # diffusers/huggingface_hub report missing files as OSError subclasses
        raise WeightsNotFoundError(_missing_weights_message(cfg, e)) from e
    if getattr(pipe, "safety_checker", None) is not None:
        # objects are generated for anomaly synthesis; a blacked-out image would only be rejected later
        pipe.safety_checker = None
    pipe.scheduler = SCHEDULERS.get(cfg.scheduler)(pipe)
    pipe.to(device)
    pipe.unet.set_default_attn_processor()  # torch SDPA (AttnProcessor2_0) for every attention layer
    if cfg.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if cfg.compile:
        pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead" if device.type == "cuda" else "default")
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, type(pipe).__name__, device, dtype, cfg.model)


def generate_images(lp: LoadedPipeline, specs: list[PromptSpec], cfg: DiffusionConfig) -> list[np.ndarray]:
    """One batched denoising call; one CPU generator per spec, so an image depends on its spec alone."""
    generators = [torch.Generator("cpu").manual_seed(s.seed) for s in specs]
    with torch.inference_mode():
        out = lp.pipe(
            prompt=[s.prompt for s in specs],
            negative_prompt=[s.negative_prompt for s in specs],
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance,
            width=cfg.width,
            height=cfg.height,
            generator=generators,
            output_type="np",
        )
    return [(np.clip(img, 0.0, 1.0) * 255.0).round().astype(np.uint8) for img in out.images]


def objects_from_images(
    images: list[np.ndarray],
    specs: list[PromptSpec],
    masker: Callable[[np.ndarray], np.ndarray],
    gate: MaskGateConfig,
    max_side: int,
    model: str,
) -> tuple[list[BankObject], list[RejectRecord], list[np.ndarray]]:
    """Salient mask + quality gate for each generated image: (objects, rejects, soft masks)."""
    objects, rejects, softs = [], [], []
    for img, spec in zip(images, specs, strict=True):
        soft = masker(img)
        softs.append(soft)

        def record(rgba: np.ndarray, fig: dict[str, float], spec: PromptSpec = spec) -> ObjectRecord:
            return ObjectRecord(
                object_id=spec.object_id,
                source="diffusion",
                class_name=spec.obj.name,
                origin=model,
                prompt=spec.prompt,
                seed=spec.seed,
                width=rgba.shape[1],
                height=rgba.shape[0],
                mask_area=int((rgba[..., 3] >= 128).sum()),
                quality={k: round(v, 4) for k, v in fig.items()},
                height_m=spec.obj.height_m,
            )

        obj, rej = gated_object(img, soft, gate, max_side, record, spec.object_id)
        if obj is not None:
            objects.append(obj)
        else:
            rejects.append(rej.model_copy(update={"stage": "diffusion_gate", "detail": f"{spec.prompt}: {rej.detail}"}))
    return objects, rejects, softs


def preview_sheet(
    images: list[np.ndarray], softs: list[np.ndarray], verdicts: list[str], cell: int = 160
) -> np.ndarray:
    """Rows of (generated image | its salient mask), each labelled with the gate's verdict."""
    rows = []
    for img, soft, verdict in zip(images, softs, verdicts, strict=True):
        a = cv2.resize(img, (cell, cell), interpolation=cv2.INTER_AREA)
        m = cv2.resize((np.clip(soft, 0, 1) * 255).astype(np.uint8), (cell, cell), interpolation=cv2.INTER_AREA)
        row = np.hstack([a, np.dstack([m] * 3)])
        colour = (40, 200, 40) if verdict == "accepted" else (230, 40, 40)
        cv2.rectangle(row, (0, 0), (row.shape[1] - 1, 15), (0, 0, 0), -1)
        cv2.putText(row, verdict[:40], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
        rows.append(row)
    return np.vstack(rows)


def batch_id(specs: list[PromptSpec]) -> str:
    return "gen-" + hashlib.sha256("\n".join(sorted(s.object_id for s in specs)).encode()).hexdigest()[:16]


class GeneratedStore:
    """The growing bank of generated objects (layout in the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.batches = self.root / "batches"

    def records(self) -> list[dict]:
        if not self.batches.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(self.batches.glob("gen-*.json"))]

    def done_ids(self) -> set[str]:
        """Ids of every spec already generated, accepted or rejected."""
        return {i for r in self.records() for i in r["spec_ids"]}

    def write_batch(
        self,
        bid: str,
        specs: list[PromptSpec],
        objects: list[BankObject],
        rejects: list[RejectRecord],
        preview: np.ndarray | None,
        meta: dict,
    ) -> dict:
        """Tar of the accepted objects, then the preview, then the batch record (last: the batch is done)."""
        shard = f"{bid}.tar" if objects else None
        if shard:
            write_tar_shard(
                self.root / shard, [bank_sample(o) for o in sorted(objects, key=lambda o: o.record.object_id)]
            )
        if preview is not None:
            (self.root / "previews").mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self.root / "previews" / f"{bid}.jpg", encode_rgb(preview, "jpg", 90))
        record = {
            "batch": bid,
            "shard": shard,
            "spec_ids": [s.object_id for s in specs],
            "objects": [o.record.model_dump(mode="json") for o in objects],
            "rejects": [r.model_dump() for r in rejects],
            **meta,
        }
        self.batches.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.batches / f"{bid}.json", record)
        return record

    def write_manifest(self) -> Path:
        """objects.parquet + rejects.parquet from every batch record (atomic)."""
        self.root.mkdir(parents=True, exist_ok=True)
        rows, rejects = [], []
        for rec in self.records():
            for o in rec["objects"]:
                rows.append(manifest_row(o, rec["shard"]))
            rejects += [RejectRecord(**r) for r in rec["rejects"]]
        rows.sort(key=lambda r: r["object_id"])
        write_table(self.root / OBJECT_MANIFEST, rows, OBJECT_SCHEMA)
        write_rejects(self.root / REJECTS, rejects)
        return self.root / OBJECT_MANIFEST

    def object_ids(self) -> list[str]:
        return sorted(o["object_id"] for r in self.records() for o in r["objects"])


def run_batch(
    lp: LoadedPipeline,
    specs: list[PromptSpec],
    cfg: DiffusionConfig,
    masker: Callable[[np.ndarray], np.ndarray],
    gate: MaskGateConfig,
    max_side: int,
    store: GeneratedStore,
) -> dict:
    """Generate one batch, gate it and write it to the store; returns the batch record."""
    bid = batch_id(specs)
    check_stop(
        f"generation before batch {bid}; the batches written to {store.root} are kept; run the same command again to resume"
    )
    t0 = time.perf_counter()
    images = generate_images(lp, specs, cfg)
    t1 = time.perf_counter()
    objects, rejects, softs = objects_from_images(images, specs, masker, gate, max_side, lp.model)
    t2 = time.perf_counter()
    rejected = {r.item: r.reason for r in rejects}
    verdicts = [rejected.get(s.object_id, "accepted") for s in specs]
    meta = {
        "model": lp.model,
        "pipeline": lp.family,
        "device": str(lp.device),
        "dtype": str(lp.dtype).removeprefix("torch."),
        "generate_s": round(t1 - t0, 3),
        "mask_s": round(t2 - t1, 3),
    }
    return store.write_batch(bid, specs, objects, rejects, preview_sheet(images, softs, verdicts), meta)
