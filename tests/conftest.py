from __future__ import annotations

import os
from pathlib import Path

# Prefect reads its settings once, at import: this must come before anything imports prefect. A busy
# 2-core CI machine running two test workers can take well over Prefect's default 20 s to start the
# ephemeral API server that in-process flow runs use.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")

import cv2
import numpy as np
import pytest

from schemas import (
    DemoScenesConfig,
    FilesSourceConfig,
    ObjectBankConfig,
    PlacementConfig,
    ShardConfig,
    SynthConfig,
)

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


@pytest.fixture
def tiny_config(tmp_path: Path) -> SynthConfig:
    return tiny_synth_config(tmp_path)


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


def tiny_train_config(method: str, **kw):
    """4 closed-set pre-training steps and 4 method steps on 64×128 crops; 30 % held-in validation."""
    from schemas import TrainConfig

    return TrainConfig(
        method=tiny_method(method),
        segmenter={"name": "espnetv2_demo", "pretrain": {"steps": 4, "batch_size": 2}},
        crop=(64, 128),
        batch_size=2,
        max_steps=4,
        eval_every=2,
        workers=0,
        val_fraction=0.3,
        val_limit=3,
        **kw,
    )


@pytest.fixture(scope="session")
def trained_eel(tmp_path_factory):
    """Tiny demo shards (12 samples) and an EEL head trained on them: ``version``, ``model`` (model.pt),
    ``segmenter`` (the frozen closed-set checkpoint), ``root``."""
    from types import SimpleNamespace

    from tasks.train.trainer import train_method
    from tasks.versions import resolve_version
    from tests.test_pipeline import run_stage

    root = tmp_path_factory.mktemp("trained")
    cfg = tiny_synth_config(root)
    cfg.num_samples = 12
    run_stage(cfg, root / "run")
    version = resolve_version(root / "run" / "shards")
    res = train_method(tiny_train_config("eel"), version, root / "train" / "eel", progress=False, log=lambda m: None)
    return SimpleNamespace(
        version=version, model=res.model, segmenter=Path(res.metrics["segmenter_checkpoint"]), root=root
    )
