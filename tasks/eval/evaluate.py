"""Evaluate a model + anomaly score on benchmarks, streaming (the loop itself is ``tasks.scoring``).

``--model`` is read for what the file is:

* a **method checkpoint** (``model.pt`` from ``anomalyforge train``): the method's own score by default (EEL's
  α·H − E with its α, RPL's energy, ...), over the frozen segmenter it names by sha256;
* a **segmenter state dict** or a **transformers model directory** / hub id in the local cache (with
  ``segmenter`` naming the network): a post-hoc score of the frozen closed-set logits (msp, max_logit, entropy,
  energy, eel, max_min) or, of a mask-classification network, of its class scores L_k (also rba, m2a);
* a **TorchScript** file mapping normalized (B, 3, H, W) RGB to (B, C, h, w) logits.

``score`` may name several post-hoc scores (``--score msp,energy,entropy``; a method: besides its own): each image
goes through the network once and every score of its logits feeds accumulators of its own, one result per score.
"""

from __future__ import annotations

import pickle
import pickletools
import zipfile
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError

from models.methods.base import Inference, resize_logits
from models.scores import anomaly_scores
from schemas import BenchmarkConfig, EvalConfig, SegmenterConfig
from schemas.registries import SEGMENTERS
from tasks.checkpoints import (
    HUB_ID,
    frozen_segmenter,
    is_method_checkpoint,
    load_method,
    named_tensors,
    pretrained_directory,
    read_checkpoint,
)
from tasks.eval.benchmarks import load_benchmark
from tasks.imageio import BadInputError
from tasks.scoring import Scorer, TensorScorer, evaluate_scores

DEFAULT_SCORE = "energy"


def load_torchscript(path: str | Path, device: str = "cpu") -> torch.jit.ScriptModule:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model not found: {path} (a TorchScript file: torch.jit.save(torch.jit.script(model), path))"
        )
    model = torch.jit.load(str(path), map_location=device)
    model.eval()
    return model


def is_torchscript(path: Path) -> bool:
    """TorchScript archives hold compiled code (``<name>/code/``, ``constants.pkl``); ``torch.save`` zips do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())


#: what a legacy (non-zip) ``torch.save`` file starts with: its magic number, pickled
_LEGACY_TORCH_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)


def is_plain_pickle(path: Path) -> bool:
    """Whether ``path`` is one whole Python pickle (``pickle.dump``), not a ``torch.save`` file. Only the opcodes are
    parsed (``pickletools.genops``): nothing is constructed, nothing is run."""
    with path.open("rb") as f:
        if f.read(len(_LEGACY_TORCH_MAGIC)) == _LEGACY_TORCH_MAGIC:
            return False
        f.seek(0)
        try:
            last = deque(pickletools.genops(f), maxlen=1)  # only the last opcode is kept
        except Exception:  # whatever the parser trips on: no opcode stream that ends in STOP
            return False
        return bool(last) and last[0][0].name == "STOP" and last[0][2] == path.stat().st_size - 1


def post_hoc(logits: torch.Tensor, size: tuple[int, int], scores: str | list[str], smoothing: bool, **kw) -> Inference:
    """Post-hoc scores of closed-set logits, at ``size``: one name, or several from the same logits (their
    reductions shared, ``models.scores.anomaly_scores``) in ``Inference.scores`` by name."""
    names = [scores] if isinstance(scores, str) else list(scores)
    logits = resize_logits(logits.float(), size)
    maps = anomaly_scores(logits, names, smoothing, **kw)
    # the prediction is left to the scorer: it computes it from the logits when the images have labels to use it
    return Inference(maps[names[0]], logits, None, scores=maps if len(names) > 1 else None)


@dataclass
class EvalModel:
    """What ``--model`` turned out to be, ready to score."""

    kind: str  # "method" | "segmenter" | "torchscript"
    scorer: Scorer
    scores: list[str]  # what is scored, by the names the results carry, from one forward
    smoothing: bool
    details: dict

    @property
    def score(self) -> str:
        """The scores in one line, for the report."""
        return ", ".join(self.scores)


def _method(path: Path, obj: Mapping, cfg: EvalConfig) -> EvalModel:
    loaded = load_method(path, cfg.segmenter_checkpoint, obj=obj)
    spec, mcfg, model = loaded.spec, loaded.cfg.method, loaded.model.to(cfg.device)
    smoothing = mcfg.smoothing if cfg.smoothing is None else cfg.smoothing
    try:
        mcfg = type(mcfg).model_validate(mcfg.model_dump() | cfg.method_options | {"smoothing": smoothing})
    except ValidationError as e:
        raise BadInputError(f"method_options for {path} ({mcfg.name}): {e.errors()[0]['msg']}") from None
    own = f"{mcfg.name} ({spec.score_summary})"
    extra = {f"{n} of {mcfg.name}'s logits": n for n in cfg.score or []}  # post-hoc scores of its re-decoded logits

    def infer(x, size):
        out = spec.infer(mcfg, model, x, size)
        if not extra:
            return out
        maps = anomaly_scores(out.logits, list(extra.values()), smoothing)
        scores = {own: out.score} | {label: maps[n] for label, n in extra.items()}
        return Inference(out.score, out.logits, out.pred, out.frozen_pred, scores=scores)

    seg = model.segmenter
    scorer = TensorScorer(infer, cfg.device, seg.size_multiple, cfg.input_width, cfg.input_size)
    details = {
        "method": mcfg.name,
        "method_config": mcfg.model_dump(mode="json"),
        "segmenter": loaded.cfg.segmenter.name,
        "segmenter_checkpoint": str(loaded.segmenter_checkpoint),
    }
    return EvalModel("method", scorer, [own, *extra], smoothing, details)


def _segmenter(path: Path, obj: Mapping | None, cfg: EvalConfig) -> EvalModel:
    seg_cfg = SegmenterConfig(name=cfg.segmenter, options=cfg.segmenter_options)
    seg = frozen_segmenter(seg_cfg, path, state=obj).to(cfg.device)
    scores, smoothing = cfg.score or [DEFAULT_SCORE], True if cfg.smoothing is None else cfg.smoothing

    def infer(x, size):
        return post_hoc(seg(x), size, scores, smoothing)

    scorer = TensorScorer(infer, cfg.device, seg.size_multiple, cfg.input_width, cfg.input_size)
    details = {"segmenter": cfg.segmenter, "segmenter_kind": seg.kind, "segmenter_checkpoint": str(path)}
    return EvalModel("segmenter", scorer, scores, smoothing, details)


def _torchscript(path: Path, obj: None, cfg: EvalConfig) -> EvalModel:
    model = load_torchscript(path, cfg.device)
    mean = torch.tensor(cfg.mean, device=cfg.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=cfg.device).view(1, 3, 1, 1)
    scores, smoothing = cfg.score or [DEFAULT_SCORE], True if cfg.smoothing is None else cfg.smoothing

    def infer(x, size):
        logits = model((x - mean) / std)
        if logits.ndim != 4 or logits.shape[1] < cfg.num_classes:
            raise ValueError(f"{path} returned {tuple(logits.shape)}; expected (1, >= {cfg.num_classes}, h, w) logits")
        return post_hoc(logits[:, : cfg.num_classes], size, scores, smoothing)

    scorer = TensorScorer(infer, cfg.device, 1, cfg.input_width, cfg.input_size)
    return EvalModel("torchscript", scorer, scores, smoothing, {})


MODEL_KINDS = {"method": _method, "segmenter": _segmenter, "torchscript": _torchscript}


def read_model_file(path: str | Path, segmenter: str | None = None) -> tuple[str, Mapping | None]:
    """(kind, content) of a ``--model`` file without building anything: ``("torchscript", None)``,
    ``("method", checkpoint)``, ``("segmenter", state dict)`` or, for a model directory, ``("segmenter", None)``
    (both need ``segmenter``, the network's name). A file that is none of them is a ``BadInputError`` naming it and saying what it is."""
    path = Path(path)
    if path.is_dir() or (not path.exists() and HUB_ID.fullmatch(str(path))):
        pretrained_directory(path)  # a directory without config.json, a hub id not in the cache: the message now
        if segmenter is None:
            raise BadInputError(
                f"{path} is a transformers model directory: name its network with --segmenter NAME (one of "
                f"{', '.join(SEGMENTERS.names())})"
            )
        return "segmenter", None
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {path}")
    if is_torchscript(path):
        return "torchscript", None
    try:
        obj = read_checkpoint(path, mmap=zipfile.is_zipfile(path))
    except BadInputError:  # a checkpoint that was read, and is corrupt: its own message
        raise
    except ValueError as e:
        if is_plain_pickle(path):
            raise BadInputError(
                f"{path}: a Python pickle, not a torch checkpoint (torch.save / TorchScript / a method model.pt)"
            ) from None
        with path.open("rb") as f:
            head = f.read(16)
        if zipfile.is_zipfile(path) or head.startswith(_LEGACY_TORCH_MAGIC):
            what = "a torch.save file holding Python objects that weights-only loading refuses"
        elif head.isascii() and head.strip():
            what = "a text file"
        else:
            what = f"a file starting with {head[:8]!r}"
        raise BadInputError(
            f"{path}: {what}, neither a method checkpoint (model.pt of `anomalyforge train`), a segmenter state "
            f"dict, nor a TorchScript file (torch.load: {type(e.__cause__ or e).__name__})"
        ) from None
    if is_method_checkpoint(obj):
        return "method", obj
    if isinstance(obj, Mapping) and next(named_tensors(obj), None) is None:
        keys = ", ".join(map(str, list(obj)[:10])) + (", …" if len(obj) > 10 else "")
        raise BadInputError(f"{path}: holds no tensors (keys: {keys}) — not a model state dict or checkpoint")
    if isinstance(obj, Mapping):
        if segmenter is None:
            raise BadInputError(
                f"{path} is a plain state dict (no method checkpoint, no TorchScript): to evaluate it as a frozen "
                f"segmenter with a post-hoc score, name its network with --segmenter NAME (one of "
                f"{', '.join(SEGMENTERS.names())}); a trained method is evaluated from the model.pt `anomalyforge train` wrote"
            )
        return "segmenter", obj
    raise BadInputError(f"{path}: holds a {type(obj).__name__}, not a state dict, method checkpoint or TorchScript")


def load_eval_model(cfg: EvalConfig) -> EvalModel:
    """Read ``cfg.model`` for what it is (module docstring) and make it a scorer."""
    kind, obj = read_model_file(cfg.model, cfg.segmenter)
    return MODEL_KINDS[kind](Path(cfg.model), obj, cfg)


def evaluate_dataset(
    model: EvalModel | Scorer, spec: BenchmarkConfig, cfg: EvalConfig, progress: bool = True
) -> list[dict]:
    """Metrics of one dataset for every score of the model, from one pass over it
    (``tasks.scoring.evaluate_scores``): one result per score, with its ``score`` and the dataset's ``kind``."""
    ds = load_benchmark(spec.kind, spec.root, spec.name, spec.split, spec.val_fraction)
    scorer = model.scorer if isinstance(model, EvalModel) else model
    total = min(len(ds.items), spec.limit or len(ds.items)) if hasattr(ds, "items") else None
    results = evaluate_scores(
        scorer,
        ds.samples(spec.limit),
        ds.name,
        track=spec.track,
        per_image=cfg.per_image,
        panels=cfg.panels,
        progress=progress,
        total=total,
        batch_size=cfg.batch_size,
        bootstrap=cfg.bootstrap,
    )
    if isinstance(model, EvalModel) and len(model.scores) == 1:  # one unnamed map: the model's only score
        results = {model.scores[0]: next(iter(results.values()))}
    return [r | {"score": score, "kind": ds.kind} for score, r in results.items()]


def evaluate_dataset_or_error(
    model: EvalModel | Scorer, spec: BenchmarkConfig, cfg: EvalConfig, progress=True
) -> list[dict]:
    """``evaluate_dataset``, or for a dataset that cannot be evaluated (a bad file, a missing folder, no anomaly
    pixel) one error result ``{"name", "kind", "error"}``: one bad dataset never loses the others."""
    try:
        return evaluate_dataset(model, spec, cfg, progress)
    except (ValueError, OSError) as e:  # BadInputError is a ValueError; every message names the file
        return [{"name": spec.name or Path(spec.root).name, "kind": spec.kind, "error": f"{type(e).__name__}: {e}"}]


class EvaluationError(BadInputError):
    """Some datasets could not be evaluated (the others' results are written)."""


def evaluate_model(cfg: EvalConfig, progress: bool = True) -> tuple[EvalModel, list[dict]]:
    """``cfg.model`` on every dataset of ``cfg``, every score in the same pass: one result per dataset and score
    (a dataset that fails gives an error result, the others go on)."""
    model = load_eval_model(cfg)
    return model, [r for spec in cfg.datasets for r in evaluate_dataset_or_error(model, spec, cfg, progress)]
