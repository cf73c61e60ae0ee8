"""Mask-classification segmenters (Mask2Former through ``transformers``) and the methods over them (RbA, Mask2Anomaly,
EEL on Mask2Anomaly): class scores, scores and losses against hand values; the real loading path (save_pretrained →
from_pretrained, from a directory and from the Hugging Face cache) on tiny random networks; what trains and what
stays frozen; the errors a wrong checkpoint gets."""

from __future__ import annotations

import copy
import json
import math
import shutil

import pytest
import torch

from models.losses import m2a_loss, rba_loss
from models.mask_heads import MaskOutput, confident_regions
from models.methods import get_method, method_config
from models.methods.m2a import refine_map
from models.scores import m2a, rba
from models.segmenters import CheckpointMismatchError, SegmenterKindError, build_segmenter
from models.segmenters.mask2former import Queries, class_scores, semantic_targets
from schemas import SegmenterConfig
from tasks.checkpoints import checkpoint_sha256, frozen_segmenter, method_model, save_atomic
from tasks.imageio import BadInputError
from tests.helpers import TINY_MASK2FORMER, save_tiny_mask2former, tiny_mask2former

MASK2FORMER = SegmenterConfig(name="mask2former")


def hand_queries() -> Queries:
    """Q = 2 queries, K = 2 classes (+ no-object), one row of two pixels.
    Query 0: class logits (ln 2, 0, 0) → softmax (1/2, 1/4, 1/4); query 1: (0, 0, 0) → (1/3, 1/3, 1/3).
    Pixel 0: mask logits 0 (sigmoid 1/2) and ln 3 (sigmoid 3/4); pixel 1: both −∞ (sigmoid 0)."""
    cls = torch.tensor([[[math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0]]])
    masks = torch.tensor([[[[0.0, -1e4]], [[math.log(3), -1e4]]]])
    return Queries(torch.zeros(1, 2, 4), torch.zeros(1, 4, 1, 2), cls, masks, (1, 2), (1, 2))


def test_class_scores_are_mask2formers_semantic_inference_by_hand():
    q = hand_queries()
    L = class_scores(q.class_logits, q.mask_logits)
    # L_0 = 1/2·1/2 + 1/3·3/4 = 1/2; L_1 = 1/4·1/2 + 1/3·3/4 = 3/8 (no-object dropped after the softmax)
    assert torch.allclose(L[0, :, 0, 0], torch.tensor([0.5, 0.375]))
    assert torch.allclose(L[0, :, 0, 1], torch.zeros(2), atol=1e-6)


def test_rba_and_m2a_scores_by_hand():
    L = class_scores(hand_queries().class_logits, hand_queries().mask_logits)
    assert torch.allclose(rba(L)[0, 0], torch.tensor([-(math.tanh(0.5) + math.tanh(0.375)), 0.0]), atol=1e-6)
    assert torch.allclose(m2a(L)[0, 0], torch.tensor([0.5, 1.0]), atol=1e-6)
    # a pixel no class claims is the most anomalous under both
    assert rba(L)[0, 0, 1] > rba(L)[0, 0, 0] and m2a(L)[0, 0, 1] > m2a(L)[0, 0, 0]


def test_rba_loss_by_hand():
    L = class_scores(hand_queries().class_logits, hand_queries().mask_logits)  # pixel 0 claimed, pixel 1 not
    s0 = -(math.tanh(0.5) + math.tanh(0.375))
    both = rba_loss(L, torch.tensor([[[0, 254]]]), inlier_margin=-1.0, outlier_margin=5.0)
    assert both["rba_inlier"].item() == pytest.approx(max(s0 + 1, 0) ** 2, rel=1e-5)
    assert both["rba_outlier"].item() == pytest.approx(25.0)  # relu(5 − 0)²
    assert both["rba"].item() == pytest.approx(0.5 * ((s0 + 1) ** 2 + 25.0), rel=1e-5)
    inliers_only = rba_loss(L, torch.tensor([[[0, 255]]]), inlier_margin=-1.0)
    assert inliers_only["rba"].item() == pytest.approx((s0 + 1) ** 2, rel=1e-5)  # no halving without anomalies
    # the released margins: the inlier term is 0 (RbA ≤ 0 always)
    assert rba_loss(L, torch.tensor([[[0, 254]]]))["rba_inlier"].item() == 0.0


def test_m2a_loss_by_hand():
    L = class_scores(hand_queries().class_logits, hand_queries().mask_logits)  # s = 1 − max L: 0.5 and 1.0
    parts = m2a_loss(L, torch.tensor([[[0, 254]]]), margin=1.5)
    assert parts["m2a_inlier"].item() == pytest.approx(0.25)  # 0.5²
    assert parts["m2a_outlier"].item() == pytest.approx(0.25)  # relu(1.5 − 1)²
    assert parts["m2a"].item() == pytest.approx(0.25)  # ½ (0.25 + 0.25)
    # the terms pull apart: the anomaly's loss falls as its max class score falls, the inlier's as it rises
    assert m2a_loss(L, torch.tensor([[[0, 254]]]), margin=1.0)["m2a_outlier"].item() == 0.0


def test_semantic_targets_hold_one_mask_per_class_present_and_no_void_or_anomaly():
    labels = torch.tensor([[[0, 0, 3], [255, 254, 3]]])
    (masks,), (classes,) = semantic_targets(labels, 19)
    assert classes.tolist() == [0, 3]
    assert masks.tolist() == [[[1, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 0, 1]]]


def test_the_mask_refinement_clears_what_a_confident_stuff_query_covers():
    # query 0: vegetation (trainId 8) at probability > 0.95, mask on the left pixel; query 1: unsure, mask everywhere
    cls = torch.full((1, 2, 20), -10.0)
    cls[0, 0, 8] = 10.0
    masks = torch.tensor([[[[10.0, -10.0]], [[10.0, 10.0]]]])
    q = Queries(torch.zeros(1, 2, 4), torch.zeros(1, 4, 1, 2), cls, masks, (1, 2), (1, 2))
    region = confident_regions(q, classes=(8,), confidence=0.95)
    assert region[0, 0, 0, 0] > 0.99 and region[0, 0, 0, 1] < 0.01
    assert confident_regions(q, classes=(9,))[0].max() == 0  # another class: nothing is cleared
    cfg = method_config({"name": "m2a", "refine_classes": [8]})
    score = torch.tensor([[[0.9, 0.7]]])
    out = MaskOutput(q, torch.zeros(1, 19, 1, 2))
    assert torch.equal(refine_map(cfg, score, out), torch.tensor([[[0.7, 0.7]]]))  # the covered pixel: the minimum


def test_a_tiny_mask2former_round_trips_through_from_pretrained_from_a_directory_and_the_hub_cache(
    tmp_path, monkeypatch
):
    import huggingface_hub.constants

    saved = save_tiny_mask2former(tmp_path / "m2f")
    x = torch.rand(2, 3, 40, 70)
    with torch.no_grad():
        want = tiny_mask2former()(x)
    seg = frozen_segmenter(MASK2FORMER, saved)
    assert seg.kind == "mask-classification" and not any(p.requires_grad for p in seg.parameters())
    with torch.no_grad():
        got = seg(x)
    assert got.shape == (2, 19, 40, 70) and torch.equal(got, want)
    # a hub id resolves to its snapshot in the local cache (offline)
    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny-m2f"
    shutil.copytree(saved, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    with torch.no_grad():
        assert torch.equal(frozen_segmenter(MASK2FORMER, "org/tiny-m2f")(x), want)
    with pytest.raises(FileNotFoundError, match=r"org/other.*not in the local Hugging Face cache.*hf download"):
        frozen_segmenter(MASK2FORMER, "org/other")
    # a directory's digest covers its files
    digest = checkpoint_sha256(saved)
    assert digest == checkpoint_sha256(saved)
    (saved / "config.json").write_text((saved / "config.json").read_text() + " ")
    assert checkpoint_sha256(saved) != digest


def test_queries_with_copies_of_every_part_are_the_networks_own():
    seg = tiny_mask2former()
    x = torch.rand(1, 3, 64, 96)
    names = ("pixel_decoder", "transformer_decoder", "class_head", "mask_embedder")
    copies = {name: copy.deepcopy(getattr(seg, name)()) for name in names}
    with torch.no_grad():
        q, c = seg.queries(x), seg.queries(x, **copies)
        ref = seg.net(pixel_values=seg.prepare(x)[0])
    assert torch.equal(q.class_logits, ref.class_queries_logits) and torch.equal(
        q.mask_logits, ref.masks_queries_logits
    )
    assert torch.equal(c.class_logits, q.class_logits) and torch.equal(c.mask_logits, q.mask_logits)


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("rba", {"class_head", "mask_embedder"}),
        ("m2a", {"pixel_decoder", "transformer_decoder", "class_head"}),
        ("eel_mask", {"pixel_decoder", "transformer_decoder", "class_head"}),
    ],
)
def test_mask_methods_train_only_their_parts_and_leave_the_frozen_network_bitwise_unchanged(name, parts):
    spec, seg = get_method(name), tiny_mask2former()
    cfg = method_config({"name": name, "lr": 1e-2})
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    torch.manual_seed(0)
    model = spec.build(cfg, seg).train()
    assert set(model.parts) == parts
    opt = torch.optim.AdamW([g["params"] for g in spec.param_groups(cfg, model)][0], lr=cfg.lr)
    x = torch.rand(2, 3, 64, 96)
    y = torch.randint(0, 19, (2, 64, 96))
    y[:, 20:40, 30:60] = 254
    start = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    for _ in range(2):
        opt.zero_grad()
        parts_out = spec.loss(cfg, model, x, y, {}, torch.Generator(), None)
        assert torch.isfinite(parts_out["loss"]) and parts_out["outlier"] > 0 and parts_out["segmentation"] > 0
        parts_out["loss"].backward()
        with_grad = {
            n.split(".")[1] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
        }
        assert with_grad == parts, with_grad  # every named part learns, nothing else does
        opt.step()
    assert all(torch.equal(v, before[k]) for k, v in seg.state_dict().items())
    assert any(not torch.equal(v, start[k]) for k, v in model.trainable_state_dict().items())
    out = spec.infer(cfg, model.eval(), x, (32, 48))
    assert out.score.shape == (2, 32, 48) and out.logits.shape == (2, 19, 32, 48)
    assert torch.equal(out.frozen_pred, torch.nn.functional.interpolate(seg(x), (32, 48), mode="bilinear").argmax(1))


def test_a_method_of_one_kind_over_a_segmenter_of_the_other_is_refused_naming_both_and_the_file(tmp_path):
    espnet = build_segmenter("espnetv2_demo")
    per_pixel = save_atomic(espnet.net.state_dict(), tmp_path / "espnet.pt")
    with pytest.raises(
        SegmenterKindError,
        match=r"'rba' needs a mask-classification segmenter, but 'espnetv2_demo' \(.*espnet\.pt\) is per-pixel",
    ):
        method_model(get_method("rba"), method_config("rba"), SegmenterConfig(name="espnetv2_demo"), per_pixel)
    saved = save_tiny_mask2former(tmp_path / "m2f")
    with pytest.raises(
        SegmenterKindError, match=r"'eel' needs a per-pixel segmenter, but 'mask2former' .* is mask-classification"
    ):
        method_model(get_method("eel"), method_config("eel"), MASK2FORMER, saved)


def test_wrong_segmenter_checkpoints_get_a_message_naming_the_file(tmp_path):
    per_pixel = save_atomic(build_segmenter("espnetv2_demo").net.state_dict(), tmp_path / "espnet.pt")
    saved = save_tiny_mask2former(tmp_path / "m2f")
    # a per-pixel state dict for a mask-classification network
    demo = SegmenterConfig(name="mask2former_demo", options=TINY_MASK2FORMER)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)espnet\.pt does not match .*missing keys"):
        frozen_segmenter(demo, per_pixel)
    with pytest.raises(
        BadInputError, match=r"espnet\.pt is a file, but segmenter 'mask2former' loads a transformers model directory"
    ):
        frozen_segmenter(MASK2FORMER, per_pixel)
    with pytest.raises(
        BadInputError,
        match=r"m2f is a transformers model directory, but segmenter 'espnetv2_demo' reads a state-dict file",
    ):
        frozen_segmenter(SegmenterConfig(name="espnetv2_demo"), saved)
    with pytest.raises(FileNotFoundError, match=r"segmenter checkpoint not found: .*no/such/dir"):
        frozen_segmenter(MASK2FORMER, tmp_path / "no" / "such" / "dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match=r"empty: a directory without config.json"):
        frozen_segmenter(MASK2FORMER, tmp_path / "empty")
    # weights of another shape than the config says: every mismatch is listed, naming the directory
    cfg = json.loads((saved / "config.json").read_text())
    cfg["hidden_dim"] = 48
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointMismatchError, match=r"m2f does not match .*shape mismatches \(\d+\): class_predictor"
    ):
        frozen_segmenter(MASK2FORMER, saved)


def test_the_mask_segmenter_and_methods_run_under_bf16_autocast():
    """The accelerate path of ``mixed_precision: bf16`` (CPU autocast here; fp16/bf16 on a GPU the same way)."""
    seg, spec = tiny_mask2former(), get_method("rba")
    model = spec.build(method_config("rba"), seg)
    x, y = torch.rand(2, 3, 64, 96), torch.randint(0, 19, (2, 64, 96))
    y[:, :10] = 254
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = spec.loss(method_config("rba"), model, x, y, {}, torch.Generator(), None)
        out = spec.infer(method_config("rba"), model.eval(), x, (64, 96))
    parts["loss"].backward()
    assert torch.isfinite(parts["loss"]) and torch.isfinite(out.score).all()
    assert model.parts["class_head"].weight.grad is not None


@pytest.mark.slow
def test_rba_and_m2a_train_on_shards_and_evaluate_through_the_cli(trained_eel, tmp_path):
    from tasks.checkpoints import load_method
    from tasks.train.trainer import train_method
    from tests.helpers import eval_cli, tiny_train_config

    datasets = [{"kind": "shards", "root": trained_eel.version, "name": "held", "val_fraction": 0.3}]
    for d in ("e1", "e2", "e3", "e4"):
        (tmp_path / d).mkdir()
    models = {}
    for name in ("rba", "m2a"):
        res = train_method(tiny_train_config(name), trained_eel.version, tmp_path / name, progress=False, log=print)
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert res.steps == 4 and math.isfinite(res.first_loss) and 0 <= metrics["auroc"] <= 1
        # the mask-classification segmenter it ran on (pre-trained closed-set on the shards), recorded in the model
        loaded = load_method(res.model)
        assert loaded.cfg.segmenter.name == "mask2former_demo" and loaded.cfg.segmenters == {}
        assert loaded.model.segmenter.kind == "mask-classification"
        models[name] = res.model
    output, metrics = eval_cli(tmp_path / "e1", datasets, "--model", str(models["rba"]))
    assert "method, score rba (−Σ_k tanh L_k (rejected by all))" in output
    assert 0 <= metrics["datasets"]["held"]["auroc"] <= 1
    # the refinement flag of m2a, switched at evaluation
    _, on = eval_cli(tmp_path / "e2", datasets, "--model", str(models["m2a"]))
    _, off = eval_cli(tmp_path / "e3", datasets, "--model", str(models["m2a"]), "--set", "method_options.refine=false")
    assert on["settings"]["method_config"]["refine"] is True and off["settings"]["method_config"]["refine"] is False
    # a transformers model directory with a post-hoc score of its class scores
    saved = save_tiny_mask2former(tmp_path / "m2f")
    args = ("--model", str(saved), "--segmenter", "mask2former", "--score", "rba")
    output, metrics = eval_cli(tmp_path / "e4", datasets, *args)
    assert "segmenter, score rba" in output and metrics["settings"]["segmenter_kind"] == "mask-classification"


def test_eval_refuses_a_model_directory_without_a_network_name_and_bad_method_options(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    saved = save_tiny_mask2former(tmp_path / "m2f")
    (tmp_path / "eval.yaml").write_text("model: unset\ndatasets: [{kind: folder, root: nowhere}]\n")
    res = CliRunner().invoke(app, ["eval", "--config", str(tmp_path / "eval.yaml"), "--model", str(saved)])
    assert (
        res.exit_code != 0
        and "m2f is a transformers model directory: name its network with --segmenter"
        in str(res.exception) + res.output
    )
