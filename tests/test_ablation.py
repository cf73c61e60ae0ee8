"""The real-data profile and its ablations (configs/real_*.yaml, flows/ablation.py, configs/ablations.yaml): the
profile's paths, arms validated before anything runs, each arm's rows under its label, post-hoc rows once, and an
end-to-end study of two harmonizers on tiny shards."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.ablation import study_arms
from schemas import ConfigError, load_ablation_config, load_compare_config, load_config
from tasks.eval.compare import arm_rows
from tests.helpers import shared_or_skip, tiny_method, tiny_synth_config, tiny_train_config, write_red_squares_dataset


def test_the_shipped_ablations_validate_every_arm():
    cfg = load_ablation_config("configs/ablations.yaml")
    assert {"harmonization", "objects_per_scene", "size_prior", "objects", "weather_share", "training_crop"} <= set(
        cfg.studies
    )
    synth, compare = load_config(cfg.synth_config), load_compare_config(cfg.compare_config)
    for study in cfg.studies:
        arms = study_arms("configs/ablations.yaml", study)
        first, *others = arms.values()
        assert len(arms) >= 2 and first.synth == {} and first.compare == {}  # the first arm: the shipped defaults
        for arm in others:  # every other arm changes what it says it changes (a moved default would make a no-op)
            changed_synth = load_config(cfg.synth_config, dict(arm.synth)) != synth
            changed_compare = load_compare_config(cfg.compare_config, dict(arm.compare)) != compare
            assert changed_synth or changed_compare, (study, arm)


def test_an_unknown_study_or_a_bad_arm_is_a_config_error_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"no study 'harmonisation'; the studies are harmonization, "):
        study_arms("configs/ablations.yaml", "harmonisation")
    cfg = yaml.safe_load(open("configs/ablations.yaml"))
    cfg["studies"] = {"h": {"lab": {}, "bad": {"synth": {"harmonize.method": "photoshop"}}}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="photoshop"):
        study_arms(str(tmp_path / "a.yaml"), "h")
    with pytest.raises(ConfigError, match="seeds"):  # a --set for every arm's comparison is checked too
        study_arms("configs/ablations.yaml", "harmonization", {"seeds": 0})
    cfg["studies"] = {"h": {"lab": {}}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="has 1 arm; an ablation compares at least two"):
        load_ablation_config(tmp_path / "b.yaml")


def test_arm_rows_label_the_trained_rows_and_keep_post_hoc_rows_once():
    rows = [
        {"model": "rpl", "kind": "trained", "train": "run"},
        {"model": "espnetv2 + energy", "kind": "post-hoc", "train": "–"},
    ]
    assert arm_rows("none", rows, first=True) == [rows[0] | {"train": "none"}, rows[1]]
    assert arm_rows("style", rows, first=False) == [rows[0] | {"train": "style"}]


@pytest.mark.slow
def test_an_ablation_makes_one_version_per_arm_and_one_table_of_their_differences(trained_eel, tmp_path):
    from flows.cli import app

    (tmp_path / "synth.yaml").write_text(tiny_synth_config(tmp_path).to_yaml())
    write_red_squares_dataset(tmp_path / "bench", conditions=["clear"])
    compare = {
        "name": "tiny",
        "max_steps": 2,
        "method_overrides": {"rpl": tiny_method("rpl")},
        "post_hoc": ["energy"],
        "benchmarks": [{"kind": "folder", "root": str(tmp_path / "bench"), "name": "red"}],
        "bootstrap": 200,
        "train": tiny_train_config("rpl").model_dump(mode="json", exclude={"method", "max_steps"})
        | {"segmenter": {"name": "espnetv2_demo", "checkpoint": str(trained_eel.segmenter)}},
    }
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump(compare))
    ablation = {
        "synth_config": str(tmp_path / "synth.yaml"),
        "compare_config": str(tmp_path / "compare.yaml"),
        "run_dir": str(tmp_path / "runs"),
        "studies": {
            "harmonization": {"lab": {}, "none": {"synth": {"harmonize.method": "none"}}},
            "crop": {"small": {}, "wide": {"compare": {"train.crop": [64, 160]}}},
        },
    }
    (tmp_path / "ablation.yaml").write_text(yaml.safe_dump(ablation))
    args = ["ablate", "--config", str(tmp_path / "ablation.yaml"), "--study", "harmonization", "--set", "methods=[rpl]"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output[-3000:] + repr(res.exception)
    out = tmp_path / "runs" / "harmonization" / "compare"
    # one shard version per arm, made with the arm's harmonizer; the arm without overrides in the shared default run
    for run, method in (("default", "lab"), ("harmonization/none", "none")):
        (version,) = (tmp_path / "runs" / run / "versions").iterdir()
        assert json.loads((version / "dataset.json").read_text())["config"]["harmonize"]["method"] == method
    assert not (tmp_path / "runs" / "harmonization" / "lab").exists()
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [(r["model"], r["train"]) for r in rows] == [
        ("rpl", "lab"),
        ("rpl", "none"),
        ("espnetv2_demo + energy", "–"),
    ]
    assert {r["dataset"] for r in rows} == {"red"}  # benchmarks only: each arm's held-in split is its own
    assert all(float(r["ap_lo"]) <= float(r["ap"]) <= float(r["ap_hi"]) for r in rows)
    (diff,) = list(csv.DictReader((out / "study.csv").open()))
    assert (diff["model"], diff["base"], diff["train"]) == ("rpl", "lab", "none")
    assert float(diff["d_ap"]) == pytest.approx(float(rows[1]["ap"]) - float(rows[0]["ap"]), abs=0.011)
    # the two arms' models scored on the same resampled images: a paired interval of the difference
    lo, hi = float(diff["d_ap_lo"]), float(diff["d_ap_hi"])
    width = lambda r: float(r["ap_hi"]) - float(r["ap_lo"])  # noqa: E731
    assert lo <= hi and hi - lo <= width(rows[0]) + width(rows[1])  # no wider than the two intervals side by side
    details = json.loads((out / "compare.json").read_text())
    assert set(details["shards"]) == {"lab", "none"} and details["study"] == "harmonization"
    assert "Trained on none instead of lab" in (out / "compare.md").read_text()

    # another study starts from the same default arm: its shards and its trained head are reused, not made again,
    # and an arm that only changes training trains on those same shards
    head = tmp_path / "runs" / "default" / "compare" / "models" / "rpl" / "model.pt"
    before = head.stat().st_mtime_ns, (version := details["shards"]["lab"])
    res = CliRunner().invoke(app, [*args[:4], "crop", *args[5:]])
    assert res.exit_code == 0, res.output[-3000:] + repr(res.exception)
    assert [p.name for p in (tmp_path / "runs" / "default" / "versions").iterdir()] == [Path(version).name]
    assert head.stat().st_mtime_ns == before[0]
    crop = json.loads((tmp_path / "runs" / "crop" / "compare" / "compare.json").read_text())
    assert crop["shards"] == {"small": version, "wide": version}
    wide = yaml.safe_load(
        (tmp_path / "runs" / "crop" / "compare" / "wide" / "models" / "rpl" / "config.yaml").read_text()
    )
    assert wide["crop"] == [64, 160]


def test_the_real_data_profile_finds_its_frames_photos_segmenter_and_benchmarks():
    """configs/real_*.yaml point at ../shared/data (skipped where it is absent): every path they name is there."""
    from tasks.eval.benchmarks import check_benchmarks
    from tasks.scenes.frames import list_frames

    shared_or_skip("driving_frames")
    synth = load_config("configs/real_synth.yaml")
    frames = list_frames(synth.scenes.root, synth.scenes.patterns)
    assert len(frames) >= 70 and any("leftImg8bit" in f.name for f in frames)
    assert not any(f.name.endswith("_gtFine_color.png") for f in frames)  # a label picture is no frame
    assert synth.scenes.segmenter.checkpoint.is_file()
    (photos,) = synth.objects.files
    assert (photos.root / photos.manifest).is_file()
    compare = load_compare_config("configs/real_compare.yaml")
    assert compare.train.segmenter.checkpoint == synth.scenes.segmenter.checkpoint
    check_benchmarks(compare.benchmarks)  # raises, naming every dataset that cannot be opened
    assert [b.name for b in compare.benchmarks] == ["fs_static", "fs_laf_subset", "road_obstacle21"]
