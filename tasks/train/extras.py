"""Extra per-step training data a method can ask for (``MethodSpec.extras``), by provider name.

A provider is built once per run (per process) from the shard version and a seed, and gives one item per step
from that step's batch (CPU images and labels, before they move to the device): e.g. CoroCL's object-context
images, or SLEEG's self-made patch composites of the batch itself. Providers may keep state between steps (a
patch library). The trainer only knows this registry, never which method asked.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from schemas import PatchesConfig, SynthConfig
from schemas.registries import EXTRA_DATA
from tasks.imageio import BadInputError
from tasks.layout import RunLayout
from tasks.object_bank import read_object_bank
from tasks.patches import PatchLibrary, paste_patches
from tasks.sample_format import DATASET
from tasks.scenes import index_scenes, load_scene, with_scenes
from tasks.seeding import rng_for
from tasks.storage import is_url
from tasks.train.data import context_batch, random_crop_flip, to_tensors


class ExtraData:
    def __init__(self, version: str, seed: int, **options) -> None: ...

    def batch(self, images: torch.Tensor, labels: torch.Tensor, device) -> object:
        """This step's extra data for the CPU batch ``images`` (B×3×H×W in [0, 1]) and ``labels`` (B×H×W)."""
        raise NotImplementedError


def build_extras(requested: dict[str, dict], version: str, seed: int) -> dict[str, ExtraData]:
    """``version`` is passed as given (a local path or an fsspec URL)."""
    return {name: EXTRA_DATA.get(name)(str(version), seed, **opts) for name, opts in requested.items()}


def object_bank_images(version: str, bank: str | Path | None = None) -> list[np.ndarray]:
    """The object bank ``bank``, or the one next to a local version (``<run_dir>/objects``), as RGBA crops."""
    if bank is not None:
        if not (Path(bank) / "objects.parquet").is_file():
            raise FileNotFoundError(f"object bank not found: {bank} has no objects.parquet")
        return [o.rgba for o in read_object_bank(bank)]
    if is_url(version):
        raise FileNotFoundError(
            f"{version} is remote: the object context needs a local copy of the run's objects/ folder "
            f"(set method.object_bank=PATH)"
        )
    runs = RunLayout.candidates_for_version(version)
    for run in runs:
        if (run.objects / "objects.parquet").is_file():
            return [o.rgba for o in read_object_bank(run.objects)]
    raise FileNotFoundError(
        f"the object context needs the object bank of {version}: looked for {runs[0].objects} "
        f"(a run's versions/) and {runs[1].objects} (a plain shard directory)"
    )


@EXTRA_DATA.register("object_context")
class ObjectContext(ExtraData):
    """CoroCL's context: the object bank's own images (each object on its own background), ``size``² squares
    labelled anomaly under the object's mask and inlier on its background (``tasks.train.data.context_batch``)."""

    def __init__(self, version: str, seed: int, size: int = 128, bank: str | None = None) -> None:
        self.objects = object_bank_images(version, bank)
        self.size = size
        self.rng = random.Random(seed)

    def batch(self, images: torch.Tensor, labels: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = context_batch(self.objects, images.shape[0], self.size, self.rng)
        return x.to(device), y.to(device)


@EXTRA_DATA.register("self_patches")
class SelfPatches(ExtraData):
    """SLEEG's self-made anomalies (``tasks.patches``): each step refreshes the patch library with crops of
    the batch and pastes ``per_image`` patches into every image. Gives (B×3×H×W composites in [0, 1], B×H×W bool
    mask of the pasted polygons: the anomaly candidates). Options: the fields of ``PatchesConfig``."""

    def __init__(self, version: str, seed: int, **options) -> None:
        self.library = PatchLibrary(PatchesConfig(**options), rng_for(seed, "self_patches"))

    def batch(self, images: torch.Tensor, labels: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        # shard images are uint8 / 255, so this round trip is exact
        rgb = images.permute(0, 2, 3, 1).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
        self.library.refresh(list(rgb))
        pasted, candidates = zip(*(paste_patches(img, self.library) for img in rgb), strict=True)
        x = torch.from_numpy(np.stack(pasted)).permute(0, 3, 1, 2).float().div(255)
        return x.to(device), torch.from_numpy(np.stack(candidates)).to(device)


def clean_scene_refs(version: str, scenes: str | Path | None = None):
    """The scenes a shard version was composited on, indexed by the scene source of its ``dataset.json``
    (``scenes`` overrides the root) in the first run directory the version may belong to that has a ``scenes/``
    folder (rendered demo scenes, cached pseudo labels)."""
    if is_url(version) and scenes is None:
        raise FileNotFoundError(f"{version} is remote: AnomalyMix needs the clean scenes locally (method.scenes=PATH)")
    meta = Path(version) / DATASET
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} not found: AnomalyMix reads the scene source of the shard version from it")
    cfg = SynthConfig.model_validate(json.loads(meta.read_text())["config"])
    if scenes is not None:
        cfg = with_scenes(cfg, scenes)
    runs = RunLayout.candidates_for_version(version)
    run = next((r for r in runs if r.scenes.is_dir()), runs[0])
    refs, _ = index_scenes(cfg, run.work)
    return refs, cfg.scenes.max_unknown_label_fraction


@EXTRA_DATA.register("anomaly_mix")
class AnomalyMix(ExtraData):
    """AnomalyMix's mixing (Zhang et al.): each training sample keeps its pasted objects with ``probability``
    (0.1) and is otherwise replaced by a clean scene of the version's scene source, randomly cropped and flipped
    like the shards. Gives the mixed (B×3×H×W images, B×H×W labels). Clean scenes are read when drawn (a decode
    per replaced sample, made in the trainer's prefetch thread)."""

    def __init__(self, version: str, seed: int, probability: float = 0.1, scenes: str | None = None) -> None:
        self.refs, self.max_unknown = clean_scene_refs(version, scenes)
        self.bad: set[int] = set()
        if not self.refs:
            raise FileNotFoundError(f"AnomalyMix found no clean scenes for {version}")
        self.probability = probability
        self.rng = random.Random(seed)

    def clean_scene(self):
        """A random readable clean scene; one that cannot be read (the synth run quarantined it) is skipped for
        the rest of the run, with a warning naming it."""
        while len(self.bad) < len(self.refs):
            k = self.rng.randrange(len(self.refs))
            if k in self.bad:
                continue
            try:
                return load_scene(self.refs[k], max_unknown_label_fraction=self.max_unknown)
            except BadInputError as e:
                self.bad.add(k)
                warnings.warn(f"AnomalyMix skips a clean scene: {e}", stacklevel=2)
        raise FileNotFoundError(f"AnomalyMix: none of the {len(self.refs)} clean scenes can be read")

    def batch(self, images: torch.Tensor, labels: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = images.clone(), labels.clone()
        crop = tuple(labels.shape[-2:])
        for i in range(x.shape[0]):
            if self.rng.random() < self.probability:
                continue  # keeps its objects
            scene = self.clean_scene()
            img, lab = random_crop_flip(scene.image, scene.label, crop, self.rng)
            x[i], y[i] = to_tensors(img, lab)
        return x.to(device), y.to(device)
