"""The method registry: specs found by name, their own configs, unchanged numbers after the move, and a method
registered by a test that trains and evaluates end to end through the CLI without touching the trainer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from models.losses import rpl_loss
from models.methods import (
    METHODS,
    TrainingProgress,
    get_method,
    method_config,
    method_names,
    register_method,
)
from models.methods.residual import ResidualConfig, ResidualMethod
from models.scores import anomaly_score
from models.segmenters import build_segmenter
from schemas import TrainConfig, load_train_config
from tests.helpers import ROOT

# loss of one batch before and after one Adam step, recorded with the trainer's code as it was before methods
# became specs (tasks/train.py: build_model / param_groups / method_loss, one branch per method name)
BEFORE_THE_MOVE = {
    "eel": (2.903597593307495, 2.9029459953308105),
    "rpl": (2.8986220359802246, 2.897960901260376),
    "rpl_corocl": (10.912698745727539, 9.23599910736084),
}


def _batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 96, generator=g)
    y = torch.randint(0, 19, (2, 64, 96), generator=g)
    y[:, 20:40, 30:60] = 254
    y[:, :4] = 255
    cx = torch.rand(2, 3, 32, 32, generator=g)
    cy = torch.zeros(2, 32, 32, dtype=torch.long)
    cy[:, 8:24, 8:24] = 254
    cy[:, :2] = 255
    return x, y, {"object_context": (cx, cy)}


@pytest.mark.parametrize("name", ["eel", "rpl", "rpl_corocl"])
def test_same_seed_gives_the_same_first_step_losses_as_before_the_move(name):
    spec = get_method(name)
    cfg = method_config(
        {"name": name, "residual_dim": 16, "lr": 1e-3} | ({"projector_dim": 16} if "corocl" in name else {})
    )
    torch.manual_seed(0)
    model = spec.build(cfg, build_segmenter("espnetv2_demo"))
    opt = torch.optim.Adam(spec.param_groups(cfg, model))
    x, y, extras = _batch()
    losses = []
    for _ in range(2):
        parts = spec.loss(cfg, model, x, y, extras, torch.Generator().manual_seed(2), TrainingProgress(0, 2))
        losses.append(parts["loss"].item())
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
    assert losses == pytest.approx(BEFORE_THE_MOVE[name], rel=1e-5)


def test_the_config_names_come_from_the_registry_and_old_flat_keys_are_refused():
    assert {"eel", "rpl", "rpl_corocl", "sleeg", "pebal"} <= set(method_names())
    cfg = TrainConfig(method={"name": "eel", "lam": 0.1})
    assert type(cfg.method).__name__ == "EELConfig" and cfg.method.lam == 0.1 and cfg.method.lr == 5e-5
    assert TrainConfig(method="rpl").method.lr == 7.5e-5  # a bare name: that method's paper defaults
    dumped = cfg.model_dump()["method"]
    common = {"name": "eel", "lr": 5e-5, "head_lr_mult": 10.0, "smoothing": True, "optimizer": "adam"}
    common |= {"momentum": 0.9, "weight_decay": None}
    assert dumped == common | {
        "residual_dim": 256,
        "lam": 0.1,
        "alpha": 1.0,
    }  # only EEL's own hyper-parameters: nothing of RPL's or CoroCL's
    assert TrainConfig.model_validate_json(cfg.model_dump_json()).method == cfg.method  # JSON round trip
    with pytest.raises(ValueError, match=f"unknown method 'nope'; registered: {re.escape(', '.join(method_names()))}"):
        TrainConfig(method="nope")
    with pytest.raises(
        ValueError, match=r"lam, residual_dim: .*under `method:`.*name: rpl, lam: 0.1, residual_dim: 64"
    ):
        TrainConfig(method="rpl", lam=0.1, residual_dim=64)
    with pytest.raises(ValueError, match="lam"):  # another method's hyper-parameter is not accepted either
        TrainConfig(method={"name": "rpl", "lam": 0.1})


def test_the_config_hash_covers_only_what_the_config_contains():
    a, b = TrainConfig(method="eel"), TrainConfig(method={"name": "eel", "alpha": 0.5})
    assert a.content_hash() != b.content_hash()
    assert a.content_hash() == TrainConfig(method={"name": "eel", "alpha": 1.0}).content_hash()
    assert a.content_hash() == TrainConfig(method="eel", workers=0, eval_every=7).content_hash()  # how, not what


def test_cli_method_picks_that_methods_defaults_unless_the_file_names_it(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"method": {"name": "eel", "lam": 0.2, "lr": 1e-4}, "max_steps": 3}))
    assert load_train_config(path, None, "eel").method.lam == 0.2  # the file's section names eel: kept
    rpl = load_train_config(path, {"method.out_weight": 0.1}, "rpl").method
    assert rpl.name == "rpl" and rpl.lr == 7.5e-5 and rpl.out_weight == 0.1  # rpl's defaults + the override
    assert load_train_config(path, {"method.alpha": 0.5}).method.alpha == 0.5


def test_no_code_in_tasks_or_flows_picks_behaviour_by_a_method_name():
    pattern = re.compile(r"method(\.name)? *[!=]= *['\"]|method\.startswith|method(\.name)? in \(")
    hits = [
        f"{p}:{i}"
        for d in ("tasks", "flows")
        for p in sorted((ROOT / d).rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


class ToyConfig(ResidualConfig):
    """A method written in a test: RPL's head, cross-entropy to the frozen class on inliers plus the mean energy
    response on anomalies, scored by max-softmax."""

    name: str = "toy_msp"
    lr: float = 1e-3
    weight: float = 0.1


class Toy(ResidualMethod):
    name = "toy_msp"
    config = ToyConfig
    paper = "(a test)"
    head = "RPL's residual block"
    loss_summary = "RPL's ℓ_in + weight · relu(logsumexp) on anomalies"
    score_summary = "msp"

    def loss(self, cfg, model, images, labels, extras, generator, progress):
        out = model(images)
        return rpl_loss(out.logits, out.frozen_logits, labels, 1.0, cfg.weight)

    def score(self, cfg, logits):
        return anomaly_score(logits, "msp", cfg.smoothing)


@pytest.fixture
def toy_method():
    register_method(Toy)
    yield get_method("toy_msp")
    METHODS.unregister("toy_msp")


@pytest.mark.slow
def test_a_method_registered_in_a_test_trains_and_evaluates_through_the_cli(toy_method, trained_eel, tmp_path):
    from flows.cli import app

    runner = CliRunner()
    out = tmp_path / "toy"
    sets = ["max_steps=3", "eval_every=3", "crop=[64,128]", "batch_size=2", "workers=0", "val_fraction=0.3"]
    sets += ["val_limit=2", "method.residual_dim=16", f"segmenter.checkpoint={trained_eel.segmenter}"]
    sets += ["segmenter.name=espnetv2_demo"]
    args = ["train", "--method", "toy_msp", "--shards", trained_eel.version, "--out-dir", str(out)]
    res = runner.invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert res.exit_code == 0, res.output[-3000:] + repr(res.exception)
    assert f"model:   {out / 'model.pt'}" in res.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    common = {"name": "toy_msp", "lr": 1e-3, "head_lr_mult": 10.0, "smoothing": True, "optimizer": "adam"}
    common |= {"momentum": 0.9, "weight_decay": None}
    assert saved["method"] == common | {"residual_dim": 16, "weight": 0.1}
    # and it is scored by its own score through `anomalyforge eval --model`
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"model": "x", "datasets": [{"kind": "shards", "root": trained_eel.version}]}))
    res = runner.invoke(
        app, ["eval", "--config", str(cfg), "--out-dir", str(tmp_path / "ev"), "--model", str(out / "model.pt")]
    )
    assert res.exit_code == 0, res.output[-3000:] + repr(res.exception)
    assert "method, score toy_msp (msp)" in res.output and "| held-in | all |" in res.output
    assert "toy_msp" in METHODS


def test_cli_methods_lists_every_registered_method(toy_method):
    from flows.cli import app

    res = CliRunner().invoke(app, ["methods"])
    assert res.exit_code == 0
    for name in method_names():
        assert f"{name}: " in res.output
    assert "toy_msp: (a test)" in res.output


def test_registering_a_name_twice_or_a_config_of_another_name_is_refused():
    class Again(Toy):
        name = "eel"

    with pytest.raises(ValueError, match="'eel' is registered twice"):
        register_method(Again)

    class Mismatch(Toy):
        name = "other"

    with pytest.raises(ValueError, match="must default name to 'other'"):
        register_method(Mismatch)
    assert Path(__file__).is_file()


def test_a_method_override_without_a_method_section_applies_to_the_default_method(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("max_steps: 3\n")
    assert load_train_config(path, {"method.lam": 0.1}).method.lam == 0.1


def test_a_residual_width_other_than_deeplabs_aspp_builds_from_random_weights():
    seg = build_segmenter("deeplabv3plus_resnet50")
    spec = get_method("rpl")
    narrow = spec.build(method_config({"name": "rpl", "residual_dim": 128}), seg)
    assert narrow.residual.aspp.img_conv[0].out_channels == 128
    wide = spec.build(method_config({"name": "rpl"}), seg)  # 256: starts as a copy of the frozen ASPP
    assert torch.equal(wide.residual.aspp.img_conv[0].weight, seg.net.aspp.img_conv[0].weight)


def test_batches_of_one_are_refused_by_the_config():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=1)


def test_corocl_on_a_remote_version_asks_for_a_local_object_bank():
    from tasks.train.extras import build_extras

    with pytest.raises(FileNotFoundError, match=r"s3://bucket/run/versions/v1 is remote.*method.object_bank"):
        build_extras(get_method("rpl_corocl").extras(method_config("rpl_corocl")), "s3://bucket/run/versions/v1", 0)


def test_every_method_has_a_readme_row_and_the_train_deployments_name_registered_methods():
    readme = Path("README.md").read_text()
    assert all(f"| `{name}` |" in readme for name in method_names())
    deployments = yaml.safe_load(Path("prefect.yaml").read_text())["deployments"]
    train = {d["name"]: d for d in deployments if d["entrypoint"] == "flows/train.py:train"}
    assert {"method", "sleeg", "pebal", "ovr"} <= set(train)
    for name, d in train.items():
        assert Path(d["parameters"]["config_path"]).is_file(), name
        method = d["parameters"]["method"]
        assert method is None or (method == name and method in method_names()), name
