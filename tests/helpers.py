"""Helpers shared by the test modules (fixtures live in conftest.py; no test module imports another)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from typer.testing import CliRunner

from schemas import (
    DemoScenesConfig,
    FilesSourceConfig,
    ObjectBankConfig,
    PlacementConfig,
    ShardConfig,
    SynthConfig,
)
from schemas.registry import Registry
from tasks.eval.benchmarks import load_benchmark
from tasks.object_bank import read_object_bank
from tasks.shards import read_rejects
from tasks.synth.compositor import Compositor
from tasks.synth.pipeline import build_object_bank, finalize_shard_set, prepare_scenes
from tasks.synth.plan import plan_samples, split_into_shards
from tasks.synth.version import make_version
from tasks.synth.writer import claim_shard_dir, synthesize_or_resume

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MODEL_HOME = Path(os.environ.get("U2NET_HOME", ROOT / ".cache" / "models"))


def shared_or_skip(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present (../shared is only on developer and CI machines)")
    return p


def u2netp_or_skip() -> Path:
    if not (MODEL_HOME / "u2netp.onnx").is_file():
        pytest.skip(f"u2netp weights not in {MODEL_HOME} (run `make install`)")
    return MODEL_HOME


def write_object_photos(dest: Path, n: int = 3) -> FilesSourceConfig:
    """Photos of simple coloured shapes with sidecar masks (no salient model needed)."""
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.full((80, 60, 3), 235, np.uint8)
        m = np.zeros((80, 60), np.uint8)
        cv2.ellipse(m, (30, 42), (18 + i, 30), 0, 0, 360, 255, -1)
        img[m > 0] = rng.integers(20, 200, 3)
        cv2.imwrite(str(dest / f"thing{i}.png"), img)
        cv2.imwrite(str(dest / f"thing{i}.mask.png"), m)
    return FilesSourceConfig(root=dest, class_name="box", patterns=["*.png"])


def tiny_synth_config(tmp_path: Path) -> SynthConfig:
    """Three 256×128 demo scenes, three photo objects with sidecar masks, 4 samples per shard."""
    files = write_object_photos(tmp_path / "photos")
    return SynthConfig(
        name="tiny",
        seed=3,
        num_samples=10,
        scenes={"kind": "demo", "demo": DemoScenesConfig(num_scenes=3, width=256, height=128)},
        objects=ObjectBankConfig(files=[files], max_side=64),
        placement=PlacementConfig(min_height_px=6, search_stride=2, default_height_m=(0.5, 1.0)),
        shards=ShardConfig(samples_per_shard=4),
        workers=1,
    )


def real_photos_config(num_samples: int, max_side: int, min_height_px: int) -> SynthConfig:
    """The real Cityscapes sample frame + real object photos (rembg masks those without one)."""
    scenes = shared_or_skip("cityscapes_sample")
    photos = shared_or_skip("object_photos")
    cfg = SynthConfig(
        num_samples=num_samples,
        scenes={"kind": "cityscapes", "root": scenes, "split": "val"},
        objects=ObjectBankConfig(
            files=[
                FilesSourceConfig(
                    root=photos,
                    manifest=Path("SOURCES.tsv"),
                    class_column="object_class_guess",
                    mask_column="mask_file_or_empty",
                    patterns=["danielgatis*.jpg", "xuebinqin*.jpg"],
                )
            ],
            max_side=max_side,
        ),
        placement=PlacementConfig(min_height_px=min_height_px, search_stride=2),
        shards=ShardConfig(samples_per_shard=2),
    )
    cfg.saliency.model_home = MODEL_HOME
    return cfg


def random_state_dict(lines: list[str]) -> dict:
    """A random state dict from ``name (shape)`` lines: the stand-in for checkpoints we cannot have here."""
    import torch

    g = torch.Generator().manual_seed(0)
    out = {}
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = line.split(" ", 1)
        dims = tuple(int(d) for d in shape.strip("() \n").split(",") if d.strip())
        if not dims:
            out[name] = torch.tensor(0)  # num_batches_tracked
        elif name.endswith("running_var"):
            out[name] = torch.rand(dims, generator=g) + 0.5  # a variance is positive
        else:
            out[name] = torch.randn(dims, generator=g) * 0.05
    return out


TINY_METHOD = {"residual_dim": 16, "lr": 1e-3, "projector_dim": 16, "context_size": 32, "head_width": 16}


def tiny_method(name: str) -> dict:
    """A small head for ``name``: the tiny settings its config class has."""
    from models.methods import get_method

    fields = get_method(name).config.model_fields
    return {"name": name} | {k: v for k, v in TINY_METHOD.items() if k in fields}


#: a Mask2Former of ~0.3 M parameters (``models.segmenters.mask2former.demo_config``)
TINY_MASK2FORMER = {"embed_dim": 16, "hidden_dim": 32, "num_queries": 10, "decoder_layers": 2}


def tiny_mask2former(seed: int = 0):
    """A random ``mask2former_demo`` segmenter of ``TINY_MASK2FORMER`` (frozen, eval mode)."""
    import torch

    from models.segmenters import build_segmenter

    torch.manual_seed(seed)
    return build_segmenter("mask2former_demo", **TINY_MASK2FORMER)


def save_tiny_mask2former(directory: Path, seed: int = 0) -> Path:
    """A tiny random Mask2Former written with ``save_pretrained`` (config.json + model.safetensors)."""
    tiny_mask2former(seed).net.save_pretrained(directory)
    return directory


def tiny_train_config(method: str, **kw):
    """4 closed-set pre-training steps and 4 method steps on 64×128 crops; 30 % held-in validation. Methods over a
    mask-classification segmenter train over a tiny Mask2Former (``TINY_MASK2FORMER``), pre-trained the same way."""
    from schemas import TrainConfig

    pretrain = {"steps": 4, "batch_size": 2}
    mask = {"name": "mask2former_demo", "options": TINY_MASK2FORMER, "pretrain": pretrain}
    return TrainConfig(
        method=tiny_method(method),
        segmenter={"name": "espnetv2_demo", "pretrain": pretrain},
        segmenters={"mask-classification": mask},
        crop=(64, 128),
        batch_size=2,
        max_steps=4,
        eval_every=2,
        workers=0,
        val_fraction=0.3,
        val_limit=3,
        **kw,
    )


def make_shards(cfg, run: Path) -> dict:
    """A validated, published version of ``cfg`` under the run directory ``run`` (``make_version``, no Prefect);
    ``run / "shards"`` names it. Returns the version's summary (``dataset.json`` and the run's status)."""
    return make_version(cfg, str(run)).summary


def run_stage(cfg, run: Path, fail_at_shard: int | None = None):
    """The synth stages one by one into a plain shard directory ``run / "shards"`` (no versions), optionally crashing
    in the middle of one shard: what tests of the stages themselves (resume, quarantine, the directory claim) use;
    everything else makes a version with ``make_shards``."""
    scenes, scene_rejects = prepare_scenes(cfg, run)
    bank_dir = build_object_bank(cfg, run / "objects", scenes=scenes)
    comp = Compositor(cfg, read_object_bank(bank_dir))
    claim_shard_dir(run / "shards", comp.config_hash)
    shards = split_into_shards(
        plan_samples([s.scene_id for s in scenes], cfg.num_samples, cfg.seed, cfg.weather),
        cfg.shards.samples_per_shard,
    )
    records = []
    for i, plans in enumerate(shards):
        done = {"n": 0}

        def count_and_maybe_crash(i=i, done=done):
            done["n"] += 1
            if i == fail_at_shard and done["n"] == 2:
                raise KeyboardInterrupt  # Ctrl-C in the middle of a shard

        records.append(synthesize_or_resume(run / "shards", i, plans, scenes, comp, on_sample=count_and_maybe_crash))
    return finalize_shard_set(run / "shards", cfg, records, scene_rejects + read_rejects(bank_dir / "rejects.parquet"))


def shard_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.tar"))}


def reference(scores, labels):
    s = scores.astype(np.float32).astype(np.float64).ravel()  # PixelMetrics compares at float32
    y = labels.ravel()
    keep = y != 255
    s, y = s[keep], y[keep]
    s = np.nan_to_num(s, posinf=1e300, neginf=-1e300)  # sklearn refuses inf; order is kept
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    p, n = (y == 1).sum(), (y == 0).sum()
    order = np.argsort(-s, kind="stable")
    ss, yy = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), ss.size - 1]  # end of each tie group
    tp, fp = np.cumsum(yy == 1)[last], np.cumsum(yy == 0)[last]
    f1 = 2 * tp / (tp + fp + p)
    return {
        "auroc": roc_auc_score(y, s),
        "ap": average_precision_score(y, s),
        "fpr95": fpr[np.argmax(tpr >= 0.95)],
        "f1_best": f1.max(),
        "n": n,
    }


def held_in_samples(version):
    """(id, RGB image, eval label) of the held-in composites."""
    ds = load_benchmark("shards", version, val_fraction=0.3)
    return [(s.item_id, s.image, s.label) for s in ds.samples()]


def eval_cli(tmp_path, datasets, *args):
    from flows.cli import app

    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"model": "unset", "datasets": datasets, "panels": 1}))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["eval", "--config", str(cfg), "--out-dir", str(out), *args])
    assert res.exit_code == 0, res.output[-3000:] + repr(res.exception)
    return res.output, json.loads((out / "metrics.json").read_text())


#: the registry a test's plug-in module registers into (``tests/test_registries.py`` sets it)
registry_under_test: Registry | None = None


def write_plugin_dist(site: Path, dist: str, entry_points: dict[str, dict[str, str]], files: dict[str, str]) -> Path:
    """An installed distribution ``dist`` in the folder ``site`` (put it on sys.path or PYTHONPATH): its modules
    (``files``: relative path -> source) and a ``.dist-info`` whose ``entry_points.txt`` has ``entry_points``
    (group -> {name: module}), as pip would install a plug-in package."""
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in entry_points.items())
    )
    return info


def load_shipped_config(path: Path):
    """A config of ``configs/`` read by the loader its file name says (``eval*``, ``train*``, ``*compare*``,
    ``*ablation*``, ``weather_benchmark*``; synthesis otherwise)."""
    from schemas import (
        load_ablation_config,
        load_compare_config,
        load_config,
        load_eval_config,
        load_train_config,
        load_weathered_config,
    )

    stem = path.stem
    for part, loader in (("ablation", load_ablation_config), ("compare", load_compare_config)):
        if part in stem:
            return loader(path)
    if stem.startswith("weather_benchmark"):
        return load_weathered_config(path)
    return {"eval": load_eval_config, "train": load_train_config}.get(stem.split("_")[0], load_config)(path)


# ---- a tiny TorchScript model and its benchmark layout (tests/test_evaluate.py, tests/test_eval_one_pass.py)


class RedIsUnknown(torch.nn.Module):
    """Confident class 0 everywhere except on red pixels, where all 19 logits are equal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = (x[:, 0:1] - x[:, 1:2]).clamp(min=0)  # normalized R minus G
        conf = 8.0 * (1.0 - (red / 2.0).clamp(max=1.0))
        zeros = torch.zeros_like(conf).repeat(1, 18, 1, 1)
        return torch.cat([conf, zeros], dim=1)


def write_red_squares_dataset(root, n=4, conditions=None):
    rng = np.random.default_rng(1)
    (root / "original").mkdir(parents=True)
    (root / "labels").mkdir()
    rows = ["image,label,condition"]
    for i in range(n):
        img = rng.integers(60, 140, (48, 64, 3)).astype(np.uint8)
        img[..., 2] = img[..., 1]  # grey-ish (RGB: R=G=B-ish) scene
        lab = np.zeros((48, 64), np.uint8)
        y, x = 8 + 4 * i, 10 + 6 * i
        img[y : y + 12, x : x + 12] = (220, 20, 20)  # RGB red object
        lab[y : y + 12, x : x + 12] = 1
        lab[:2] = 255
        cv2.imwrite(str(root / "original" / f"{i:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "labels" / f"{i:04d}.png"), lab)
        rows.append(
            f"original/{i:04d}.png,labels/{i:04d}.png,{(conditions or ['clear'])[i % len(conditions or ['clear'])]}"
        )
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
