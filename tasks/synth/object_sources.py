"""Object sources of the object bank, entries of ``schemas.registries.OBJECT_SOURCES``: photo folders, the demo
profile's packaged photos, COCO instances, Stable Diffusion objects (from the generated store the diffusion stage
fills) and self-made patches cut from the run's scenes.

An object source answers four calls, so ``build_object_bank`` and ``select_sources`` never know a source's name:

* ``configured(objects)``: whether the ``objects:`` section asks for it;
* ``without(objects)`` / ``with_(objects)``: the fields of ``objects:`` that switch it off / on
  (``anomalyforge synth --sources ...``);
* ``identity(ctx)``: what of its inputs decides the bank beyond the config (file names and sizes, ...);
* ``extract(ctx)``: its objects and rejects.

Built-in sources keep their own fields of ``ObjectBankConfig`` (``files``, ``coco``, ...). A plug-in source is
configured under ``objects.sources.<name>`` and validated by the config class it was registered with; the base
class below reads it from there:

    @OBJECT_SOURCES.register("my_source", config=MySourceConfig)
    class MySource(ObjectSource):
        def extract(self, ctx): ...

Sources are extracted in registry order (built-ins first), which keeps a bank byte-identical for a config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from schemas import ObjectBankConfig, RejectRecord, SynthConfig
from schemas.registries import OBJECT_SOURCES
from tasks.object_bank import OBJECT_MANIFEST, BankObject, read_object_bank
from tasks.patches import patch_bank_objects
from tasks.sample_format import REJECTS
from tasks.scenes import SceneRef, scene_identity
from tasks.shards import read_rejects
from tasks.synth.coco import extract_coco_objects, filter_coco_instances, load_coco
from tasks.synth.diffusion import GeneratedStore
from tasks.synth.photos import demo_object_photos, list_photo_files, objects_from_files


@dataclass
class BankContext:
    """What a source may read while the bank is built."""

    cfg: SynthConfig
    bank_dir: Path
    masker: object  # soft mask from RGB (``LazyMasker``): photos without a mask need it
    excluded: set[str]  # classes never accepted as anomalies
    generated: Path | None = None  # the diffusion object store, when the config has a diffusion source
    scenes: list[SceneRef] = field(default_factory=list)


class ObjectSource:
    """A plug-in source, configured under ``objects.sources.<name>``; built-ins override ``configured`` and
    ``without`` to read their own fields."""

    name: str = ""

    def section(self, objects: ObjectBankConfig):
        """This source's validated config (``None`` when not configured)."""
        raw = objects.sources.get(self.name)
        return None if raw is None else OBJECT_SOURCES.config(self.name).model_validate(raw)

    def configured(self, objects: ObjectBankConfig) -> bool:
        return self.name in objects.sources

    def without(self, objects: ObjectBankConfig) -> dict:
        return {"sources": {k: v for k, v in objects.sources.items() if k != self.name}}

    def with_(self, objects: ObjectBankConfig) -> dict | None:
        """The fields that switch it on when ``--sources`` names it, or ``None`` when it needs a section of its own
        that the config lacks (then naming it is an error)."""
        return {} if self.configured(objects) else None

    def identity(self, ctx: BankContext) -> list:
        return []

    def extract(self, ctx: BankContext) -> tuple[list[BankObject], list[RejectRecord]]:
        raise NotImplementedError


def register_object_source(name: str, config=None):
    """Class decorator: register one instance of the source class as ``name`` (sources are stateless)."""

    def deco(cls: type[ObjectSource]) -> type[ObjectSource]:
        source = cls()
        source.name = name
        OBJECT_SOURCES.register(name, source, config=config)
        return cls

    return deco


@register_object_source("files")
class PhotoFolders(ObjectSource):
    """``objects.files``: folders of single-object photos (``FilesSourceConfig``)."""

    def configured(self, objects):
        return bool(objects.files)

    def without(self, objects):
        return {"files": []}

    def identity(self, ctx):
        return [(str(p), p.stat().st_size) for fs in ctx.cfg.objects.files for p in list_photo_files(fs)]

    def extract(self, ctx):
        return _photos(ctx, ctx.cfg.objects.files)


@register_object_source("demo")
class DemoPhotos(ObjectSource):
    """``objects.demo_objects``: the scikit-image photos packaged for the demo profile (no configuration)."""

    def configured(self, objects):
        return objects.demo_objects

    def without(self, objects):
        return {"demo_objects": False}

    def with_(self, objects):
        return {"demo_objects": True}  # the packaged photos need no configuration

    def extract(self, ctx):
        return _photos(ctx, [demo_object_photos(ctx.bank_dir / "demo_photos")])


@register_object_source("coco")
class CocoInstances(ObjectSource):
    """``objects.coco``: COCO instances filtered by class, area and border (``CocoSourceConfig``)."""

    def configured(self, objects):
        return objects.coco is not None

    def without(self, objects):
        return {"coco": None}

    def identity(self, ctx):
        ann = ctx.cfg.objects.coco.annotations
        return [(str(ann), ann.stat().st_size)] if ann.is_file() else []

    def extract(self, ctx):
        oc = ctx.cfg.objects
        coco = load_coco(oc.coco.annotations)
        kept, rejects = filter_coco_instances(coco, oc.coco)
        got, rej = extract_coco_objects(coco, kept, oc.coco.images, oc.max_side)
        return [BankObject(r, rgba) for r, rgba in got], rejects + rej


@register_object_source("diffusion")
class DiffusionObjects(ObjectSource):
    """``objects.diffusion``: the accepted objects of the generated store the diffusion stage filled."""

    def configured(self, objects):
        return objects.diffusion is not None

    def without(self, objects):
        return {"diffusion": None}

    def identity(self, ctx):
        return [("generated", GeneratedStore(ctx.generated).object_ids())] if ctx.generated is not None else []

    def extract(self, ctx):
        if ctx.generated is None or not (ctx.generated / OBJECT_MANIFEST).is_file():
            return [], []
        return read_object_bank(ctx.generated), read_rejects(ctx.generated / REJECTS)


@register_object_source("patches")
class SelfMadePatches(ObjectSource):
    """``objects.patches``: SLEEG-style patches cut from the run's own scenes (``PatchesSourceConfig``)."""

    def configured(self, objects):
        return objects.patches is not None

    def without(self, objects):
        return {"patches": None}

    def identity(self, ctx):
        return [("patch scenes", scene_identity(ctx.scenes), ctx.cfg.seed)]

    def extract(self, ctx):
        return patch_bank_objects(ctx.scenes, ctx.cfg.objects.patches, ctx.cfg.seed)


def _photos(ctx: BankContext, sources) -> tuple[list[BankObject], list[RejectRecord]]:
    objects, rejects = [], []
    for fs in sources:
        got, rej = objects_from_files(fs, ctx.masker, ctx.cfg.saliency.gate, ctx.cfg.objects.max_side, ctx.excluded)
        objects += got
        rejects += rej
    return objects, rejects


def configured_sources(objects: ObjectBankConfig) -> list[str]:
    """The sources ``objects:`` asks for, in registry order."""
    return [name for name, source in OBJECT_SOURCES.items() if source.configured(objects)]
