"""A plug-in package outside the project (installed as a distribution with entry points, the way pip installs one)
adds a method, a score and a benchmark; the unchanged CLI lists, trains, evaluates and compares them."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest
import yaml

from tests.helpers import ROOT, tiny_method, tiny_train_config, write_plugin_dist

PLUGIN = {
    "af_toy_plugin/__init__.py": '"""A third-party package: nothing here is part of anomalyforge."""\n',
    "af_toy_plugin/method.py": """
        from models.losses import rpl_loss
        from models.methods import register_method
        from models.methods.residual import ResidualConfig, ResidualMethod
        from models.scores import anomaly_score


        class ToyPluginConfig(ResidualConfig):
            name: str = "toy_plugin"
            lr: float = 1e-3
            weight: float = 0.1


        @register_method
        class ToyPlugin(ResidualMethod):
            name = "toy_plugin"
            config = ToyPluginConfig
            paper = "(a plug-in in a test)"
            head = "RPL's residual block"
            loss_summary = "RPL's loss"
            score_summary = "neg_top2_margin"

            def loss(self, cfg, model, images, labels, extras, generator, progress):
                out = model(images)
                return rpl_loss(out.logits, out.frozen_logits, labels, 1.0, cfg.weight)

            def score(self, cfg, logits):
                return anomaly_score(logits, "neg_top2_margin", cfg.smoothing)
    """,
    "af_toy_plugin/score.py": """
        from schemas.registries import SCORES


        @SCORES.register("neg_top2_margin")
        def neg_top2_margin(logits):
            top = logits.topk(2, dim=1).values
            return -(top[:, 0] - top[:, 1])
    """,
    "af_toy_plugin/benchmark.py": """
        from schemas.registries import BENCHMARKS


        @BENCHMARKS.register("toy_held_in")
        def toy_held_in(root, name, split, val_fraction):
            \"\"\"A version's held-in split under another name (a reader of one's own data would go here).\"\"\"
            return BENCHMARKS.get("shards")(root, name or "toy held-in", split, val_fraction)
    """,
}
ENTRY_POINTS = {
    "anomalyforge.methods": {"toy": "af_toy_plugin.method"},
    "anomalyforge.scores": {"toy": "af_toy_plugin.score"},
    "anomalyforge.benchmarks": {"toy": "af_toy_plugin.benchmark"},
}


@pytest.fixture
def plugin_env(tmp_path):
    site = tmp_path / "site"
    write_plugin_dist(site, "af-toy-plugin", ENTRY_POINTS, PLUGIN)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def cli(env, *args) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_a_plugin_package_is_listed_with_its_module(plugin_env):
    out = cli(plugin_env, "list").stdout
    assert "toy_plugin               af_toy_plugin.method  [ToyPluginConfig]" in out
    assert "neg_top2_margin          af_toy_plugin.score" in out
    assert "toy_held_in              af_toy_plugin.benchmark" in out
    assert "eel                      models.methods.eel  [EELConfig]" in out  # the built-ins are still there
    assert "toy_plugin: (a plug-in in a test)" in cli(plugin_env, "methods").stdout
    # without the package on the path, nothing of it is registered
    assert "toy_plugin" not in cli(os.environ | {"PYTHONPATH": str(ROOT)}, "list", "methods").stdout


@pytest.mark.slow
def test_a_plugin_method_trains_evaluates_and_compares_through_the_unchanged_cli(plugin_env, trained_eel, tmp_path):
    sets = ["max_steps=3", "eval_every=3", "crop=[64,128]", "batch_size=2", "workers=0", "val_fraction=0.3"]
    sets += ["val_limit=2", "method.residual_dim=16", f"segmenter.checkpoint={trained_eel.segmenter}"]
    sets += ["segmenter.name=espnetv2_demo"]
    out = tmp_path / "toy"
    args = ["train", "--method", "toy_plugin", "--shards", trained_eel.version, "--out-dir", str(out)]
    res = cli(plugin_env, *args, *[a for s in sets for a in ("--set", s)])
    assert f"model:   {out / 'model.pt'}" in res.stdout
    assert yaml.safe_load((out / "config.yaml").read_text())["method"]["name"] == "toy_plugin"

    eval_cfg = tmp_path / "eval.yaml"
    datasets = [{"kind": "toy_held_in", "root": trained_eel.version}]  # a plug-in benchmark too
    eval_cfg.write_text(yaml.safe_dump({"model": "x", "datasets": datasets}))
    res = cli(
        plugin_env,
        "eval",
        "--config",
        str(eval_cfg),
        "--out-dir",
        str(tmp_path / "ev"),
        "--model",
        str(out / "model.pt"),
    )
    assert "method, score toy_plugin (neg_top2_margin)" in res.stdout and "| toy held-in | all |" in res.stdout

    cmp_cfg = {
        "name": "plugin",
        "max_steps": 2,
        "methods": ["eel", "toy_plugin"],
        "method_overrides": {"eel": tiny_method("eel"), "toy_plugin": {"residual_dim": 16}},
        "post_hoc": ["energy", "neg_top2_margin"],
        "train": tiny_train_config("eel").model_dump(mode="json", exclude={"method", "max_steps"})
        | {"segmenter": {"name": "espnetv2_demo", "checkpoint": str(trained_eel.segmenter)}},
    }
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump(cmp_cfg))
    cmp = tmp_path / "cmp"
    cli(
        plugin_env,
        "compare",
        "--config",
        str(tmp_path / "compare.yaml"),
        "--shards",
        trained_eel.version,
        "--out-dir",
        str(cmp),
    )
    rows = list(csv.DictReader((cmp / "compare.csv").open()))
    assert [r["model"] for r in rows] == [
        "eel",
        "toy_plugin",
        "espnetv2_demo + energy",
        "espnetv2_demo + neg_top2_margin",
    ]
    assert all(0 <= float(r["ap"]) <= 100 for r in rows)
    # a few steps may leave its head where it started: then the row is flagged (⚠), its reason below the table
    assert re.search(
        r"\| toy_plugin( ⚠)? \| trained \| espnetv2_demo \| toy_plugin \| ", (cmp / "compare.md").read_text()
    )
