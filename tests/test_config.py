import pytest
from pydantic import ValidationError

from schemas import ConfigError, SynthConfig, load_config
from tests.helpers import ROOT


def test_demo_config_loads_and_overrides_apply():
    cfg = load_config(ROOT / "configs/demo.yaml", {"num_samples": 5, "placement.candidates": 7})
    assert cfg.scenes.kind == "demo" and cfg.num_samples == 5 and cfg.placement.candidates == 7


def test_content_hash_ignores_workers_but_not_seed():
    a = SynthConfig()
    assert a.content_hash() == a.model_copy(update={"workers": 9}).content_hash()
    assert a.content_hash() != a.model_copy(update={"seed": 1}).content_hash()


def test_unknown_fields_and_bad_values_are_rejected(tmp_path):
    (tmp_path / "c.yaml").write_text("num_sample: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: 1 problem\(s\) in the config:\n  num_sample: Extra inputs"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ValidationError, match=r"scenes.root\n  Field required"):
        SynthConfig.model_validate({"scenes": {"kind": "cityscapes"}})
    with pytest.raises(
        ValidationError,
        match="unknown scene source 'kitti'; registered: acdc, bdd100k, cityscapes, demo, frames, mapillary",
    ):
        SynthConfig.model_validate({"scenes": {"kind": "kitti", "root": "x"}})
    with pytest.raises(ValidationError, match=r"scenes.demo\n  Extra inputs"):  # a field of another source
        SynthConfig.model_validate({"scenes": {"kind": "cityscapes", "root": "x", "demo": {"num_scenes": 2}}})
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_every_shipped_config_is_valid():
    from helpers import load_shipped_config

    paths = sorted((ROOT / "configs").glob("*.yaml"))
    assert {"train.yaml", "compare.yaml", "eval.yaml", "weather_benchmark.yaml"} <= {p.name for p in paths}
    for path in paths:
        load_shipped_config(path)
