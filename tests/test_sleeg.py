"""SLEEG (Tu et al., AAAI 2024): its losses by hand, the Otsu-style threshold against brute force, the patch
generator's geometry and determinism, the frozen network, and training end to end (with and without outside
objects, and on shards whose only anomalies are patches)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu
from skimage.morphology import convex_hull_image

from models.losses import IGNORE_ID, jem, otsu_threshold, refine_candidates, sleeg_score, tae_loss, tore_loss
from models.methods import TrainingProgress, get_method, method_config
from models.segmenters import build_segmenter
from models.sleeg import SLEEGOutput
from schemas import PatchesConfig, PatchesSourceConfig
from tasks.labels import ANOMALY
from tasks.patches import PatchLibrary, paste_patches, patch_object, polygon_mask, random_crop_box
from tasks.train.extras import build_extras
from tests.helpers import tiny_method, tiny_train_config

LN2 = math.log(2)


def _head(*pixels: tuple[float, float]) -> torch.Tensor:
    """1×2×1×N head logits, one (normal, anomaly) pair per pixel."""
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(1, 2, 1, len(pixels)).contiguous()


def _frozen(*jems: float) -> torch.Tensor:
    """1×2×1×N frozen logits whose JEM = −logsumexp is the given value per pixel (two equal logits c: JEM = −c − ln 2)."""
    c = torch.tensor([-j - LN2 for j in jems])
    return torch.stack([c, c]).reshape(1, 2, 1, len(jems))


# ---- losses by hand ---------------------------------------------------------------------------------------------


def test_jem_is_the_negative_logsumexp_of_the_frozen_logits():
    assert jem(torch.zeros(1, 2, 1, 1)).item() == pytest.approx(-LN2)
    assert jem(_frozen(3.0, -1.5)).flatten().tolist() == pytest.approx([3.0, -1.5])


def test_tae_is_the_cross_entropy_over_the_pixels_not_ignored():
    head = _head((0.0, 0.0), (0.0, math.log(3)), (5.0, -5.0))
    target = torch.tensor([[[0, 1, IGNORE_ID]]])
    # pixel 0: −log ½; pixel 1: −log ¾; pixel 2 ignored
    assert tae_loss(head, target).item() == pytest.approx((LN2 + math.log(4 / 3)) / 2, rel=1e-6)
    all_ignored = tae_loss(head.requires_grad_(), torch.full((1, 1, 3), IGNORE_ID))
    assert all_ignored.item() == 0 and all_ignored.requires_grad


def test_tore_is_the_energy_guided_margin_of_eq_8():
    # normal pixels h1 = 1, 2 with JEM −ln2; the anomaly pixel h1 = 5 with JEM 3 − ln2
    head = _head((0, 1.0), (0, 2.0), (0, 5.0))
    frozen = _frozen(-LN2, -LN2, 3 - LN2)
    target = torch.tensor([[[0, 0, 1]]])
    # γ̂ = 15 + E_id[JEM] − E_ood[JEM] = 15 − 3 = 12;  ℓ_o = max(0, 1.5 − 5 + 12) = 8.5
    assert tore_loss(head, frozen, target, gamma=15.0).item() == pytest.approx(8.5, rel=1e-6)
    # the margin is dynamic: the same head with an energy gap of 0 needs 3 more
    assert tore_loss(head, _frozen(0, 0, 0), target, gamma=15.0).item() == pytest.approx(11.5, rel=1e-6)
    # met margin: zero
    assert tore_loss(_head((0, 1.0), (0, 2.0), (0, 30.0)), frozen, target, gamma=15.0).item() == 0
    # the gradient raises h1 on the anomaly and lowers it on the normal pixels
    h = head.clone().requires_grad_()
    tore_loss(h, frozen, target).backward()
    assert h.grad[0, 1, 0].tolist() == pytest.approx([0.5, 0.5, -1.0]) and h.grad[0, 0].abs().sum() == 0


def test_tore_skips_images_without_anomaly_pixels():
    head = torch.cat([_head((0, 1.0), (0, 2.0), (0, 5.0)), _head((0, 9.0), (0, 9.0), (0, 9.0))])
    frozen = torch.cat([_frozen(-LN2, -LN2, 3 - LN2), _frozen(0, 0, 0)])
    target = torch.tensor([[[0, 0, 1]], [[0, 0, IGNORE_ID]]])  # the second image has no OoD pixel
    assert tore_loss(head, frozen, target).item() == pytest.approx(8.5, rel=1e-6)  # the first image's alone
    none = tore_loss(head.requires_grad_(), frozen, torch.zeros(2, 1, 3, dtype=torch.long))
    assert none.item() == 0 and none.requires_grad


def test_the_score_is_log_pa_plus_lambda_log_pt():
    head, frozen = _head((0.0, math.log(3))), _frozen(-LN2)
    # log p_a = log ¾, log p_t = h1 + JEM = ln 3 − ln 2
    expected = math.log(3 / 4) + 0.5 * (math.log(3) - LN2)
    assert sleeg_score(head, frozen, lam=0.5).item() == pytest.approx(expected, rel=1e-6)
    # higher = anomalous: a larger anomaly logit or a higher frozen energy both raise it
    assert sleeg_score(_head((0.0, 2.0)), frozen).item() > sleeg_score(head, frozen).item()
    assert sleeg_score(head, _frozen(1.0)).item() > sleeg_score(head, frozen).item()


# ---- the threshold and the refinement ---------------------------------------------------------------------------


def _within_sse(v: np.ndarray, t: float) -> float:
    lo, hi = v[v < t], v[v >= t]
    return float(((lo - lo.mean()) ** 2).sum() + ((hi - hi.mean()) ** 2).sum())


@pytest.mark.parametrize("seed", range(5))
def test_otsu_threshold_equals_a_brute_force_search_of_the_same_grid(seed):
    rng = np.random.default_rng(seed)
    v = np.concatenate([rng.normal(-4, 1.5, 300), rng.normal(3, 2.5, 200), rng.uniform(-10, 10, 50)])
    n = 25
    levels = v.min() + (v.max() - v.min()) * np.arange(1, n + 1) / (n + 1)
    sse = [_within_sse(v, t) for t in levels]
    got = otsu_threshold(torch.tensor(v), n).item()
    assert got == pytest.approx(levels[int(np.argmin(sse))], rel=1e-9)
    # and lands next to the optimum over every split of the values (the grid's resolution)
    exact = min(_within_sse(v, t) for t in np.unique(v)[1:])
    assert _within_sse(v, got) <= exact * 1.05
    # as skimage's histogram Otsu does, give or take a grid step
    assert abs(got - threshold_otsu(v)) <= (v.max() - v.min()) / (n + 1) * 1.5


def test_otsu_threshold_separates_two_groups_and_keeps_constant_values():
    v = torch.tensor([1.0, 1.2, 0.9, 1.1, 8.0, 8.3, 7.9])
    t = otsu_threshold(v, 25).item()
    assert 1.2 < t <= 7.9
    assert otsu_threshold(torch.full((4,), 2.5)).item() == 2.5


def test_refinement_keeps_high_scoring_candidates_and_ignores_the_rest():
    score = torch.tensor([[[1.0, 2.0, 10.0, 11.0, 50.0, -50.0]]])
    candidates = torch.tensor([[[True, True, True, True, False, False]]])
    base = torch.tensor([[[0, 0, 0, 0, 1, 0]]])  # an outside-object anomaly outside the patches
    target = refine_candidates(score, candidates, base, 25)
    assert target.tolist() == [[[IGNORE_ID, IGNORE_ID, 1, 1, 1, 0]]]
    # an image without candidates keeps its base
    assert refine_candidates(score, torch.zeros_like(candidates), base).tolist() == base.tolist()


def test_warm_up_refines_with_the_frozen_energy_then_with_the_head():
    spec = get_method("sleeg")
    cfg = method_config({"name": "sleeg", "warmup_fraction": 0.15})
    # 4 candidate pixels: the frozen energy says 0 and 1 are anomalous, the head says 2 and 3
    out = SLEEGOutput(
        frozen_logits=_frozen(9.0, 9.0, -9.0, -9.0, 0.0), head=_head((0, -30.0), (0, -30.0), (0, 30), (0, 30), (0, 0))
    )
    labels = torch.tensor([[[7, 7, 7, 7, 7]]])
    candidates = torch.tensor([[[True, True, True, True, False]]])
    early = spec.targets(cfg, out, labels, candidates, TrainingProgress(14, 100))
    late = spec.targets(cfg, out, labels, candidates, TrainingProgress(15, 100))
    assert early.tolist() == [[[1, 1, IGNORE_ID, IGNORE_ID, 0]]]
    assert late.tolist() == [[[IGNORE_ID, IGNORE_ID, 1, 1, 0]]]


def test_shard_anomalies_train_as_anomalies_only_with_outside_objects():
    spec = get_method("sleeg")
    out = SLEEGOutput(frozen_logits=_frozen(0.0, 0.0, 0.0), head=_head((0, 0), (0, 0), (0, 0)))
    labels = torch.tensor([[[ANOMALY, 3, IGNORE_ID]]])
    none = torch.zeros(1, 1, 3, dtype=torch.bool)
    with_ = spec.targets(method_config("sleeg"), out, labels, none, TrainingProgress(0, 1))
    without = spec.targets(
        method_config({"name": "sleeg", "outside_objects": False}), out, labels, none, TrainingProgress(0, 1)
    )
    assert with_.tolist() == [[[1, 0, 0]]]  # void is normal, as in the authors' code
    assert without.tolist() == [[[IGNORE_ID, 0, 0]]]


# ---- patches ----------------------------------------------------------------------------------------------------


def test_crop_boxes_have_the_configured_area_and_aspect():
    cfg = PatchesConfig()
    rng = np.random.default_rng(0)
    H, W = 256, 512
    for _ in range(300):
        x0, y0, x1, y1 = random_crop_box(H, W, cfg, rng)
        w, h = x1 - x0, y1 - y0
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
        # whole-pixel sides: area and aspect within the bounds up to half a pixel per side
        assert 0.03 * H * W * 0.97 <= w * h <= 0.06 * H * W * 1.03
        assert 0.8 * 0.97 <= w / h <= 1.2 * 1.03


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_a_patch_is_the_convex_polygon_spanned_by_its_harris_corners():
    crop = np.zeros((60, 60, 3), np.uint8)
    crop[15:45, 20:40] = 255  # a white rectangle: its four corners are the Harris corners
    cfg = PatchesConfig(random_points=3)
    mask = polygon_mask(crop, cfg, np.random.default_rng(0))
    assert mask[16:44, 21:39].all()  # the hull of the corners covers the rectangle
    assert np.array_equal(convex_hull_image(mask, offset_coordinates=False), mask)  # convex: its own hull
    cnts, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    assert len(cnts) == 1  # one piece
    # without corners only the three random points span it: it does not cover the rectangle
    no_corners = polygon_mask(crop, cfg.model_copy(update={"max_corners": 0}), np.random.default_rng(0))
    assert not no_corners[16:44, 21:39].all()


def test_pasting_is_deterministic_and_changes_only_the_candidates():
    img = _textured(96, 160)
    cfg = PatchesConfig()

    def run(seed):
        lib = PatchLibrary(cfg, np.random.default_rng(seed))
        lib.refresh([_textured(96, 160, 1), _textured(96, 160, 2)])
        return paste_patches(img, lib)

    (a, ca), (b, cb), (_, cc) = run(0), run(0), run(1)
    assert np.array_equal(a, b) and np.array_equal(ca, cb)
    assert not np.array_equal(ca, cc)
    assert np.array_equal(a[~ca], img[~ca])  # nothing outside the pasted polygons changed
    assert (a[ca] != img[ca]).any(axis=-1).mean() > 0.9  # inside, the pixels are the patches'
    assert 0.1 < ca.mean() < 0.7  # 10 patches of 3–6 % each, some overlapping


def test_the_library_is_a_queue_refreshed_with_crops_of_the_images():
    cfg = PatchesConfig(library_size=5, crops_per_image=2)
    lib = PatchLibrary(cfg, np.random.default_rng(0))
    with pytest.raises(RuntimeError, match="empty"):
        lib.draw()
    lib.refresh([np.full((80, 80, 3), 10, np.uint8), np.full((80, 80, 3), 20, np.uint8)])
    lib.refresh([np.full((80, 80, 3), 30, np.uint8)])
    assert [int(c[0, 0, 0]) for c in lib.crops] == [10, 20, 20, 30, 30]  # the oldest left


def test_noise_patches_come_at_the_noise_ratio():
    img = np.full((200, 200, 3), 128, np.uint8)
    cfg = PatchesConfig(noise_ratio=0.3)
    rng = np.random.default_rng(0)
    noisy = [patch_object("s", img, cfg, rng).noise for _ in range(400)]
    assert 0.24 < np.mean(noisy) < 0.36
    p = next(po for po in (patch_object("s", img, cfg, rng) for _ in range(50)) if po.noise)
    assert p.rgba[..., :3][p.rgba[..., 3] > 0].std() > 50  # noise, not the flat grey scene


def test_training_patches_become_noise_at_the_noise_ratio():
    from tasks.patches import cut_patch

    crop = np.full((40, 40, 3), 128, np.uint8)
    rng = np.random.default_rng(0)
    cuts = [cut_patch(crop, PatchesConfig(noise_ratio=0.25), rng)[0] for _ in range(400)]
    noisy = [c.std() > 50 for c in cuts]
    assert 0.19 < np.mean(noisy) < 0.31
    assert all(np.array_equal(c, crop) for c, n in zip(cuts, noisy, strict=True) if not n)


def test_extras_are_made_one_batch_ahead_in_order_from_the_cpu_batch():
    from tasks.train.trainer import with_extras

    calls = []

    class Recorder:
        def batch(self, images, labels, device):
            calls.append((int(images[0, 0, 0, 0]), images.device.type))
            return int(images[0, 0, 0, 0]) * 10

    loader = [(torch.full((1, 3, 2, 2), float(i)), torch.zeros(1, 2, 2)) for i in range(4)]
    got = [(int(x[0, 0, 0, 0]), ex["r"]) for x, _, ex in with_extras(loader, {"r": Recorder()}, "cpu")]
    assert got == [(0, 0), (1, 10), (2, 20), (3, 30)]  # each batch with its own extras
    assert calls == [(0, "cpu"), (1, "cpu"), (2, "cpu"), (3, "cpu")]
    assert [(int(x[0, 0, 0, 0]), ex) for x, _, ex in with_extras(loader[:2], {}, "cpu")] == [(0, {}), (1, {})]


def test_the_provider_pastes_into_the_batch_it_is_given():
    x = torch.from_numpy(_textured(64, 96)).permute(2, 0, 1)[None].float().div(255).repeat(2, 1, 1, 1)
    y = torch.zeros(2, 64, 96, dtype=torch.long)
    prov = build_extras({"self_patches": PatchesConfig().model_dump()}, "unused", seed=0)["self_patches"]
    pasted, cand = prov.batch(x, y, "cpu")
    assert pasted.shape == x.shape and pasted.dtype == torch.float32 and cand.dtype == torch.bool
    assert torch.equal(pasted[~cand.unsqueeze(1).expand_as(x)], x[~cand.unsqueeze(1).expand_as(x)])
    assert cand.any() and not torch.equal(cand[0], cand[1])


# ---- the model --------------------------------------------------------------------------------------------------


def test_only_the_head_learns_and_the_frozen_network_stays_bitwise_the_same():
    spec = get_method("sleeg")
    cfg = method_config(tiny_method("sleeg"))
    torch.manual_seed(0)
    model = spec.build(cfg, build_segmenter("espnetv2_demo"))
    frozen_before = {k: v.clone() for k, v in model.segmenter.state_dict().items()}
    from tasks.train.optim import build_optimizer

    opt = build_optimizer(spec.param_groups(cfg, model), cfg, cfg.weight_decay)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 1e-3
    prov = build_extras(spec.extras(cfg), "unused", 0)
    x, y = torch.rand(2, 3, 64, 96), torch.randint(0, 19, (2, 64, 96))
    model.train()
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    for step in range(3):
        extras = {k: p.batch(x, y, "cpu") for k, p in prov.items()}
        parts = spec.loss(cfg, model, x, y, extras, torch.Generator(), TrainingProgress(step, 3))
        opt.zero_grad()
        parts["loss"].backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
        opt.step()
    for k, v in model.segmenter.state_dict().items():
        assert torch.equal(v, frozen_before[k]), k
    assert any(not torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())
    assert set(spec.head_state(model)) == {f"head.{k}" for k in model.head.state_dict()}
    inf = spec.infer(cfg, model.eval(), x, (32, 48))
    assert inf.score.shape == (2, 32, 48) and torch.equal(inf.pred, inf.frozen_pred)


# ---- end to end -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("outside_objects", [True, False])
def test_sleeg_trains_end_to_end_on_demo_shards(trained_eel, tmp_path, outside_objects):
    from tasks.checkpoints import load_method
    from tasks.train.trainer import train_method

    cfg = tiny_train_config("sleeg", seed=1)
    cfg = cfg.model_copy(
        update={
            "method": method_config(tiny_method("sleeg") | {"outside_objects": outside_objects}),
            "segmenter": cfg.segmenter.model_copy(update={"checkpoint": trained_eel.segmenter}),
            "max_steps": 6,
        }
    )
    res = train_method(cfg, trained_eel.version, tmp_path / "sleeg", progress=False, log=lambda m: None)
    assert res.steps == 6 and np.isfinite(res.first_loss) and np.isfinite(res.last_loss)
    history = [json.loads(line) for line in (tmp_path / "sleeg" / "history.jsonl").read_text().splitlines()]
    logged = [h for h in history if "tae" in h]
    assert logged and all(0 < h["anomaly_share"] < 1 and h["tore"] >= 0 for h in logged)
    m = json.loads((tmp_path / "sleeg" / "metrics.json").read_text())
    assert m["method"] == "sleeg" and 0 <= m["auroc"] <= 1 and m["closed_set_agreement"] == 1.0
    loaded = load_method(res.model)
    assert loaded.cfg.method.outside_objects is outside_objects and loaded.spec.name == "sleeg"
    if not outside_objects:
        return
    # `anomalyforge eval --model` scores it as its own spec does, image by image
    from tests.helpers import eval_cli, held_in_samples, reference

    datasets = [{"kind": "shards", "root": trained_eel.version, "name": "held", "val_fraction": 0.3}]
    output, metrics = eval_cli(tmp_path, datasets, "--model", str(res.model))
    assert "method, score sleeg" in output and metrics["settings"]["method"] == "sleeg"
    scores, labels = [], []
    with torch.no_grad():
        for _, img, lab in held_in_samples(trained_eel.version):
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
            scores.append(loaded.spec.infer(loaded.cfg.method, loaded.model, x, lab.shape).score[0].numpy())
            labels.append(lab)
    ref = reference(np.concatenate([s.ravel() for s in scores]), np.concatenate([y.ravel() for y in labels]))
    for k in ("auroc", "ap", "fpr95"):
        assert metrics["datasets"]["held"][k] == pytest.approx(ref[k], abs=1e-4), k


@pytest.mark.slow
def test_patch_shards_hold_only_patch_objects_tagged_in_meta_and_manifest(tiny_config, tmp_path):
    import pyarrow.parquet as pq

    from tasks.object_bank import read_object_bank
    from tasks.sample_format import SAMPLES
    from tasks.synth.pipeline import select_sources
    from tests.helpers import make_shards, shard_bytes

    cfg = tiny_config.model_copy(
        update={"objects": tiny_config.objects.model_copy(update={"patches": PatchesSourceConfig(count=6)})}
    )
    cfg = select_sources(cfg, ["patches"])
    assert cfg.objects.files == [] and cfg.objects.patches.count == 6
    summary = make_shards(cfg, tmp_path / "a")
    bank = read_object_bank(tmp_path / "a" / "objects")
    assert len(bank) == 6 and {o.record.source for o in bank} == {"patches"}
    assert all(o.record.class_name == "patch" and o.record.height_m == (0.3, 1.2) for o in bank)
    rows = pq.read_table(tmp_path / "a" / "shards" / SAMPLES).to_pylist()
    assert summary["samples"] == len(rows) > 0 and all(set(r["sources"]) == {"patches"} for r in rows)
    import tarfile

    tar = sorted((tmp_path / "a" / "shards").glob("*.tar"))[0]
    with tarfile.open(tar) as tf:
        meta = json.loads(tf.extractfile(next(m for m in tf.getmembers() if m.name.endswith("meta.json"))).read())
    assert meta["sources"] == ["patches"]
    # same config and seed: byte-identical shards
    make_shards(cfg, tmp_path / "b")
    assert shard_bytes(tmp_path / "a" / "shards") == shard_bytes(tmp_path / "b" / "shards")


def test_the_patches_source_needs_scenes():
    from tasks.patches import patch_bank_objects

    with pytest.raises(ValueError, match="needs scenes"):
        patch_bank_objects([], PatchesSourceConfig(), 0)


def test_an_unreadable_scene_is_quarantined_not_fatal(tmp_path):
    from tasks.patches import patch_bank_objects
    from tasks.scenes import SceneRef

    good = tmp_path / "good.png"
    cv2.imwrite(str(good), _textured(128, 256))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    scenes = [SceneRef("good", good, good, "labelTrainIds"), SceneRef("bad", bad, bad, "labelTrainIds")]
    objects, rejects = patch_bank_objects(scenes, PatchesSourceConfig(count=8), 0)
    assert objects and all(o.record.origin.startswith("good:") for o in objects)
    assert len(rejects) == 1 and rejects[0].item == str(bad) and rejects[0].stage == "patches"
    assert Path(rejects[0].item).name == "bad.png"
