"""The prompt vocabulary of the diffusion generator and the (prompt, seed) specs it expands to.

A spec's ``object_id`` is a content hash of everything that decides its image (model, prompt, negative
prompt, seed, steps, guidance, size, scheduler), so a spec that is already in the object store — accepted
or rejected — is never generated again, and new prompts or seed rounds are all an incremental run makes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from data_manifests import MANIFEST_DIR
from schemas import COCO_CITYSCAPES_OVERLAP, DiffusionConfig, PromptObject, PromptVocabulary
from tasks.labels import TRAIN_ID_NAMES
from tasks.seeding import derive_seed
from tasks.synth.coco import canonical_class

DEFAULT_VOCABULARY = MANIFEST_DIR / "prompt_vocabulary.yaml"

# Words that name a Cityscapes class in other terms. An object whose name, or whose last word (the head
# noun: "fire truck", "mountain bike"), is a Cityscapes class is an inlier, not an anomaly.
_CITYSCAPES_SYNONYMS: dict[str, str] = {
    "pedestrian": "person",
    "man": "person",
    "woman": "person",
    "child": "person",
    "kid": "person",
    "people": "person",
    "cyclist": "rider",
    "motorcyclist": "rider",
    "bike": "bicycle",
    "motorbike": "motorcycle",
    "scooter": "motorcycle",
    "moped": "motorcycle",
    "lorry": "truck",
    "pickup": "truck",
    "van": "car",
    "taxi": "car",
    "suv": "car",
    "automobile": "car",
    "tram": "train",
    "streetcar": "train",
    "coach": "bus",
    "minibus": "bus",
    "tree": "vegetation",
    "bush": "vegetation",
    "hedge": "vegetation",
    "lamppost": "pole",
    "signpost": "pole",
    "traffic signal": "traffic light",
}


def cityscapes_class_of(name: str) -> str | None:
    """The Cityscapes class an object name means, or None (``"fire truck"`` -> ``"truck"``)."""
    classes = set(TRAIN_ID_NAMES) | {canonical_class(c) for c in COCO_CITYSCAPES_OVERLAP}
    n = canonical_class(name)
    words = n.replace("-", " ").split()
    for cand in (n, words[-1] if words else n, words[-1].rstrip("s") if words else n):
        cand = _CITYSCAPES_SYNONYMS.get(cand, cand)
        if cand in classes:
            return cand
    return None


def load_vocabulary(path: str | Path | None = None) -> PromptVocabulary:
    """Read and check a vocabulary; objects that are Cityscapes classes are refused, all named at once."""
    path = Path(path) if path else DEFAULT_VOCABULARY
    if not path.is_file():
        raise FileNotFoundError(f"prompt vocabulary not found: {path}")
    try:
        vocab = PromptVocabulary.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    clashes = [(o.name, c) for o in vocab.objects if (c := cityscapes_class_of(o.name))]
    if clashes:
        listed = ", ".join(f"{n!r} (Cityscapes class {c!r})" for n, c in clashes)
        raise ValueError(
            f"{path}: {len(clashes)} object classes overlap Cityscapes classes and would be labelled anomalies "
            f"where the segmenter is right to see inliers: {listed}. Remove or rename them."
        )
    return vocab


@dataclass(frozen=True)
class PromptSpec:
    """One image to generate."""

    object_id: str
    obj: PromptObject
    background: str
    prompt: str
    negative_prompt: str
    seed: int
    round: int


def spec_id(model: str, prompt: str, negative: str, seed: int, cfg: DiffusionConfig) -> str:
    """Deterministic object id from everything that decides the generated image."""
    payload = {
        "model": model,
        "prompt": prompt,
        "negative": negative,
        "seed": seed,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "size": [cfg.width, cfg.height],
        "scheduler": cfg.scheduler,
    }
    return "sd-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _selected(vocab: PromptVocabulary, cfg: DiffusionConfig) -> tuple[list[PromptObject], list[str]]:
    objects, backgrounds = vocab.objects, vocab.backgrounds
    if cfg.objects is not None:
        known = {o.name: o for o in objects}
        missing = [n for n in cfg.objects if n not in known]
        if missing:
            raise ValueError(f"diffusion.objects not in the vocabulary: {', '.join(missing)}")
        objects = [known[n] for n in cfg.objects]
    if cfg.backgrounds is not None:
        missing = [b for b in cfg.backgrounds if b not in backgrounds]
        if missing:
            raise ValueError(f"diffusion.backgrounds not in the vocabulary: {', '.join(missing)}")
        backgrounds = list(cfg.backgrounds)
    return objects, backgrounds


def round_specs(vocab: PromptVocabulary, cfg: DiffusionConfig, seed: int, r: int) -> list[PromptSpec]:
    """Seed round ``r``: one spec per (object, background) prompt."""
    objects, backgrounds = _selected(vocab, cfg)
    specs = []
    for obj in objects:
        for bg in backgrounds:
            prompt = vocab.template.format(object=obj.name, background=bg)
            s = derive_seed(seed, "diffusion", obj.name, bg, r) & 0xFFFF_FFFF  # torch generators take 64 bit
            specs.append(
                PromptSpec(
                    spec_id(cfg.model, prompt, vocab.negative_prompt, s, cfg),
                    obj,
                    bg,
                    prompt,
                    vocab.negative_prompt,
                    s,
                    r,
                )
            )
    return specs


def plan_specs(
    vocab: PromptVocabulary, cfg: DiffusionConfig, seed: int, done: set[str], max_rounds: int = 10_000
) -> list[PromptSpec]:
    """Specs not in ``done``: every prompt of rounds ``0 .. seeds_per_prompt-1``; with ``new_objects`` set,
    instead the first that many missing specs in round order (earlier rounds, i.e. new prompts, first)."""
    if cfg.new_objects is None:
        return [
            s for r in range(cfg.seeds_per_prompt) for s in round_specs(vocab, cfg, seed, r) if s.object_id not in done
        ]
    out: list[PromptSpec] = []
    for r in range(max_rounds):
        out += [s for s in round_specs(vocab, cfg, seed, r) if s.object_id not in done]
        if len(out) >= cfg.new_objects:
            return out[: cfg.new_objects]
    return out
