"""Diffusion object generator: vocabulary, spec ids, offline loading of a tiny random pipeline through the
users' code path (SD and SDXL), generation, the gated object store, incremental planning."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from schemas import DiffusionConfig, MaskGateConfig
from tasks.object_bank import read_object_bank
from tasks.synth.diffusion import GeneratedStore, WeightsNotFoundError, generate_images, load_pipeline, run_batch
from tasks.synth.prompts import DEFAULT_VOCABULARY, cityscapes_class_of, load_vocabulary, plan_specs, round_specs
from tasks.synth.random_pipeline import save_random_pipeline


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return save_random_pipeline(tmp_path_factory.mktemp("pipes") / "tiny-sd", "sd")


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    return save_random_pipeline(tmp_path_factory.mktemp("pipes") / "tiny-sdxl", "sdxl")


def tiny_cfg(model, **kw) -> DiffusionConfig:
    base = dict(model=str(model), width=64, height=64, steps=2, batch_size=2, objects=["dog", "traffic cone"])
    return DiffusionConfig(**(base | {"backgrounds": ["wild"]} | kw))


def disc_masker(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    return (((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (h / 3) ** 2).astype(np.float32)


LENIENT = MaskGateConfig(min_pixels=10, min_contrast=0.0)


def test_vocabulary_covers_the_comsamy_kinds_and_has_no_cityscapes_class():
    v = load_vocabulary()
    assert len(v.objects) >= 48
    assert {o.kind for o in v.objects} == {
        "static_obstacle",
        "dynamic_obstacle",
        "animal",
        "unconventional_vehicle",
        "debris",
        "lost_cargo",
    }
    assert all(cityscapes_class_of(o.name) is None for o in v.objects)
    assert v.template.format(object="dog", background="wild") == "one dog in the wild"
    assert v.negative_prompt


def test_overlapping_classes_are_refused_with_their_names(tmp_path):
    v = yaml.safe_load(DEFAULT_VOCABULARY.read_text())
    v["objects"] += [
        {"name": "fire truck", "kind": "unconventional_vehicle", "height_m": [3, 3.5]},
        {"name": "Pedestrian", "kind": "dynamic_obstacle", "height_m": [1.5, 1.9]},
    ]
    p = tmp_path / "vocab.yaml"
    p.write_text(yaml.safe_dump(v))
    with pytest.raises(ValueError) as e:
        load_vocabulary(p)
    msg = str(e.value)
    assert str(p) in msg and "'fire truck' (Cityscapes class 'truck')" in msg and "'Pedestrian'" in msg
    assert cityscapes_class_of("mountain bike") == "bicycle" and cityscapes_class_of("tram") == "train"


def test_spec_ids_are_deterministic_and_change_with_what_changes_the_image():
    v = load_vocabulary()
    cfg = DiffusionConfig(objects=["dog"], backgrounds=["wild", "forest"])
    a, b = round_specs(v, cfg, 0, 0), round_specs(v, cfg, 0, 0)
    assert [s.object_id for s in a] == [s.object_id for s in b] and len({s.object_id for s in a}) == 2
    assert a[0].prompt == "one dog in the wild"
    for change in ({"steps": 30}, {"guidance": 5.0}, {"width": 768}, {"model": "other/model"}):
        other = round_specs(v, cfg.model_copy(update=change), 0, 0)
        assert other[0].object_id != a[0].object_id, change
    assert round_specs(v, cfg, 1, 0)[0].seed != a[0].seed  # config seed
    assert round_specs(v, cfg, 0, 1)[0].seed != a[0].seed  # seed round


def test_plan_skips_done_specs_and_incremental_runs_take_the_next_round_first():
    v = load_vocabulary()
    cfg = DiffusionConfig(objects=["dog", "cat"], backgrounds=["wild"], seeds_per_prompt=2)
    full = plan_specs(v, cfg, 0, set())
    assert len(full) == 4 and [s.round for s in full] == [0, 0, 1, 1]
    assert plan_specs(v, cfg, 0, {s.object_id for s in full}) == []
    nightly = cfg.model_copy(update={"new_objects": 3})
    got = plan_specs(v, nightly, 0, {full[0].object_id})
    assert [s.object_id for s in got] == [s.object_id for s in full[1:4]]
    # a prompt added to the vocabulary is generated before further seed rounds of the old ones
    more = cfg.model_copy(update={"objects": ["dog", "cat", "fox"], "new_objects": 1})
    assert [s.obj.name for s in plan_specs(v, more, 0, {s.object_id for s in full})] == ["fox"]
    with pytest.raises(ValueError, match="not in the vocabulary: unicorn"):
        plan_specs(v, cfg.model_copy(update={"objects": ["unicorn"]}), 0, set())


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_tiny_pipeline_loads_through_the_user_path_and_is_deterministic(family, tiny_sd, tiny_sdxl):
    model = tiny_sd if family == "sd" else tiny_sdxl
    cfg = tiny_cfg(model)
    lp = load_pipeline(cfg)
    assert lp.family == ("StableDiffusionPipeline" if family == "sd" else "StableDiffusionXLPipeline")
    assert type(lp.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert lp.pipe.scheduler.config.algorithm_type == "dpmsolver++"
    specs = plan_specs(load_vocabulary(), cfg, 0, set())
    imgs = generate_images(lp, specs, cfg)
    assert [i.shape for i in imgs] == [(64, 64, 3)] * 2 and imgs[0].dtype == np.uint8
    assert not np.array_equal(imgs[0], imgs[1])  # different seeds
    # an image depends on its spec alone, not on the batch it was generated in
    alone = generate_images(lp, specs[1:], cfg)[0]
    assert np.abs(alone.astype(int) - imgs[1].astype(int)).max() <= 2


def test_missing_weights_fail_fast_naming_model_and_place(tmp_path):
    with pytest.raises(WeightsNotFoundError) as e:
        load_pipeline(DiffusionConfig(model="someone/no-such-model", cache_dir=tmp_path / "hf"))
    msg = str(e.value)
    assert "'someone/no-such-model'" in msg and str(tmp_path / "hf") in msg and "hf download" in msg
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError, match="local directory"):
        load_pipeline(DiffusionConfig(model=str(empty)))


def test_batches_go_through_the_gate_into_the_store_and_are_never_redone(tmp_path, tiny_sd):
    cfg = tiny_cfg(tiny_sd)
    lp = load_pipeline(cfg)
    v = load_vocabulary()
    store = GeneratedStore(tmp_path / "store")
    specs = plan_specs(v, cfg, 0, store.done_ids())
    rec = run_batch(lp, specs, cfg, disc_masker, LENIENT, 64, store)
    assert len(rec["objects"]) == 2 and rec["rejects"] == [] and (store.root / rec["shard"]).is_file()
    assert (store.root / "previews" / f"{rec['batch']}.jpg").is_file()
    # a gate that refuses everything: rejects are recorded with reasons and count as done too
    strict = MaskGateConfig(min_pixels=10**6)
    cfg2 = cfg.model_copy(update={"seeds_per_prompt": 2})
    rest = plan_specs(v, cfg2, 0, store.done_ids())
    assert [s.round for s in rest] == [1, 1]
    rec2 = run_batch(lp, rest, cfg2, disc_masker, strict, 64, store)
    assert rec2["shard"] is None and {r["reason"] for r in rec2["rejects"]} == {"tiny_mask"}
    assert plan_specs(v, cfg2, 0, store.done_ids()) == []
    store.write_manifest()
    bank = read_object_bank(store.root)
    assert sorted(o.record.object_id for o in bank) == sorted(s.object_id for s in specs)
    dog = next(o.record for o in bank if o.record.class_name == "dog")
    assert dog.source == "diffusion" and dog.prompt == "one dog in the wild" and dog.height_m == (0.4, 0.9)


@pytest.mark.slow
def test_diffusion_benchmark_runs_on_cpu_at_tiny_size():
    import subprocess
    import sys

    from tests.helpers import ROOT

    res = subprocess.run(
        [sys.executable, "bench/diffusion_throughput.py", "--size", "tiny", "--repeats", "1", "--steps", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = {line.split(":")[0].strip(): line for line in res.stdout.splitlines() if "images/s" in line}
    assert set(lines) == {"plain diffusers", "ours"} and "% of peak" in lines["ours"]
    assert "speed-up ours / plain:" in res.stdout


def test_every_registered_scheduler_replaces_the_pipelines_and_others_are_refused(tiny_sd):
    from tasks.synth.diffusion import SCHEDULERS

    expected = {
        "dpmpp_2m": ("DPMSolverMultistepScheduler", False),
        "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", True),
        "euler_a": ("EulerAncestralDiscreteScheduler", None),
    }
    for name, (cls, karras) in expected.items():
        lp = load_pipeline(tiny_cfg(tiny_sd).model_copy(update={"scheduler": name}))
        assert type(lp.pipe.scheduler).__name__ == cls
        if karras is not None:
            assert lp.pipe.scheduler.config.use_karras_sigmas is karras
    assert set(SCHEDULERS) == {*expected, "pipeline"}
    with pytest.raises(ValueError, match="unknown scheduler 'ddim'; registered: dpmpp_2m"):
        tiny_cfg(tiny_sd).model_validate(tiny_cfg(tiny_sd).model_dump() | {"scheduler": "ddim"})
