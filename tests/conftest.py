from __future__ import annotations

import os
from pathlib import Path

# Prefect reads its settings once, at import: this must come before anything imports prefect. A busy
# 2-core CI machine running two test workers can take well over Prefect's default 20 s to start the
# ephemeral API server that in-process flow runs use.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")

import pytest
import torch

from schemas import SynthConfig
from tests.helpers import RedIsUnknown, tiny_synth_config, tiny_train_config, write_red_squares_dataset


@pytest.fixture
def tiny_config(tmp_path: Path) -> SynthConfig:
    return tiny_synth_config(tmp_path)


@pytest.fixture(scope="session")
def trained_eel(tmp_path_factory):
    """Tiny demo shards (12 samples) and an EEL head trained on them: ``version``, ``model`` (model.pt),
    ``segmenter`` (the frozen closed-set checkpoint), ``root``."""
    from types import SimpleNamespace

    from tasks.train.trainer import train_method
    from tasks.versions import resolve_version
    from tests.helpers import make_shards

    root = tmp_path_factory.mktemp("trained")
    cfg = tiny_synth_config(root)
    cfg.num_samples = 12
    make_shards(cfg, root / "run")
    version = resolve_version(root / "run" / "shards")
    res = train_method(tiny_train_config("eel"), version, root / "train" / "eel", progress=False, log=lambda m: None)
    return SimpleNamespace(
        version=version, model=res.model, segmenter=Path(res.metrics["segmenter_checkpoint"]), root=root
    )


@pytest.fixture
def setup(tmp_path):
    """A TorchScript model that calls red pixels unknown and a 4-image benchmark of red squares (fishyscapes and
    folder layouts): tests/test_evaluate.py, tests/test_eval_one_pass.py."""
    model_path = tmp_path / "model.ts.pt"
    torch.jit.save(torch.jit.script(RedIsUnknown()), str(model_path))
    write_red_squares_dataset(tmp_path / "fs", conditions=["clear", "fog"])
    return tmp_path, model_path
