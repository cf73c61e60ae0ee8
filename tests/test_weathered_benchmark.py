"""A real benchmark under every condition (``tasks/eval/weathered.py``, ``tasks/corruptions.py``)."""

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from helpers import shared_or_skip

from models.segmenters import build_segmenter
from schemas import WeatheredBenchmarkConfig
from tasks.conditions import condition_order, conditions, families
from tasks.eval.benchmarks import load_benchmark
from tasks.eval.weathered import MANIFEST, WeatheredBenchmarkError, scene_layout, weather_benchmark
from tasks.labels import EVAL_VOID, train_ids
from tasks.scoring import ScoredImage, condition_groups, evaluate_samples
from tasks.weather import Frame, render

ROAD, SKY, BUILDING = train_ids(["road", "sky", "building"])


def _benchmark(root, n=2, h=64, w=128):
    """``n`` frames in the road_anomaly_pre layout with an anomaly box and a void band."""
    rng = np.random.default_rng(0)
    (root / "original").mkdir(parents=True)
    (root / "labels").mkdir()
    for k in range(n):
        img = cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (0, 0), 2)
        lab = np.zeros((h, w), np.uint8)
        lab[40:52, 20 + 10 * k : 44 + 10 * k] = 1
        lab[:6] = 255
        cv2.imwrite(str(root / "original" / f"f{k}.jpg"), img)
        cv2.imwrite(str(root / "labels" / f"f{k}.png"), lab)
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weathered")
    root = _benchmark(tmp / "ra")
    torch.manual_seed(0)
    ckpt = tmp / "espnetv2_demo.pt"
    torch.save(build_segmenter("espnetv2_demo").net.state_dict(), ckpt)
    return tmp, root, ckpt


def _config(tmp, root, ckpt, out="out", **kw):
    base = {
        "source": {"kind": "road_anomaly_pre", "root": str(root)},
        "out": str(tmp / out),
        "segmenter": {"name": "espnetv2_demo", "checkpoint": str(ckpt)},
        "conditions": ["fog", "night", "c_gaussian_noise", "c_fog"],
        "severities": {"weather": [0.5, 1.0], "corruption": [1, 5]},
    }
    return WeatheredBenchmarkConfig(**(base | kw))


@pytest.fixture(scope="module")
def weathered(source):
    tmp, root, ckpt = source
    cfg = _config(tmp, root, ckpt)
    return cfg, weather_benchmark(cfg, progress=False)


def _rows(out):
    with open(out / MANIFEST, newline="") as f:
        return list(csv.DictReader(f))


def test_every_image_in_every_condition_and_severity_with_the_labels_untouched(source, weathered):
    tmp, root, _ = source
    cfg, summary = weathered
    rows = _rows(cfg.out)
    assert summary["images"] == len(rows) == 2 * (1 + 4 * 2)
    assert [(r["condition"], r["severity"]) for r in rows[:9]] == [
        ("clear", ""),
        ("fog", "0.5"),
        ("fog", "1"),
        ("night", "0.5"),
        ("night", "1"),
        ("c_gaussian_noise", "1"),
        ("c_gaussian_noise", "5"),
        ("c_fog", "1"),
        ("c_fog", "5"),
    ]
    src = {s.item_id: s for s in load_benchmark("road_anomaly_pre", root).samples()}
    out = list(load_benchmark("folder", cfg.out).samples())
    assert len(out) == len(rows)
    for s in out:
        origin = src[s.item_id.split("__")[0]]
        assert np.array_equal(s.label, origin.label)  # labels, void pixels included, as the source's
        assert (s.label == EVAL_VOID).sum() == 6 * 128
        if s.condition == "clear":
            assert np.array_equal(s.image, origin.image)
        else:
            assert np.abs(s.image.astype(int) - origin.image.astype(int)).mean() > 1, s.condition
    # each row records what was drawn for it
    fog = next(r for r in rows if r["condition"] == "fog" and r["severity"] == "1")
    params = json.loads(fog["params"])
    assert params["beta"] == pytest.approx(0.06) and params["visibility_m"] == pytest.approx(3.912 / 0.06, rel=1e-4)
    assert json.loads(next(r for r in rows if r["condition"] == "c_fog")["params"])["corruption"] == "fog"
    for fam in ("weather", "corruption"):
        sheet = cv2.imread(summary["sheets"][fam])
        assert sheet is not None and sheet.shape[0] > 2 * 22  # two severity rows


def test_conditions_and_severities_round_trip_into_the_per_condition_rows(weathered):
    cfg, _ = weathered
    samples = list(load_benchmark("folder", cfg.out).samples())
    res = evaluate_samples(lambda img: ScoredImage(img.mean(axis=2).astype(np.float32)), samples, "w", progress=False)
    rows = res["metrics"]["conditions"]
    expected = ["clear", "fog", "fog@0.5", "fog@1", "night", "night@0.5", "night@1", "c_gaussian_noise"]
    assert list(rows)[: len(expected)] == expected
    assert {"c_gaussian_noise@1", "c_gaussian_noise@5", "c_fog", "c_fog@1", "c_fog@5", "adverse"} <= set(rows)
    assert rows["fog"]["images"] == 4 and rows["fog@1"]["images"] == 2 and rows["adverse"]["images"] == 16
    assert rows["clear"]["images"] == 2
    assert condition_groups("fog@0.5") == ("fog@0.5", "fog", "adverse") and condition_groups("clear") == ("clear",)
    assert sorted(["fog@1", "clear", "fog", "fog@0.5"], key=condition_order) == ["clear", "fog", "fog@0.5", "fog@1"]


def test_same_seed_same_bytes_and_a_stopped_run_resumes(source, weathered):
    tmp, root, ckpt = source
    cfg, _ = weathered
    again = weather_benchmark(_config(tmp, root, ckpt, out="again"), progress=False)
    first = {p.relative_to(cfg.out): p.read_bytes() for p in cfg.out.rglob("*.png")}
    second = {p.relative_to(tmp / "again"): p.read_bytes() for p in (tmp / "again").rglob("*.png")}
    assert first.keys() == second.keys() and all(first[k] == second[k] for k in first)
    assert (cfg.out / MANIFEST).read_bytes() == (tmp / "again" / MANIFEST).read_bytes()
    other = weather_benchmark(_config(tmp, root, ckpt, out="seed1", seed=1), progress=False)
    noisy = "images/f0__c_gaussian_noise_s5.png"
    assert (cfg.out / noisy).read_bytes() != (tmp / "seed1" / noisy).read_bytes()
    assert other["images"] == again["images"]
    # a stop after the first image: the manifest is not there yet, the rerun finishes the same benchmark
    (tmp / "again" / MANIFEST).unlink()
    (tmp / "again" / ".done" / "f1.json").unlink()
    (tmp / "again" / "images" / "f1__night_s1.png").unlink()
    weather_benchmark(_config(tmp, root, ckpt, out="again"), progress=False)
    assert (tmp / "again" / "images" / "f1__night_s1.png").read_bytes() == (
        cfg.out / "images/f1__night_s1.png"
    ).read_bytes()
    assert (cfg.out / MANIFEST).read_bytes() == (tmp / "again" / MANIFEST).read_bytes()
    # the same folder with another config is refused
    with pytest.raises(WeatheredBenchmarkError, match="another config"):
        weather_benchmark(_config(tmp, root, ckpt, out="again", seed=2), progress=False)


def test_an_image_without_ground_still_renders_and_the_manifest_says_so(source):
    tmp, root, ckpt = source
    # every pixel below a confidence of 1: the pseudo labels are all void, no ground and no sky
    summary = weather_benchmark(_config(tmp, root, ckpt, out="void", threshold=1.0), progress=False)
    rows = _rows(tmp / "void")
    assert {r["layout"] for r in rows} == {"no_ground"} and {r["horizon_source"] for r in rows} == {"default"}
    assert summary["no_ground"] == ["f0", "f1"]
    assert all(float(r["ground_fraction"]) == 0 for r in rows)
    fog = cv2.imread(str(tmp / "void" / "images" / "f0__fog_s1.png"))
    clear = cv2.imread(str(tmp / "void" / "images" / "f0__clear.png"))
    diff = np.abs(fog.astype(int) - clear.astype(int)).mean(axis=(1, 2))
    assert diff[:30].mean() > diff[-10:].mean()  # far above the mid-height horizon, near at the bottom rows


def test_the_layout_of_a_hand_made_street():
    label = np.full((100, 200), BUILDING, np.uint8)
    label[:30] = SKY
    label[60:] = ROAD
    cfg = WeatheredBenchmarkConfig(
        source={"kind": "road_anomaly_pre", "root": "x"}, out="y", segmenter={"name": "espnetv2", "checkpoint": "z"}
    )
    layout = scene_layout(label, cfg)
    assert layout.name == "ground" and layout.horizon_source == "road" and layout.frame.horizon == 60
    assert layout.ground_fraction == 0.4 and layout.frame.focal == pytest.approx(1.105 * 200)


def test_the_layout_of_a_real_frame_from_its_pseudo_labels():
    frames = shared_or_skip("anomaly_benchmarks", "fishyscapes_static_val")
    ckpt = shared_or_skip("espnetv2", "espnetv2_s_2.0_city_1024x512.pth")
    from schemas import SegmenterConfig
    from tasks.checkpoints import frozen_segmenter
    from tasks.scenes.pseudo_labels import confident_labels

    ds = load_benchmark("fishyscapes", frames)
    image, _ = ds.load(ds.items[0])
    seg = frozen_segmenter(SegmenterConfig(name="espnetv2", checkpoint=ckpt, options={"s": 2.0}))
    small = cv2.resize(image, (1024, 512), interpolation=cv2.INTER_AREA)
    with torch.inference_mode():
        logits = seg(torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255)
    pseudo, _ = confident_labels(logits, (image.shape[1], image.shape[0]), 0.5)
    cfg = WeatheredBenchmarkConfig(
        source={"kind": "fishyscapes", "root": str(frames)}, out="y", segmenter={"name": "espnetv2", "checkpoint": ckpt}
    )
    layout = scene_layout(pseudo, cfg)
    h = image.shape[0]
    assert 0 < layout.frame.horizon < h and layout.name == "ground"
    road = pseudo == ROAD
    rows = np.flatnonzero(road.any(axis=1))
    assert rows.size and np.median(np.flatnonzero(road)[::97] // image.shape[1]) > layout.frame.horizon
    assert road[: int(layout.frame.horizon) - 10].sum() < 0.01 * road.sum()  # ground lies below the horizon


def test_severities_and_names_are_checked():
    base = {"source": {"kind": "road_anomaly_pre", "root": "x"}, "out": "y"}
    seg = {"segmenter": {"name": "espnetv2", "checkpoint": "z"}}
    with pytest.raises(ValueError, match=r"severities.corruption: \[0.5\] not one of \[1, 2, 3, 4, 5\]"):
        WeatheredBenchmarkConfig(**base, **seg, severities={"weather": [0.5], "corruption": [0.5]})
    with pytest.raises(ValueError, match="unknown family 'rain'"):
        WeatheredBenchmarkConfig(**base, **seg, families=["rain"])
    with pytest.raises(ValueError, match="shards are synthetic"):
        WeatheredBenchmarkConfig(**(base | {"source": {"kind": "shards", "root": "x"}}), **seg)
    with pytest.raises(ValueError, match="has severity levels"):
        from schemas.synth import WeatherConfig

        WeatherConfig(conditions={"c_fog": 1.0})
    assert families()["corruption"][0] == "c_gaussian_noise" and len(conditions("corruption")) == 20


def test_a_manifest_with_a_bad_severity_is_named(tmp_path):
    _benchmark(tmp_path / "ra", n=1)
    (tmp_path / "m").mkdir()
    rows = "image,label,condition,severity\n../ra/original/f0.jpg,../ra/labels/f0.png,c_fog,7\n"
    (tmp_path / "m" / "manifest.csv").write_text(rows)
    with pytest.raises(ValueError, match=r"manifest.csv: ../ra/original/f0.jpg: severity '7' of c_fog is not one of"):
        load_benchmark("folder", tmp_path / "m")
    (tmp_path / "m" / "manifest.csv").write_text(rows.replace("c_fog,7", "fog,1.5"))
    with pytest.raises(ValueError, match=r"severity '1.5' of fog is not in \[0, 1\]"):
        load_benchmark("folder", tmp_path / "m")


@pytest.mark.slow
def test_both_families_render_at_every_severity_on_a_full_size_frame():
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur((rng.random((1024, 2048, 3)) * 255).astype(np.uint8), (0, 0), 3)
    label = np.full((1024, 2048), SKY, np.uint8)
    label[500:] = ROAD
    frame = Frame(label, 480.0, 1.22, 1.105 * 2048)
    for fam, names in families().items():
        levels = (0.0, 0.5, 1.0) if fam == "weather" else (1, 2, 3, 4, 5)
        for name in names:
            for sev in levels:
                out, params = render(name, image, frame, sev, np.random.default_rng(1))
                assert out.shape == image.shape and out.dtype == np.uint8, (name, sev)
                if fam == "corruption" and sev == 5:
                    assert np.abs(out.astype(int) - image.astype(int)).mean() > 1, name
    same = render("c_shot_noise", image, frame, 3, np.random.default_rng(7))[0]
    assert np.array_equal(same, render("c_shot_noise", image, frame, 3, np.random.default_rng(7))[0])


def _row(model, cond, ap, fpr, kind="trained"):
    return {"model": model, "kind": kind, "train": "v1", "dataset": "ra-w", "condition": cond, "ap": ap, "fpr95": fpr}


def test_the_robustness_summary_ranks_by_the_share_of_clear_ap_kept(tmp_path):
    from tasks.eval.compare import robustness_rows, write_compare

    rows = [
        _row("eel", "all", 50.0, 20.0),
        _row("eel", "clear", 60.0, 10.0),
        _row("eel", "fog", 30.0, 30.0),
        _row("eel", "fog@1", 20.0, 40.0),  # a severity row: not a condition of the summary
        _row("eel", "night", 45.0, 20.0),
        _row("eel", "c_fog", 54.0, 12.0),
        _row("eel", "adverse", 40.0, 25.0),
        _row("msp", "clear", 40.0, 30.0, "post-hoc"),
        _row("msp", "fog", 36.0, 35.0, "post-hoc"),
        _row("msp", "night", 32.0, 45.0, "post-hoc"),
    ]
    summary = robustness_rows(rows)
    assert [r["family"] for r in summary] == ["weather", "weather", "corruption"]  # the registry's family order
    weather = [r for r in summary if r["family"] == "weather"]
    # eel keeps (30 + 45) / 2 / 60 = 0.625 of its clear AP, msp (36 + 32) / 2 / 40 = 0.85: msp ranks first
    assert [(r["model"], r["adverse_ap"], r["ap_ratio"]) for r in weather] == [
        ("msp", 34.0, 0.85),
        ("eel", 37.5, 0.625),
    ]
    assert weather[1]["adverse_fpr95"] == 25.0 and weather[1]["clear_fpr95"] == 10.0
    assert weather[1]["conditions"] == {"fog": (30.0, 30.0), "night": (45.0, 20.0)}
    corruption = [r for r in summary if r["family"] == "corruption"]
    assert [(r["model"], r["ap_ratio"]) for r in corruption] == [("eel", 0.9)]
    files, _ = write_compare(rows, {"name": "t"}, tmp_path)
    md = files["table"].read_text()
    assert "## Robustness: clear vs every condition" in md and "| msp | 40.0 | 30.0 | 34.0 | 40.0 | 0.85 |" in md
    assert "![robustness, weather](robustness_weather.png)" in md
    for fam in ("weather", "corruption"):
        assert cv2.imread(str(files[f"robustness_{fam}"])) is not None
    assert files["robustness"].read_text().splitlines()[0].startswith("dataset,family,model")


@pytest.mark.slow
def test_one_command_weathers_a_road_anomaly_layout_and_eval_reports_it_per_condition(source, tmp_path):
    from helpers import eval_cli
    from typer.testing import CliRunner

    from flows.cli import app

    _, root, ckpt = source
    out = tmp_path / "weathered"
    args = ["weather-benchmark", "--kind", "road_anomaly_pre", "--root", str(root), "--out", str(out)]
    args += [
        "--checkpoint",
        str(ckpt),
        "--set",
        "segmenter={name: espnetv2_demo}",
        "--set",
        "conditions=[rain,c_contrast]",
    ]
    args += ["--set", "severities={weather: [1.0], corruption: [2, 4]}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output[-3000:] + repr(res.exception)
    assert "2 images -> 8" in res.output and f"manifest: {out / MANIFEST}" in res.output
    assert f"evaluate it as: {{kind: folder, root: {out}}}" in res.output
    output, metrics = eval_cli(
        tmp_path,
        [{"kind": "folder", "root": str(out), "name": "ra-w"}],
        "--model",
        str(ckpt),
        "--segmenter",
        "espnetv2_demo",
    )
    conds = metrics["datasets"]["ra-w"]["conditions"]
    assert list(conds) == ["clear", "rain", "rain@1", "c_contrast", "c_contrast@2", "c_contrast@4", "adverse"]
    assert conds["c_contrast"]["images"] == 4 and conds["adverse"]["images"] == 6


def test_a_broken_image_is_quarantined_and_the_rest_weathered(source, tmp_path):
    import shutil

    _, root, ckpt = source
    shutil.copytree(root, tmp_path / "ra")
    (tmp_path / "ra" / "original" / "f2.jpg").write_bytes(b"not a jpeg")
    cv2.imwrite(str(tmp_path / "ra" / "labels" / "f2.png"), np.zeros((64, 128), np.uint8))
    cfg = _config(tmp_path, tmp_path / "ra", ckpt, conditions=["fog"], families=["weather"])
    summary = weather_benchmark(cfg, progress=False)
    assert [q["image"].endswith("f2.jpg") for q in summary["quarantined"]] == [True]
    assert "f2.jpg" in summary["quarantined"][0]["reason"]
    assert summary["images"] == 2 * 3 and {r["label"] for r in _rows(cfg.out)} == {"labels/f0.png", "labels/f1.png"}


def test_the_deployment_points_at_the_flow_and_a_valid_config():
    import importlib
    from pathlib import Path

    import yaml

    from schemas import load_weathered_config

    dep = {d["name"]: d for d in yaml.safe_load(Path("prefect.yaml").read_text())["deployments"]}["road-anomaly"]
    path, fn = dep["entrypoint"].split(":")
    module = path.removesuffix(".py").replace("/", ".")
    assert getattr(importlib.import_module(module), fn).name == "weather-benchmark"
    cfg = load_weathered_config(dep["parameters"]["config_path"])
    assert cfg.source.kind == "road_anomaly_pre" and cfg.families == ["weather", "corruption"]
    assert len(cfg.rendered()) == 6 + 19 and cfg.severities["corruption"] == [1, 3, 5]
