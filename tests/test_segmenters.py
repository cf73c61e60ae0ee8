"""Frozen segmenters: the real ESPNetv2 reproduces its reference logits; DeepLabV3+ loads the checkpoint
layouts of NVIDIA / RPL / PEBAL strictly (key lists dumped from those repositories' own modules)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.segmenters import (
    CheckpointMismatchError,
    build_segmenter,
    load_segmenter_weights,
)
from schemas import SegmenterConfig
from tasks.checkpoints import frozen_segmenter, read_checkpoint
from tests.helpers import random_state_dict, shared_or_skip

DATA = Path(__file__).parent / "data"


def test_espnetv2_reproduces_the_reference_logits():
    d = shared_or_skip("espnetv2")
    seg = frozen_segmenter(SegmenterConfig(name="espnetv2", checkpoint=d / "espnetv2_s_2.0_city_1024x512.pth"))
    ref = np.load(d / "reference_io_128x256.npz")
    x = torch.from_numpy(ref["input"]) * seg.std + seg.mean  # the adapter normalizes [0, 1] RGB itself
    with torch.no_grad():
        logits = seg(x)
    assert logits.shape == (1, 19, 128, 256)
    assert np.abs(logits.numpy() - ref["logits"][:, :19]).max() < 1e-3
    # and the network as a whole (20 outputs) too
    with torch.no_grad():
        full = seg.net(torch.from_numpy(ref["input"]))
    assert np.abs(full.numpy() - ref["logits"]).max() < 1e-3


def test_espnetv2_real_weights_segment_the_real_frame_sensibly():
    d = shared_or_skip("espnetv2")
    seg = frozen_segmenter(SegmenterConfig(name="espnetv2", checkpoint=d / "espnetv2_s_2.0_city_1024x512.pth"))
    ref = np.load(d / "reference_io_128x256.npz")
    with torch.no_grad():
        pred = seg.net(torch.from_numpy(ref["input"]))[:, :19].argmax(1)[0]
    # a Cityscapes street frame: road (0) dominates the bottom rows, sky (10) or building (2) the top
    assert (pred[-20:] == 0).float().mean() > 0.5
    assert torch.isin(pred[:20], torch.tensor([2, 8, 10])).float().mean() > 0.5


def _keys(name: str) -> list[str]:
    return (DATA / name).read_text().splitlines()


@pytest.fixture(scope="module")
def wrn():
    return build_segmenter("deeplabv3plus_wrn38")


@pytest.fixture(scope="module")
def wrn_state():
    return random_state_dict(_keys("deepwv3plus_rpl_keys.txt"))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},  # NVIDIA's best checkpoint
        lambda sd: {"model": {"branch1." + k: v for k, v in sd.items()}},  # RPL / PEBAL
        lambda sd: {"model_state": {"module.branch1." + k: v for k, v in sd.items()}},
        lambda sd: dict(sd),
    ],
    ids=["nvidia", "rpl_pebal", "model_state", "plain"],
)
def test_deeplab_wrn38_loads_every_layout_strictly(wrn, wrn_state, wrap, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(wrn_state), path)
    heads = load_segmenter_weights(wrn, read_checkpoint(path), source=str(path))
    # RPL's own residual head is reported, not loaded into the segmenter and not silently dropped
    assert heads and all(k.startswith("residual_block.") for k in heads)
    own = wrn.net.state_dict()
    assert torch.equal(own["final.6.weight"], wrn_state["final.6.weight"])
    assert torch.equal(own["mod7.block1.convs.conv3.weight"], wrn_state["mod7.block1.convs.conv3.weight"])
    assert not any(p.requires_grad for p in wrn.parameters())


def test_mismatching_checkpoint_lists_missing_unexpected_and_shapes(wrn, wrn_state):
    sd = dict(wrn_state)
    del sd["aspp.img_conv.0.weight"]
    sd["aspp.extra.weight"] = torch.zeros(1)
    sd["bot_fine.weight"] = torch.zeros(48, 64, 1, 1)
    with pytest.raises(CheckpointMismatchError) as e:
        load_segmenter_weights(wrn, {"model": sd}, source="bad.pth")
    msg = str(e.value)
    assert "bad.pth" in msg and "aspp.img_conv.0.weight" in msg and "aspp.extra.weight" in msg
    assert "bot_fine.weight: checkpoint (48, 64, 1, 1) vs network (48, 128, 1, 1)" in msg


@pytest.mark.parametrize("depth", [50, 101])
def test_deeplab_resnet_loads_nvidia_keys(depth):
    seg = build_segmenter(f"deeplabv3plus_resnet{depth}")
    sd = random_state_dict(_keys(f"deepv3plus_r{depth}_keys.txt"))
    load_segmenter_weights(seg, {"state_dict": {"module." + k: v for k, v in sd.items()}})
    with torch.no_grad():
        out = seg(torch.rand(1, 3, 36, 52))  # padded to a multiple of 8 inside, cropped back
    assert out.shape == (1, 19, 36, 52) and torch.isfinite(out).all()


def test_missing_or_unreadable_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        read_checkpoint(bad)


def test_adapter_stays_frozen_and_in_eval_mode():
    seg = build_segmenter("espnetv2_demo")
    seg.train()
    assert not seg.net.training and not any(p.requires_grad for p in seg.parameters())
    x = torch.rand(2, 3, 50, 70)
    enc = seg.encode(x)
    assert enc.padded == (64, 80) and enc.size == (50, 70)
    assert enc.plug.shape[1] == seg.plug_channels and enc.deep.shape[1] == seg.deep_channels
    assert seg.decode(enc).shape == (2, 19, 50, 70)
