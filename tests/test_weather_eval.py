"""The per-condition evaluation: an every-condition split synthesized and read back with its tags, metrics per
condition and clear-vs-adverse, the charts, the weather study of `make compare` (two training versions), and the
training filter on the objects' recorded visibility."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner

from schemas import WeatherConfig
from tasks.conditions import conditions
from tasks.eval.benchmarks import load_benchmark
from tasks.eval.compare import compare_rows, study_rows, write_compare
from tasks.eval.report import write_eval_report
from tasks.scoring import EvalSample, ScoredImage, evaluate_samples
from tasks.synth.validate import validate_shard_set
from tasks.versions import resolve_version
from tests.helpers import make_shards, tiny_method, tiny_train_config


def _sample(k: int, condition: str | None, rng) -> EvalSample:
    label = np.zeros((8, 8), np.uint8)
    label[2:5, 2:5] = 1
    image = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    return EvalSample(f"img{k}", image, label, condition)


def _scorer(seed: int):
    rng = np.random.default_rng(seed)

    def score(image):  # an imperfect detector: the anomaly scores higher on average, with noise
        s = rng.normal(0, 1, image.shape[:2]).astype(np.float32)
        s[2:5, 2:5] += 1.5
        return ScoredImage(s)

    return score


def test_metrics_per_condition_and_adverse_pool_match_sklearn():
    rng = np.random.default_rng(0)
    tags = ["clear", "fog", "night", "clear", "fog", "night"]
    samples = [_sample(k, c, rng) for k, c in enumerate(tags)]
    # replay the scorer to know every score map
    scorer, replay = _scorer(1), _scorer(1)
    scores = [replay(s.image).score for s in samples]
    res = evaluate_samples(scorer, samples, "tagged", progress=False)
    conds = res["metrics"]["conditions"]
    assert list(conds) == ["clear", "fog", "night", "adverse"]  # registry order, the pool last

    def ap(idx):
        y = np.concatenate([samples[i].label.ravel() for i in idx])
        return average_precision_score(y, np.concatenate([scores[i].ravel() for i in idx]))

    assert conds["fog"]["ap"] == pytest.approx(ap([1, 4]), abs=1e-4)
    assert conds["clear"]["ap"] == pytest.approx(ap([0, 3]), abs=1e-4)
    assert conds["adverse"]["ap"] == pytest.approx(ap([1, 2, 4, 5]), abs=1e-4)
    assert res["metrics"]["ap"] == pytest.approx(ap(range(6)), abs=1e-4)
    assert [conds[c]["images"] for c in ("clear", "fog", "night", "adverse")] == [2, 2, 2, 4]


def test_component_metrics_and_miou_per_condition_are_those_of_its_images():
    from tasks.segmentation_metrics import DEFAULT_SIZES, ComponentMetrics, ConfusionMatrix

    rng = np.random.default_rng(5)
    samples, scores = [], []
    for k, cond in enumerate(["clear", "fog", "clear", "fog"]):
        label = np.zeros((48, 48), np.uint8)
        label[10:22, 10:22] = 1
        train = np.where(label == 1, 254, rng.integers(0, 3, label.shape)).astype(np.uint8)
        samples.append(EvalSample(f"i{k}", np.zeros((48, 48, 3), np.uint8), label, cond, train))
        score = rng.normal(0, 1, label.shape).astype(np.float32)
        score[8:20, 12:24] += 2.5 if cond == "clear" else 0.8  # fog: a weaker, shifted detection
        scores.append(score)
    preds = [rng.integers(0, 3, (48, 48)).astype(np.uint8) for _ in samples]
    it = iter(zip(scores, preds, strict=True))
    res = evaluate_samples(lambda img: ScoredImage(*next(it)), samples, "c", progress=False, track="obstacle")
    m = res["metrics"]
    for cond, idx in (("clear", [0, 2]), ("fog", [1, 3])):
        comps = ComponentMetrics(m["f1_threshold"], *DEFAULT_SIZES["obstacle"])
        conf = ConfusionMatrix(19)
        for i in idx:
            comps.update(scores[i], samples[i].label)
            conf.update(preds[i], np.where(samples[i].train_label == 254, 255, samples[i].train_label).astype(np.uint8))
        want = comps.compute()
        got = m["conditions"][cond]
        assert got["f1_components"] == pytest.approx(want["f1_components"]) and got["images"] == 2
        assert got["siou"] == pytest.approx(want["siou"])
        assert got["miou"] == pytest.approx(float(conf.compute()["miou"]))
    assert m["conditions"]["clear"]["ap"] > m["conditions"]["fog"]["ap"]


def test_one_condition_or_none_gives_no_condition_rows_and_no_adverse_without_clear():
    rng = np.random.default_rng(0)
    only_clear = evaluate_samples(_scorer(0), [_sample(k, "clear", rng) for k in range(3)], "c", progress=False)
    assert only_clear["metrics"]["conditions"] == {}
    untagged = evaluate_samples(_scorer(0), [_sample(k, None, rng) for k in range(3)], "u", progress=False)
    assert untagged["metrics"]["conditions"] == {}
    no_clear = [_sample(k, c, rng) for k, c in enumerate(["fog", "rain", "fog"])]
    res = evaluate_samples(_scorer(0), no_clear, "n", progress=False)
    assert set(res["metrics"]["conditions"]) == {"fog", "rain"}


@pytest.fixture(scope="module")
def every_condition_split(tmp_path_factory):
    """A tiny every-condition evaluation split: 2 composites × 7 conditions."""
    from tests.helpers import tiny_synth_config

    root = tmp_path_factory.mktemp("eval_split")
    cfg = tiny_synth_config(root)
    cfg.num_samples = 2
    cfg.seed = 11
    cfg.weather = WeatherConfig(mode="every", severity=(0.7, 0.7))
    make_shards(cfg, root / "run")
    return cfg, resolve_version(root / "run" / "shards")


def test_every_condition_split_holds_each_composite_in_every_condition(every_condition_split):
    cfg, version = every_condition_split
    checked, problems = validate_shard_set(version)
    assert problems == [] and checked == 2 * len(conditions("weather"))
    split = load_benchmark("shards", version, val_fraction=0.0)
    samples = list(split.samples())
    assert len(samples) == 14
    by_cond = {c: [s for s in samples if s.condition == c] for c in conditions("weather")}
    assert all(len(v) == 2 for v in by_cond.values())
    # one composite in every condition: the same labels, different pixels
    first = [s for s in samples if s.item_id.startswith("0000000_")]
    assert len(first) == 7 and {s.condition for s in first} == set(conditions("weather"))
    assert all(np.array_equal(s.label, first[0].label) for s in first)
    clear = next(s for s in first if s.condition == "clear").image.astype(int)
    for s in first:
        if s.condition != "clear":
            assert np.abs(s.image.astype(int) - clear).mean() > 2, s.condition
    summary = json.loads(open(f"{version}/dataset.json").read())
    assert summary["samples"] == 14 and summary["conditions"] == dict.fromkeys(conditions("weather"), 2)


def test_eval_report_has_rows_and_a_chart_per_condition(every_condition_split, tmp_path):
    _, version = every_condition_split
    split = load_benchmark("shards", version, name="conds", val_fraction=0.0)
    res = evaluate_samples(
        lambda img: ScoredImage(img.mean(axis=2).astype(np.float32)), split.samples(), "conds", progress=False
    )
    files = write_eval_report([res], tmp_path, {"score": "brightness", "model": "toy"})
    rows = json.loads(files["metrics"].read_text())["table"]
    assert [r["condition"] for r in rows] == ["all", *conditions("weather"), "adverse"]
    assert "![per condition](conditions.png)" in files["report"].read_text()
    with Image.open(files["conditions"]) as im:
        assert np.asarray(im.convert("L")).std() > 10


def test_compare_rows_carry_conditions_and_the_study_differences(tmp_path):
    def result(ap_fog, ap_clear):
        m = {"ap": 0.5, "fpr95": 0.4, "auroc": 0.8, "images": 4}
        m["conditions"] = {
            "clear": {"ap": ap_clear, "fpr95": 0.3, "auroc": 0.9, "images": 2},
            "fog": {"ap": ap_fog, "fpr95": 0.6, "auroc": 0.7, "images": 2},
        }
        return [{"name": "conds", "metrics": m}]

    base = compare_rows({"model": "eel", "kind": "trained", "train": "demo", "steps": 2}, result(0.2, 0.6))
    other = compare_rows({"model": "eel", "kind": "trained", "train": "demo-weather", "steps": 2}, result(0.35, 0.55))
    assert [r["condition"] for r in base] == ["all", "clear", "fog"]
    assert base[2]["ap"] == 20.0 and base[2]["images"] == 2
    study = study_rows(base + other, "demo")
    fog = next(r for r in study if r["condition"] == "fog")
    assert fog["d_ap"] == 15.0 and fog["d_fpr95"] == 0.0 and fog["ap_base"] == 20.0
    assert next(r for r in study if r["condition"] == "clear")["d_ap"] == -5.0
    files, rows = write_compare(base + other, {"name": "t"}, tmp_path)
    assert rows == study and files["study"].is_file() and files["conditions"].is_file()
    md = files["table"].read_text()
    assert "| eel | +0.0 / +0.0 | -5.0 / +0.0 | +15.0 / +0.0 |" in md  # all, clear, fog: ΔAP / ΔFPR95
    assert "| eel | demo | 60.0 / 30.0 | 20.0 / 60.0 |" in md  # the per-condition table: clear, fog


@pytest.mark.slow
def test_compare_trains_on_two_versions_and_reports_the_per_condition_difference(
    trained_eel, every_condition_split, tmp_path
):
    from flows.cli import app
    from tests.helpers import tiny_synth_config

    weather_cfg = tiny_synth_config(tmp_path)
    weather_cfg.num_samples = 12
    weather_cfg.weather = WeatherConfig(clear=0.3)
    make_shards(weather_cfg, tmp_path / "wet")
    wet = resolve_version(tmp_path / "wet" / "shards")
    _, eval_split = every_condition_split
    cfg = {
        "name": "study",
        "max_steps": 2,
        "methods": ["eel"],
        "method_overrides": {"eel": tiny_method("eel")},
        "post_hoc": ["energy"],
        "held_in": False,
        "benchmarks": [{"kind": "shards", "root": eval_split, "val_fraction": 0, "name": "conds"}],
        "train": tiny_train_config("eel").model_dump(mode="json", exclude={"method", "max_steps"})
        | {"segmenter": {"name": "espnetv2_demo", "checkpoint": str(trained_eel.segmenter)}},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cmp"
    args = ["compare", "--config", str(tmp_path / "study.yaml"), "--shards", trained_eel.version]
    res = CliRunner().invoke(app, [*args, "--shards", wet, "--out-dir", str(out)])
    assert res.exit_code == 0, res.output[-3000:] + repr(res.exception)
    rows = list(csv.DictReader((out / "compare.csv").open()))
    trained = [r for r in rows if r["kind"] == "trained"]
    labels = {r["train"] for r in trained}
    assert len(labels) == 2 and {r["condition"] for r in trained} == {"all", *conditions("weather"), "adverse"}
    study = list(csv.DictReader((out / "study.csv").open()))
    assert {r["condition"] for r in study} == {"all", *conditions("weather"), "adverse"}
    for r in study:  # every difference is the other model's value minus the base model's
        assert float(r["d_ap"]) == pytest.approx(float(r["ap"]) - float(r["ap_base"]), abs=0.011)
    assert (out / "models").is_dir() and len(list((out / "models").glob("*/eel/model.pt"))) == 2
    md = (out / "compare.md").read_text()
    assert "the difference per condition" in md and "![per-condition difference](study.png)" in md


def test_objects_the_weather_hid_become_void_in_training_labels():
    from tasks.labels import ANOMALY, VOID
    from tasks.shardset import void_hidden_objects

    label = np.zeros((10, 20), np.uint8)
    label[2:5, 2:5] = ANOMALY
    label[6:9, 12:16] = ANOMALY
    meta = {
        "objects": [
            {"box": [2, 2, 5, 5], "visibility": 1.5, "visibility_clear": 12.0},  # hidden by the weather
            {"box": [12, 6, 16, 9], "visibility": 20.0, "visibility_clear": 25.0},  # still visible
            {"box": [0, 0, 1, 1], "visibility": None, "visibility_clear": None},  # a run without weather
        ]
    }
    out = void_hidden_objects(label, meta, min_visibility=3.0)
    assert (out[2:5, 2:5] == VOID).all() and (out[6:9, 12:16] == ANOMALY).all()
    assert np.count_nonzero(out == VOID) == 9 and (label[2:5, 2:5] == ANOMALY).all()  # the input is not changed
    hidden_to_zero = {"objects": [{"box": [2, 2, 5, 5], "visibility": 0.0, "visibility_clear": 4.0}]}
    assert void_hidden_objects(label, hidden_to_zero, 0.5)[3, 3] == VOID
    faint_already = {"objects": [{"box": [2, 2, 5, 5], "visibility": 1.0, "visibility_clear": 1.0}]}  # clear sample
    assert void_hidden_objects(label, faint_already, 3.0) is label  # the weather hid nothing: kept
    assert void_hidden_objects(label, meta, min_visibility=1.0) is label  # nothing below: the same array


def test_training_stream_voids_hidden_objects_of_a_weather_version(every_condition_split):
    import tarfile

    from tasks.labels import ANOMALY, VOID
    from tasks.sample_format import read_tar_samples
    from tasks.shardset import decode_sample, shard_urls

    _, version = every_condition_split
    samples = {}
    for url in shard_urls(version):
        with tarfile.open(url) as tar:
            samples |= read_tar_samples(tar, "shard")[0]
    metas = {k: json.loads(p["meta.json"]) for k, p in samples.items()}
    assert all(o["visibility"] is not None for m in metas.values() for o in m["objects"])
    # a rendering whose every object lost contrast to the weather (night, at this severity)
    key = next(k for k, m in metas.items() if all(o["visibility"] < o["visibility_clear"] for o in m["objects"]))
    raw = {"__key__": key, **samples[key]}
    kept = decode_sample(raw)
    assert kept["condition"] == metas[key]["condition"] != "clear" and (kept["label"] == ANOMALY).any()
    hidden = decode_sample(raw, min_visibility=1e9)  # every object below: no anomaly pixel left
    assert not (hidden["label"] == ANOMALY).any()
    assert np.array_equal(hidden["label"] == VOID, (kept["label"] == VOID) | (kept["label"] == ANOMALY))
    clear_key = next(k for k, m in metas.items() if m["condition"] == "clear")
    clear = decode_sample({"__key__": clear_key, **samples[clear_key]}, min_visibility=1e9)
    assert (clear["label"] == ANOMALY).any()  # clear samples lose nothing


def test_renderings_of_one_composite_fall_on_one_side_of_the_split(every_condition_split):
    from tasks.sample_format import composite_key
    from tasks.shardset import in_validation

    _, version = every_condition_split
    split = load_benchmark("shards", version, val_fraction=0.0)
    keys = [s.item_id for s in split.samples()]
    assert all("__" in k for k in keys) and len({composite_key(k) for k in keys}) == 2
    for fraction in (0.3, 0.5, 0.7):
        sides = {}
        for k in keys:
            sides.setdefault(composite_key(k), set()).add(in_validation(k, fraction))
        assert all(len(v) == 1 for v in sides.values())


def test_a_run_without_weather_writes_the_meta_of_the_runs_before_it(tmp_path):
    from tests.helpers import tiny_synth_config

    cfg = tiny_synth_config(tmp_path)
    cfg.num_samples = 2
    make_shards(cfg, tmp_path / "run")
    version = resolve_version(tmp_path / "run" / "shards")
    import tarfile

    from tasks.sample_format import read_tar_samples
    from tasks.shardset import shard_urls

    with tarfile.open(shard_urls(version)[0]) as tar:
        samples, _ = read_tar_samples(tar, "shard")
    for parts in samples.values():
        meta = json.loads(parts["meta.json"])
        assert "condition" not in meta and "weather" not in meta
        assert all("visibility" not in o for o in meta["objects"])


def test_weather_deployments_point_at_the_weather_profiles():
    from pathlib import Path

    from schemas import load_compare_config, load_config

    deployments = {d["name"]: d for d in yaml.safe_load(Path("prefect.yaml").read_text())["deployments"]}
    for name, mode in (("demo-weather", "random"), ("weather-eval", "every")):
        cfg = load_config(deployments[name]["parameters"]["config_path"])
        assert deployments[name]["entrypoint"] == "flows/synth.py:synth" and cfg.weather.mode == mode
    study = deployments["weather-study"]["parameters"]
    assert study["shards"] == ["runs/demo", deployments["demo-weather"]["parameters"]["run_dir"]]
    evaluated = [b.root for b in load_compare_config(study["config_path"]).benchmarks]
    assert Path(deployments["weather-eval"]["parameters"]["run_dir"]) in map(Path, evaluated)
