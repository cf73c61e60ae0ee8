"""Checkpoints (``tasks.checkpoints``): weights-only reading with errors naming the file, atomic saving, and method
checkpoints that find their frozen segmenter wherever the run directory moved."""

from __future__ import annotations

import shutil

import pytest
import torch

from models.segmenters import CheckpointMismatchError, build_segmenter
from schemas import SegmenterConfig
from tasks.checkpoints import (
    frozen_segmenter,
    is_method_checkpoint,
    load_method,
    read_checkpoint,
    save_atomic,
)


class Payload:
    """An arbitrary object: ``weights_only=True`` refuses it, never unpickles it."""


def test_read_checkpoint_is_weights_only_and_names_the_file(tmp_path):
    save_atomic({"w": torch.arange(3.0)}, tmp_path / "ok.pt")
    assert torch.equal(read_checkpoint(tmp_path / "ok.pt")["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["ok.pt"]  # no temporary file left beside it
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*missing.pt"):
        read_checkpoint(tmp_path / "missing.pt")

    torch.save({"x": Payload()}, tmp_path / "code.pt")
    with pytest.raises(ValueError, match=r"code.pt: not a readable weights-only PyTorch checkpoint"):
        read_checkpoint(tmp_path / "code.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match=r"text.pt: not a readable weights-only"):
        read_checkpoint(tmp_path / "text.pt")


def test_a_method_checkpoint_is_told_apart_by_its_format():
    assert is_method_checkpoint({"format": "anomalyforge-method/2", "head": {}})
    assert not is_method_checkpoint({"weight": torch.zeros(1)}) and not is_method_checkpoint(torch.zeros(1))


def test_a_frozen_segmenter_needs_a_checkpoint_and_loads_strictly(tmp_path):
    with pytest.raises(ValueError, match="segmenter 'espnetv2_demo' has no checkpoint configured"):
        frozen_segmenter(SegmenterConfig(name="espnetv2_demo"))
    torch.manual_seed(0)
    sd = build_segmenter("espnetv2_demo").net.state_dict()
    save_atomic(sd, tmp_path / "seg.pt")
    seg = frozen_segmenter(SegmenterConfig(name="espnetv2_demo", checkpoint=tmp_path / "seg.pt"))
    assert all(torch.equal(seg.net.state_dict()[k], v) for k, v in sd.items())
    assert not any(p.requires_grad for p in seg.parameters())
    save_atomic({k: v for k, v in list(sd.items())[1:]}, tmp_path / "short.pt")
    with pytest.raises(
        CheckpointMismatchError, match=r"short.pt does not match ESPNetv2Segmentation:\n  missing keys \(1\)"
    ):
        frozen_segmenter(SegmenterConfig(name="espnetv2_demo"), tmp_path / "short.pt")


def test_model_pt_is_portable_and_names_a_missing_or_different_segmenter(trained_eel, tmp_path):
    # the whole directory moves: the segmenter is found by its path relative to model.pt
    moved = tmp_path / "moved"
    shutil.copytree(trained_eel.root / "train", moved / "train")
    model = moved / "train" / "eel" / "model.pt"
    ckpt = read_checkpoint(model)
    assert ckpt["segmenter"]["relative"] == "../segmenters/" + trained_eel.segmenter.name
    original = trained_eel.segmenter
    stash = tmp_path / "stash.pt"
    shutil.move(original, stash)  # the absolute path no longer exists either
    try:
        assert load_method(model).segmenter_checkpoint == moved / "train" / "segmenters" / original.name
        (moved / "train" / "segmenters" / original.name).unlink()
        with pytest.raises(
            FileNotFoundError, match=r"model.pt: its frozen segmenter checkpoint is missing.*--segmenter-checkpoint"
        ):
            load_method(model)
        assert load_method(model, segmenter_checkpoint=stash).segmenter_checkpoint == stash
        other = tmp_path / "other.pt"
        sd = read_checkpoint(stash)
        torch.save({k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}, other)
        with pytest.raises(
            ValueError, match=rf"trained over the segmenter checkpoint .*{original.name}.* but .*other.pt has sha256"
        ):
            load_method(model, segmenter_checkpoint=other)
    finally:
        shutil.move(stash, original)
