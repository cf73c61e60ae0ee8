"""Reading segmenter checkpoints and writing / reading trained method checkpoints.

Every ``torch.load`` here is ``weights_only=True`` and maps to CPU: a checkpoint is data, never code.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.methods import MethodSpec, get_method
from models.segmenters import FrozenSegmenter, build_segmenter, load_segmenter_weights
from schemas import SegmenterConfig, TrainConfig
from tasks.imageio import BadInputError
from tasks.shards import sha256_of

METHOD_FORMAT = "anomalyforge-method/2"


def read_checkpoint(path: str | Path, mmap: bool = False) -> Mapping:
    """``torch.load(weights_only=True)`` on CPU; ``mmap`` maps the tensors instead of reading them (zip files)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4 ..." says nothing a user can act on
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # pickle errors come in many types
        raise ValueError(f"{path}: not a readable weights-only PyTorch checkpoint ({type(e).__name__}: {e})") from e


def frozen_segmenter(cfg: SegmenterConfig, checkpoint: str | Path | None = None) -> FrozenSegmenter:
    """Build the configured network and load its weights strictly (``checkpoint`` overrides the config's)."""
    ckpt = checkpoint or cfg.checkpoint
    if ckpt is None:
        raise ValueError(f"segmenter {cfg.name!r} has no checkpoint configured (segmenter.checkpoint)")
    seg = build_segmenter(cfg.name, **cfg.options)
    heads = load_segmenter_weights(seg, read_checkpoint(ckpt), source=str(ckpt))
    if heads:
        print(f"{ckpt}: ignoring {len(heads)} tensors of a method head stored with the segmenter")
    return seg


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
                "sha256": sha256_of(seg),
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
        [Path(override)] if override else [(path.resolve().parent / rec["relative"]).resolve(), Path(rec["absolute"])]
    )
    found = next((c for c in cands if c.is_file()), None)
    want = rec["sha256"]
    if found is None:
        raise FileNotFoundError(
            f"{path}: its frozen segmenter checkpoint is missing; looked for {' and '.join(map(str, cands))} "
            f"(sha256 {want[:12]}…). Pass the file with --segmenter-checkpoint PATH"
        )
    got = sha256_of(found)
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
    cfg = TrainConfig.model_validate_json(obj["config"])
    spec = get_method(cfg.method.name)
    seg_file = _segmenter_file(path, obj["segmenter"], segmenter_checkpoint)
    model = spec.build(cfg.method, frozen_segmenter(cfg.segmenter, seg_file), training=False)
    spec.load_head(model, obj["head"], str(path))
    return LoadedMethod(model.eval(), cfg, spec, seg_file, obj)
