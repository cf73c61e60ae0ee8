"""`make compare`: every registered method and every post-hoc score in one table, on tiny demo shards; trained
models reused when nothing changed. And the shard sample format: a PNG shard set trains like a JPEG one."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from models.methods import get_method, method_config, method_names
from tasks.eval.compare import aggregate_seeds, compare_rows, flag_untrained, markdown, study_markdown, study_rows
from tasks.synth.validate import validate_shard_set
from tasks.train.sweep import beyond_edge, pick_multiplier
from tasks.train.trainer import train_method
from tasks.versions import resolve_version
from tests.helpers import make_shards, tiny_method, tiny_train_config


def test_rows_are_percent_with_dashes_for_what_a_row_does_not_have():
    result = {"name": "held-in", "metrics": {"ap": 0.5, "fpr95": 0.25, "auroc": 0.875, "images": 3, "miou": None}}
    entry = {"model": "eel", "kind": "trained", "score": "eel", "train": "demo", "steps": 10}
    (row,) = compare_rows(entry, [result])
    assert row == {
        "model": "eel",
        "kind": "trained",
        "segmenter": None,
        "score": "eel",
        "train": "demo",
        "steps": 10,
        "dataset": "held-in",
        "condition": "all",
        "images": 3,
        "ap": 50.0,
        "fpr95": 25.0,
        "auroc": 87.5,
        "f1_components": None,
        "miou": None,
        "closed_set_agreement": None,
        "lr": None,
        **dict.fromkeys(("ap_lo", "ap_hi", "fpr95_lo", "fpr95_hi", "auroc_lo", "auroc_hi")),
    }
    assert (
        "| eel | trained | – | eel | demo | held-in | all | 3 | 50.0 | 25.0 | 87.5 | – | – | – | 10 | – |"
        in markdown([row])
    )


def test_rows_carry_the_bootstrap_intervals_in_percent_and_the_table_prints_them():
    ci = {"ap": [0.4125, 0.6], "fpr95": [0.1, 0.5], "auroc": [0.8, 0.9], "level": 0.95, "resamples": 1000}
    result = {"name": "fs", "metrics": {"ap": 0.5, "fpr95": 0.25, "auroc": 0.875, "images": 30, "intervals": ci}}
    (row,) = compare_rows({"model": "rpl", "kind": "trained", "steps": 5}, [result])
    assert (row["ap_lo"], row["ap_hi"], row["fpr95_lo"], row["fpr95_hi"]) == (41.25, 60.0, 10.0, 50.0)
    assert (row["auroc_lo"], row["auroc_hi"]) == (80.0, 90.0)
    assert "| 30 | 50.0 [41.2, 60.0] | 25.0 [10.0, 50.0] | 87.5 [80.0, 90.0] | – |" in markdown([row])
    assert markdown([row]).endswith("| 5 | – |")  # steps 5, no lr
    (row,) = compare_rows({"model": "rpl", "kind": "trained", "steps": 5, "lr": 7.5e-05 * 10}, [result])
    assert row["lr"] == 0.00075 and markdown([row]).endswith("| 5 | 0.00075 |")  # not 0.0007499999999999999
    # an interval the bootstrap could not give (every resample lacked a class): the value alone
    nan = result | {"metrics": result["metrics"] | {"intervals": ci | {"ap": [float("nan"), float("nan")]}}}
    (row,) = compare_rows({"model": "rpl", "kind": "trained"}, [nan])
    assert row["ap_lo"] is None and "| 50.0 | 25.0 [10.0, 50.0] |" in markdown([row])


def _row(model, ap, seed=None, kind="trained", score=None, dataset="fs", **kw):
    r = {"model": model, "kind": kind, "segmenter": "espnetv2", "score": score or model, "train": "real"}
    r |= {"dataset": dataset, "condition": "all", "images": 30, "ap": ap, "fpr95": 100 - ap, "auroc": 90.0}
    r |= {"ap_lo": ap - 5, "ap_hi": ap + 5, "fpr95_lo": None, "fpr95_hi": None, "auroc_lo": None, "auroc_hi": None}
    return r | ({"seed": seed} if seed is not None else {}) | kw


def test_seeds_become_one_row_with_mean_and_sample_std():
    rows = [_row("rpl", 30.0, seed=0), _row("rpl", 34.0, seed=1), _row("rpl", 32.0, seed=2)]
    rows.append(_row("espnetv2 + energy", 10.0, kind="post-hoc", score="energy", train="–"))
    (rpl, post) = aggregate_seeds(rows)
    assert rpl["ap"] == 32.0 and rpl["ap_std"] == 2.0 and rpl["seeds"] == 3 and "seed" not in rpl  # std: n − 1
    assert (rpl["ap_lo"], rpl["ap_hi"]) == (27.0, 37.0)  # the bounds, averaged
    assert rpl["fpr95"] == 68.0 and rpl["fpr95_std"] == 2.0 and rpl["fpr95_lo"] is None
    assert post == rows[-1]  # post-hoc rows have no seed: unchanged
    assert "| 32.0 ± 2.0 [27.0, 37.0] | 68.0 ± 2.0 |" in markdown([rpl])


def _resampled(ap):
    return {"ap": np.asarray(ap, float), "fpr95": np.zeros(len(ap)), "auroc": np.zeros(len(ap))}


def test_a_study_gives_each_difference_its_paired_interval():
    # five paired resamples, hand-made: lab's AP and an arm whose AP is higher by 0.01–0.05 on every resample
    lab = np.array([0.10, 0.30, 0.20, 0.50, 0.40])
    rows = [_row("rpl", 30.0, train="lab"), _row("rpl", 33.0, train="none"), _row("rpl", 10.0, train="style")]
    rows += [_row("rpl", 11.0, train="lab", condition="fog"), _row("rpl", 12.0, train="none", condition="fog")]
    res = {
        ("rpl", "lab", "fs"): {"ap": lab, "fpr95": np.full(5, 0.2)},
        ("rpl", "none", "fs"): {"ap": lab + np.array([0.01, 0.02, 0.03, 0.04, 0.05]), "fpr95": np.full(5, 0.1)},
        ("rpl", "style", "fs"): {"ap": lab[::-1], "fpr95": np.full(5, 0.2)},  # paired with the wrong images
    }
    none, style, fog = study_rows(rows, "lab", res)
    # np.percentile of [1, 2, 3, 4, 5] points at 2.5 % and 97.5 % (linear): 1.1 and 4.9
    assert none["d_ap"] == 3.0 and (none["d_ap_lo"], none["d_ap_hi"]) == pytest.approx((1.1, 4.9))
    assert (none["d_fpr95_lo"], none["d_fpr95_hi"]) == pytest.approx((-10.0, -10.0))
    # lab reversed minus lab: [30, 20, 0, -20, -30] points; sorted, 2.5 % sits 0.1 of the way from -30 to -20
    assert (style["d_ap_lo"], style["d_ap_hi"]) == pytest.approx((-29.0, 29.0))
    assert fog["condition"] == "fog" and fog["d_ap"] == 1.0 and fog["d_ap_lo"] is None  # no per-condition resamples
    assert study_rows(rows, "lab")[0]["d_ap_lo"] is None  # no resamples: the difference alone
    table = study_markdown([none, style])
    assert "| rpl | +3.0 [+1.1, +4.9] * / -3.0 |" in table  # excludes 0: starred; ΔFPR95 from the rows
    assert "| rpl | -20.0 [-29.0, +29.0] / +20.0 |" in table


def test_a_trained_row_no_different_from_a_post_hoc_score_is_flagged_with_the_reason():
    rng = np.random.default_rng(0)
    frozen = rng.uniform(0.1, 0.3, 1000)  # the post-hoc AP over 1000 paired resamples
    rows = [_row("ovr", 20.0), _row("sleeg", 45.0), _row("espnetv2 + max_logit", 20.0, kind="post-hoc", train="–")]
    rows[2]["score"] = "max_logit"
    res = {
        ("ovr", "real", "fs"): _resampled(frozen + 0.0005 * rng.standard_normal(1000)),  # the same ranking, ±0.05 pt
        ("sleeg", "real", "fs"): _resampled(frozen + 0.25),
        ("espnetv2 + max_logit", "–", "fs"): _resampled(frozen),
    }
    flagged = flag_untrained(rows, res, margin=1.0)
    assert "flag" not in flagged[1] and "flag" not in flagged[2]
    assert (
        flagged[0]["flag"].startswith("not trained enough: AP within ±0.1")
        and "espnetv2 + max_logit" in flagged[0]["flag"]
    )
    table = markdown(flagged)
    assert "| ovr ⚠ |" in table and "⚠ **ovr** (trained on real): not trained enough" in table
    # a wide paired interval is not "the same", even with the same mean: no flag
    res[("ovr", "real", "fs")] = _resampled(frozen + 0.05 * rng.standard_normal(1000))
    assert "flag" not in flag_untrained(rows, res, margin=1.0)[0]
    # the same on one dataset but not on another: no flag
    rows2 = rows + [
        _row("ovr", 20.0, dataset="ro"),
        _row("espnetv2 + max_logit", 5.0, kind="post-hoc", train="–", dataset="ro"),
    ]
    rows2[-1]["score"] = "max_logit"
    res[("ovr", "real", "fs")] = _resampled(frozen)
    res[("ovr", "real", "ro")] = _resampled(frozen + 0.1)
    res[("espnetv2 + max_logit", "–", "ro")] = _resampled(frozen)
    assert "flag" not in flag_untrained(rows2, res, margin=1.0)[0]


def test_a_dataset_that_failed_is_a_row_of_dashes_with_its_reason():
    (row,) = compare_rows({"model": "eel", "kind": "trained"}, [{"name": "fs", "kind": "fishyscapes", "error": "boom"}])
    assert row["dataset"] == "fs" and row["error"] == "boom" and row["ap"] is None and row["auroc"] is None
    assert "| eel | trained | – | – | – | fs | all | – | – |" in markdown([row])


@pytest.mark.slow
def test_compare_trains_every_method_and_writes_one_table(trained_eel, tmp_path):
    from flows.cli import app

    cfg = {
        "name": "tiny",
        "max_steps": 2,
        "method_overrides": {name: tiny_method(name) for name in method_names()},
        "post_hoc": ["msp", "energy", "max_min"],
        "train": tiny_train_config("eel").model_dump(mode="json", exclude={"method", "max_steps"})
        | {"segmenter": {"name": "espnetv2_demo", "checkpoint": str(trained_eel.segmenter)}},
    }
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cmp"
    args = [
        "compare",
        "--config",
        str(tmp_path / "compare.yaml"),
        "--shards",
        trained_eel.version,
        "--out-dir",
        str(out),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output[-3000:] + repr(res.exception)
    rows = list(csv.DictReader((out / "compare.csv").open()))
    models = [r["model"] for r in rows]
    post_hoc = [
        f"{seg} + {score}" for seg in ("espnetv2_demo", "mask2former_demo") for score in ("msp", "energy", "max_min")
    ]
    assert models == [*method_names(), *post_hoc]
    # per-pixel and mask-classification rows side by side, each on the segmenter of its kind
    kinds = {name: get_method(name).segmenter_kind for name in method_names()}
    assert {"per-pixel", "mask-classification"} <= set(kinds.values())
    for r in rows:
        kind = kinds.get(r["model"]) or ("per-pixel" if r["model"].startswith("espnetv2") else "mask-classification")
        assert r["segmenter"] == {"per-pixel": "espnetv2_demo", "mask-classification": "mask2former_demo"}[kind]
    assert {r["dataset"] for r in rows} == {"held-in"}
    for r in rows:
        assert 0 <= float(r["ap"]) <= 100 and 0 <= float(r["auroc"]) <= 100 and float(r["miou"]) >= 0
    trained = [r for r in rows if r["kind"] == "trained"]
    # the heads of a tiny, barely pre-trained Mask2Former may flip every inlier's class in two steps at lr 1e-3
    low = {name for name, kind in kinds.items() if kind == "mask-classification"}
    assert all(r["steps"] == "2" and (r["model"] in low or float(r["closed_set_agreement"]) > 0) for r in trained)
    assert all(0 <= float(r["closed_set_agreement"]) <= 100 for r in trained)
    assert all(r["closed_set_agreement"] == "" for r in rows if r["kind"] == "post-hoc")
    # the post-hoc rows score the frozen network itself: one closed-set prediction, one mIoU per segmenter
    assert len({(r["segmenter"], r["miou"]) for r in rows if r["kind"] == "post-hoc"}) == 2
    md = (out / "compare.md").read_text()
    # two steps may leave a head where it started: such a row is flagged (⚠) with its reason below the table
    assert re.search(r"\| rpl_corocl( ⚠)? \| trained \| espnetv2_demo \| rpl_corocl \| ", md)
    assert re.search(r"\| rba( ⚠)? \| trained \| mask2former_demo \| rba \| ", md)
    assert " | held-in | all |" in md and "![comparison](compare.png)" in md
    flagged = [r["model"] for r in rows if r["flag"]]
    assert all(f"⚠ **{m}** (trained on " in md for m in flagged)
    assert all(r["flag"].startswith("not trained enough") for r in rows if r["flag"])
    assert "tiny: methods × datasets" in md and "table:" in res.output
    with Image.open(out / "compare.png") as im:
        assert im.size[0] > 300 and np.asarray(im.convert("L")).std() > 10  # a drawn chart, not a blank
    # unchanged config and shards: nothing retrains
    stamps = {m: (out / "models" / m / "model.pt").stat().st_mtime_ns for m in method_names()}
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output[-3000:]
    assert {m: (out / "models" / m / "model.pt").stat().st_mtime_ns for m in method_names()} == stamps
    assert list(csv.DictReader((out / "compare.csv").open())) == rows


@pytest.mark.slow
def test_compare_sweeps_the_lr_on_the_held_in_split_and_reports_seeds(trained_eel, tmp_path):
    from flows.cli import app

    cfg = {
        "name": "tiny-seeds",
        "max_steps": 2,
        "methods": ["rpl"],
        "method_overrides": {"rpl": tiny_method("rpl")},
        "post_hoc": ["energy"],
        "lr_sweep": [1, 30],
        "sweep_steps": 1,
        "train": tiny_train_config("rpl").model_dump(mode="json", exclude={"method", "max_steps"})
        | {"segmenter": {"name": "espnetv2_demo", "checkpoint": str(trained_eel.segmenter)}},
    }
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cmp"
    args = ["compare", "--config", str(tmp_path / "compare.yaml"), "--shards", trained_eel.version]
    res = CliRunner().invoke(app, [*args, "--out-dir", str(out), "--seeds", "2"])
    assert res.exit_code == 0, res.output[-3000:] + repr(res.exception)
    details = json.loads((out / "compare.json").read_text())
    (sweep,) = details["lr_sweep"].values()
    base_lr = method_config(tiny_method("rpl")).lr
    # ×1 and ×30 are the two edges of the grid, so whichever wins, one more run a ratio of 30 beyond it (sweep_extend 1)
    grid = {float(m): sweep["held_in"][m] for m in ("1", "30")}
    extra = f"{beyond_edge(grid):g}"
    assert extra in ("900", "0.0333333") and extra == ("900" if pick_multiplier(grid) == 30 else "0.0333333")
    assert sweep["base_lr"] == pytest.approx(base_lr) and set(sweep["held_in"]) == {"1", "30", extra}
    assert sweep["steps"] == 1 and sweep["lr"] == pytest.approx(base_lr * sweep["picked"])
    trials = {float(m): t for m, t in sweep["held_in"].items()}
    assert pick_multiplier(trials) == pytest.approx(sweep["picked"])  # the held-in AP of all three picked it
    for m in ("1", "30", extra):
        assert (out / "models" / "lr-sweep" / f"rpl-x{m}" / "model.pt").is_file()
    assert (out / "models" / "rpl" / "model.pt").is_file() and (out / "models" / "rpl-seed1" / "model.pt").is_file()
    rows = list(csv.DictReader((out / "compare.csv").open()))
    (rpl,) = [r for r in rows if r["model"] == "rpl"]
    assert rpl["seeds"] == "2" and float(rpl["lr"]) == pytest.approx(sweep["lr"], rel=1e-3) and rpl["ap_std"] != ""
    assert float(rpl["ap_lo"]) <= float(rpl["ap"]) <= float(rpl["ap_hi"]) or rpl["ap_lo"] == ""
    per_seed = list(csv.DictReader((out / "seeds.csv").open()))
    assert sorted(r["seed"] for r in per_seed if r["model"] == "rpl") == [
        str(cfg["train"]["seed"]),
        str(cfg["train"]["seed"] + 1),
    ]
    mean = np.mean([float(r["ap"]) for r in per_seed if r["model"] == "rpl"])
    assert float(rpl["ap"]) == pytest.approx(mean, abs=0.01)
    md = (out / "compare.md").read_text()
    assert "## Learning rates: a short sweep per method" in md and " ± " in md and "seeds.csv" in md


def test_a_png_shard_set_trains_like_a_jpeg_one(tiny_config, tmp_path):
    tiny_config.num_samples = 8
    tiny_config.shards.image_format = "png"
    make_shards(tiny_config, tmp_path / "run")
    version = resolve_version(tmp_path / "run" / "shards")
    checked, problems = validate_shard_set(version)
    assert checked == 8 and problems == []
    cfg = tiny_train_config("eel").model_copy(update={"max_steps": 2, "eval_every": 2})
    res = train_method(cfg, version, tmp_path / "out", progress=False, log=lambda m: None)
    assert res.steps == 2 and np.isfinite(res.first_loss) and res.metrics["images"] >= 1
