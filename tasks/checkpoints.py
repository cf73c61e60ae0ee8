"""Reading segmenter checkpoints and writing / reading trained method checkpoints.

Every ``torch.load`` here is ``weights_only=True`` and maps to CPU: a checkpoint is data, never code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from models.rpl import ResidualAnomalyModel
from models.segmenters import FrozenSegmenter, build_segmenter, load_segmenter_weights
from schemas.config import SegmenterConfig, TrainConfig

METHOD_FORMAT = "anomalyforge-method/1"


def read_checkpoint(path: str | Path) -> Mapping:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
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


def save_method(path: str | Path, model: ResidualAnomalyModel, cfg: TrainConfig, segmenter_checkpoint: Path) -> Path:
    """The trained head (residual block; the projector is dropped) with what is needed to rebuild the model."""
    head = {k: v.detach().cpu() for k, v in model.trainable_state_dict().items() if not k.startswith("projector.")}
    return save_atomic(
        {
            "format": METHOD_FORMAT,
            "config": cfg.model_dump_json(),
            "segmenter_checkpoint": str(segmenter_checkpoint),
            "head": head,
        },
        path,
    )


def load_method(path: str | Path, segmenter_checkpoint: str | Path | None = None):
    """(model in eval mode, its TrainConfig) from ``save_method``'s file."""
    obj = read_checkpoint(path)
    if obj.get("format") != METHOD_FORMAT:
        raise ValueError(f"{path}: not an anomalyforge method checkpoint (format {obj.get('format')!r})")
    cfg = TrainConfig.model_validate_json(obj["config"])
    seg = frozen_segmenter(cfg.segmenter, segmenter_checkpoint or obj["segmenter_checkpoint"])
    model = ResidualAnomalyModel.create(seg, cfg.residual_dim)
    missing, unexpected = model.load_state_dict(obj["head"], strict=False)
    missing = [k for k in missing if not k.startswith("segmenter.")]
    if missing or unexpected:
        raise ValueError(f"{path}: head does not match the model: missing {missing}, unexpected {unexpected}")
    return model.eval(), cfg
