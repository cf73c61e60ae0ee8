"""Reading segmenter checkpoints and writing / reading trained method checkpoints.

A segmenter checkpoint is a state-dict file (per-pixel networks, the demo profile's pre-trained ones) or a
``transformers`` model directory (``save_pretrained``: config.json + weights), also given as a hub id that is in
the local Hugging Face cache (``facebook/mask2former-swin-large-cityscapes-semantic``); nothing is downloaded.

Every ``torch.load`` here is ``weights_only=True`` and maps to CPU: a checkpoint is data, never code;
``from_pretrained`` reads safetensors.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.methods import MethodSpec, get_method
from models.segmenters import CheckpointMismatchError, FrozenSegmenter, build_segmenter, load_segmenter_weights
from models.segmenters.base import check_kind
from schemas import MethodConfig, SegmenterConfig, TrainConfig
from schemas.registries import SEGMENTERS
from tasks.imageio import BadInputError
from tasks.shards import sha256_of

METHOD_FORMAT = "anomalyforge-method/2"


def read_checkpoint(path: str | Path, mmap: bool = False) -> Mapping:
    """``torch.load(weights_only=True)`` on CPU; ``mmap`` maps the tensors instead of reading them (zip files).
    A file with a NaN or inf in a floating tensor is a ``BadInputError`` (``check_finite``): every segmenter and
    method checkpoint is read here, so a corrupt one is named once, before any image is scored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4 ..." says nothing a user can act on
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # pickle errors come in many types
        raise ValueError(f"{path}: not a readable weights-only PyTorch checkpoint ({type(e).__name__}: {e})") from e
    check_finite(obj, path)
    return obj


def named_tensors(obj, prefix: str = ""):
    """``(dotted name, tensor)`` of every tensor in a checkpoint object (nested mappings, lists and tuples)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from named_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from named_tensors(v, f"{prefix}.{i}" if prefix else str(i))


def check_finite(obj, source: str | Path) -> None:
    """A ``BadInputError`` naming ``source``, the first floating tensor with a NaN or inf and how many it has."""
    for name, t in named_tensors(obj):
        if (t.is_floating_point() or t.is_complex()) and t.layout == torch.strided and not torch.isfinite(t).all():
            n = int(t.numel() - torch.isfinite(t).sum())
            raise BadInputError(
                f"{source}: tensor {name!r} has {n} non-finite value{'s' if n != 1 else ''} (NaN/inf); "
                "the checkpoint is corrupt"
            )


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # "owner/name" of the Hugging Face hub


def pretrained_directory(checkpoint: str | Path) -> Path | None:
    """The ``transformers`` model directory ``checkpoint`` names (itself, or a hub id's snapshot in the local
    Hugging Face cache), or None when it is a file."""
    path = Path(checkpoint)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BadInputError(f"{path}: a directory without config.json, not a transformers model directory")
        return path
    if path.exists():
        return None
    if HUB_ID.fullmatch(str(checkpoint)):
        from huggingface_hub import snapshot_download  # with transformers: only for checkpoints of the hub
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(str(checkpoint), local_files_only=True))
        except LocalEntryNotFoundError:
            raise FileNotFoundError(
                f"segmenter checkpoint {checkpoint}: no such file or directory, and not in the local Hugging Face "
                f"cache (HF_HUB_CACHE); fetch it once where there is internet: `hf download {checkpoint}` "
                "(README: Mask-classification segmenters)"
            ) from None
    raise FileNotFoundError(f"segmenter checkpoint not found: {path}")


def resolve_segmenter_checkpoint(checkpoint: str | Path) -> Path:
    """The local file or directory of a segmenter checkpoint (a hub id: its cached snapshot)."""
    return pretrained_directory(checkpoint) or Path(checkpoint)


@contextmanager
def quiet_transformers():
    """``transformers``' logging at errors only, for the duration."""
    from transformers.utils import logging

    before = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(before)


def load_pretrained(directory: Path) -> nn.Module:
    """``AutoModelForUniversalSegmentation.from_pretrained`` offline, strictly: weights that are missing,
    unexpected or of another shape are an error listing them, naming ``directory``."""
    from transformers import AutoModelForUniversalSegmentation  # ~4 s to import: only when a directory is read

    try:
        with quiet_transformers():  # its own report of what did not load: ours below lists it, naming the directory
            net, info = AutoModelForUniversalSegmentation.from_pretrained(
                directory, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True
            )
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise BadInputError(f"{directory}: not a loadable transformers segmentation model ({e})") from None
    shapes = [f"{k}: checkpoint {tuple(a)} vs network {tuple(b)}" for k, a, b in info.get("mismatched_keys") or ()]
    problems = {k: sorted(info.get(k) or ()) for k in ("missing_keys", "unexpected_keys")} | {
        "shape mismatches": sorted(shapes)
    }
    if any(problems.values()):
        listing = "; ".join(
            f"{k.replace('_', ' ')} ({len(v)}): {', '.join(map(str, v[:10]))}" for k, v in problems.items() if v
        )
        raise CheckpointMismatchError(f"{directory} does not match {type(net).__name__}: {listing}")
    check_finite(net.state_dict(), directory)
    return net.float()


def frozen_segmenter(
    cfg: SegmenterConfig, checkpoint: str | Path | None = None, state: Mapping | None = None
) -> FrozenSegmenter:
    """Build the configured network and load its weights strictly (``checkpoint`` overrides the config's; ``state``:
    the file's content when already read). A model directory is loaded with ``from_pretrained`` and handed to a
    segmenter whose constructor takes the loaded ``net``."""
    ckpt = checkpoint or cfg.checkpoint
    if ckpt is None:
        raise ValueError(f"segmenter {cfg.name!r} has no checkpoint configured (segmenter.checkpoint)")
    directory = pretrained_directory(ckpt) if state is None else None
    takes_network = "net" in inspect.signature(SEGMENTERS.get(cfg.name)).parameters
    if directory is not None:
        if not takes_network:
            loaders = [n for n, f in SEGMENTERS.items() if "net" in inspect.signature(f).parameters]
            raise BadInputError(
                f"{ckpt} is a transformers model directory, but segmenter {cfg.name!r} reads a state-dict file "
                f"(model directories are for {', '.join(loaders)})"
            )
        return build_segmenter(cfg.name, net=load_pretrained(directory), **cfg.options).freeze()
    if takes_network:
        raise BadInputError(
            f"{ckpt} is a file, but segmenter {cfg.name!r} loads a transformers model directory "
            "(config.json + model.safetensors, as save_pretrained writes it) or a hub id in the local cache"
        )
    seg = build_segmenter(cfg.name, **cfg.options)
    heads = load_segmenter_weights(seg, read_checkpoint(ckpt) if state is None else state, source=str(ckpt))
    if heads:
        print(f"{ckpt}: ignoring {len(heads)} tensors of a method head stored with the segmenter")
    return seg


def method_model(
    spec: MethodSpec, cfg: MethodConfig, segmenter: SegmenterConfig, checkpoint: str | Path, training: bool = True
) -> nn.Module:
    """``spec``'s model over the frozen segmenter of ``checkpoint``; a segmenter of another kind than the method
    needs is an error naming the method, the segmenter and the file."""
    seg = frozen_segmenter(segmenter, checkpoint)
    check_kind(seg, spec.segmenter_kind, spec.name, str(checkpoint))
    return spec.build(cfg, seg, training=training)


def checkpoint_sha256(path: Path) -> str:
    """sha256 of a checkpoint file; of a model directory, over its files' relative names and sha256s in name order."""
    if not path.is_dir():
        return sha256_of(path)
    h = hashlib.sha256()
    for f in sorted(f for f in path.rglob("*") if f.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_of(f)}\n".encode())
    return h.hexdigest()


def save_atomic(obj, path: str | Path) -> Path:
    """torch.save to a temporary name, then rename: a reader never sees half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def save_method(
    path: str | Path,
    spec: MethodSpec,
    model: nn.Module,
    cfg: TrainConfig,
    segmenter_checkpoint: str | Path,
    shards: str,
) -> Path:
    """The trained head (``spec.head_state``) with what rebuilds the model: the config, and the frozen segmenter's
    checkpoint by sha256 and by a path relative to this file (so a run directory can move as a whole)."""
    path = Path(path)
    seg = Path(segmenter_checkpoint).resolve()
    return save_atomic(
        {
            "format": METHOD_FORMAT,
            "method": cfg.method.name,
            "config": cfg.model_dump_json(),
            "config_hash": cfg.content_hash(),
            "shards": str(shards),
            "segmenter": {
                "sha256": checkpoint_sha256(seg),
                "relative": os.path.relpath(seg, path.parent.resolve()),
                "absolute": str(seg),
            },
            "head": spec.head_state(model),
        },
        path,
    )


def is_method_checkpoint(obj) -> bool:
    return isinstance(obj, Mapping) and str(obj.get("format", "")).startswith("anomalyforge-method/")


def _segmenter_file(path: Path, rec: Mapping, override: str | Path | None) -> Path:
    """The frozen segmenter a method checkpoint was trained over: ``override``, else the recorded relative path,
    else the recorded absolute one; its sha256 must be the recorded one."""
    cands = (
        [resolve_segmenter_checkpoint(override)]
        if override
        else [(path.resolve().parent / rec["relative"]).resolve(), Path(rec["absolute"])]
    )
    found = next((c for c in cands if c.exists()), None)
    want = rec["sha256"]
    if found is None:
        raise FileNotFoundError(
            f"{path}: its frozen segmenter checkpoint is missing; looked for {' and '.join(map(str, cands))} "
            f"(sha256 {want[:12]}…). Pass the file with --segmenter-checkpoint PATH"
        )
    got = checkpoint_sha256(found)
    if got != want:
        raise BadInputError(
            f"{path} was trained over the segmenter checkpoint {rec['absolute']} (sha256 {want[:12]}…), but {found} "
            f"has sha256 {got[:12]}…: another network. Pass the right file with --segmenter-checkpoint PATH"
        )
    return found


@dataclass
class LoadedMethod:
    model: nn.Module  # in eval mode
    cfg: TrainConfig
    spec: MethodSpec
    segmenter_checkpoint: Path
    checkpoint: Mapping


def load_method(path: str | Path, segmenter_checkpoint: str | Path | None = None, obj: Mapping | None = None):
    """``save_method``'s file → ``LoadedMethod`` (``obj``: the file's content when already read)."""
    path = Path(path)
    obj = read_checkpoint(path) if obj is None else obj
    fmt = obj.get("format") if isinstance(obj, Mapping) else None
    if fmt != METHOD_FORMAT:
        hint = (
            " (written before methods had their own configs: retrain it with `anomalyforge train`)"
            if fmt == "anomalyforge-method/1"
            else ""
        )
        raise BadInputError(f"{path}: not an anomalyforge method checkpoint of {METHOD_FORMAT} (format {fmt!r}){hint}")
    missing = [k for k in ("config", "segmenter", "head") if k not in obj]
    if missing:
        raise BadInputError(f"{path}: a method checkpoint without {', '.join(missing)}; the file is incomplete")
    cfg = TrainConfig.model_validate_json(obj["config"])
    spec = get_method(cfg.method.name)
    seg_file = _segmenter_file(path, obj["segmenter"], segmenter_checkpoint)
    model = method_model(spec, cfg.method, cfg.segmenter, seg_file, training=False)
    spec.load_head(model, obj["head"], str(path))
    return LoadedMethod(model.eval(), cfg, spec, seg_file, obj)
