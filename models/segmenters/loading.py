"""Strict state-dict loading for the checkpoint layouts our field passes around (no file I/O here).

Accepted: a plain state dict, or one wrapped as ``{"state_dict": ...}`` (NVIDIA semantic-segmentation),
``{"model": ...}`` (RPL, PEBAL) or ``{"model_state": ...}``; keys prefixed with ``module.`` (DataParallel) and/or
``branch1.`` (RPL's and PEBAL's ``Network`` wrapper). A checkpoint of a whole RPL model also carries the
method's own head (``residual_block.*``): those keys are returned separately, never silently dropped.
Anything else that does not match is an error listing the missing and unexpected keys.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

WRAPPERS = ("state_dict", "model", "model_state")
PREFIXES = ("module.", "branch1.")
METHOD_HEADS = ("residual_block.",)  # RPL's residual head inside DeepWV3Plus


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not match the network."""


def unwrap_state_dict(obj: Mapping, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint object, with wrapper prefixes removed."""
    for _ in range(3):  # {"model": {"state_dict": ...}} exists in the wild
        if not isinstance(obj, Mapping):
            raise CheckpointMismatchError(f"{source}: expected a state dict, got {type(obj).__name__}")
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[w] for w in WRAPPERS if w in obj), None)
        if inner is None:
            raise CheckpointMismatchError(
                f"{source}: no tensors and none of the wrappers {WRAPPERS} (top-level keys: {sorted(obj)[:10]})"
            )
        obj = inner
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        k = key
        stripped = True
        while stripped:
            stripped = False
            for p in PREFIXES:
                if k.startswith(p):
                    k, stripped = k[len(p) :], True
        out[k] = value
    return out


def split_method_heads(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(segmenter keys, keys of an anomaly method's head stored in the same checkpoint)."""
    heads = {k: v for k, v in sd.items() if k.startswith(METHOD_HEADS)}
    return {k: v for k, v in sd.items() if k not in heads}, heads


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with an error that lists what is missing, unexpected and mis-shaped."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs network {tuple(own[k].shape)}"
        for k in set(own) & set(sd)
        if sd[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:

        def listing(title: str, items: list[str]) -> str:
            if not items:
                return ""
            more = f"\n    … and {len(items) - 20} more" if len(items) > 20 else ""
            return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:20]) + more

        raise CheckpointMismatchError(
            f"{source} does not match {type(module).__name__}:"
            + listing("missing keys", missing)
            + listing("unexpected keys", unexpected)
            + listing("shape mismatches", shapes)
        )
    module.load_state_dict(sd, strict=True)
