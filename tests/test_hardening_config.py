"""Hardening of what a user hands over: config files (empty, not a mapping, duplicate keys, sizes that are not
positive, names that would escape as path components) and model files (a raw pickle, a torch.save without tensors,
weights with NaN / inf). Each case is built here in tmp_path and asserts that the message names the file and the
problem."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
import yaml

from schemas import (
    ConfigError,
    SegmenterConfig,
    load_compare_config,
    load_config,
    load_eval_config,
    load_train_config,
)
from schemas.loading import read_yaml
from tasks.checkpoints import METHOD_FORMAT, frozen_segmenter, load_method, read_checkpoint, save_atomic
from tasks.eval.evaluate import read_model_file
from tasks.imageio import BadInputError

ROOT = Path(__file__).resolve().parents[1]
LOADERS = (load_config, load_eval_config, load_train_config, load_compare_config)
EVAL = {"model": "m.pt", "datasets": [{"kind": "shards", "root": "runs/x"}]}


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- 1a. empty configs, configs that are no mapping ------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "null\n", "~\n", "---\n"])
def test_an_empty_config_is_refused_naming_the_file(tmp_path, text):
    path = _write(tmp_path, text)
    for load in LOADERS:
        with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: the config file is empty"):
            load(path)
    with pytest.raises(ConfigError, match="the config file is empty"):  # --set does not make an empty file a config
        load_eval_config(path, {"model": "m.pt"})


@pytest.mark.parametrize(
    ("text", "what"),
    [("- a\n- b\n", "a list"), ("42\n", r"a single value \('42'\)"), ("just words\n", "a single value")],
)
def test_a_config_that_is_no_mapping_is_refused_naming_the_file_and_what_it_holds(tmp_path, text, what):
    path = _write(tmp_path, text)
    for load in LOADERS:
        with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: .*mapping.*, not {what}"):
            load(path)


# ---- 1b. duplicate keys ----------------------------------------------------------------------------------------


def test_a_duplicate_key_names_the_key_and_both_lines(tmp_path):
    path = _write(tmp_path, "name: a\nseed: 1\nmax_steps: 3\nseed: 2\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: key 'seed' appears twice \(lines 2 and 4\)$"):
        load_train_config(path)


def test_a_duplicate_key_is_found_at_any_nesting_level_and_in_flow_style(tmp_path):
    nested = _write(tmp_path, "method:\n  name: eel\n  lam: 0.1\n  alpha: 1.0\n  lam: 0.2\n", "nested.yaml")
    with pytest.raises(ConfigError, match=r"nested.yaml: key 'lam' appears twice \(lines 3 and 5\)"):
        load_train_config(nested)
    flow = _write(tmp_path, "model: m.pt\ndatasets:\n  - {kind: shards, root: a, root: b}\n", "flow.yaml")
    with pytest.raises(ConfigError, match=r"flow.yaml: key 'root' appears twice on line 3"):
        load_eval_config(flow)


def test_merge_keys_and_the_same_key_in_sibling_mappings_are_no_duplicates(tmp_path):
    path = _write(tmp_path, "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\nthird: {x: 4}\n")
    assert read_yaml(path, None) == {"base": {"x": 1, "y": 2}, "other": {"x": 3, "y": 2}, "third": {"x": 4}}
    # still safe loading: a Python tag is refused, never constructed
    evil = _write(tmp_path, "seed: !!python/object/apply:os.system ['true']\n", "evil.yaml")
    with pytest.raises(ConfigError, match=r"evil.yaml: not valid YAML"):
        read_yaml(evil, None)


# ---- 1c. sizes and counts must be positive ---------------------------------------------------------------------


def test_sizes_that_are_not_positive_are_field_errors(tmp_path):
    path = _write(tmp_path, yaml.safe_dump(EVAL | {"input_size": [0, -5]}), "eval.yaml")
    with pytest.raises(ConfigError, match=r"eval.yaml: 2 problem\(s\)") as e:
        load_eval_config(path)
    assert "input_size.0: Input should be greater than 0" in str(e.value)
    assert "input_size.1: Input should be greater than 0" in str(e.value)

    path = _write(tmp_path, yaml.safe_dump(EVAL | {"std": [0.2, 0.0, 0.2]}), "std.yaml")
    with pytest.raises(ConfigError, match=r"std.yaml: 1 problem.*\n  std.1: Input should be greater than 0"):
        load_eval_config(path)

    path = _write(tmp_path, "crop: [0, 128]\nseed: -1\n", "train.yaml")
    with pytest.raises(ConfigError, match=r"train.yaml: 2 problem") as e:
        load_train_config(path)
    assert "crop.0: Input should be greater than 0" in str(e.value)
    assert "seed: Input should be greater than or equal to 0" in str(e.value)

    path = _write(tmp_path, "input_size: [512, 0]\n", "compare.yaml")
    with pytest.raises(ConfigError, match=r"compare.yaml: 1 problem.*\n  input_size.1: Input should be greater than 0"):
        load_compare_config(path)
    path = _write(tmp_path, "train: {crop: [-64, 64]}\n", "compare_crop.yaml")
    with pytest.raises(ConfigError, match=r"train.crop.0: Input should be greater than 0"):
        load_compare_config(path)


def test_every_shipped_config_still_loads():
    from helpers import load_shipped_config

    paths = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(paths) >= 10
    for path in paths:
        load_shipped_config(path)


# ---- 1d. names that become path components ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../../../escaped", "a/b", "a\\b", "..", ".", ".hidden", "", "x\0y"])
@pytest.mark.parametrize("field", ["name", "split"])
def test_a_dataset_name_or_split_must_be_a_plain_file_name(tmp_path, bad, field):
    dataset = {"kind": "shards", "root": "runs/x", field: bad}
    for data, loader, loc in (
        (EVAL | {"datasets": [dataset]}, load_eval_config, f"datasets.0.{field}"),
        ({"benchmarks": [dataset]}, load_compare_config, f"benchmarks.0.{field}"),
    ):
        path = _write(tmp_path, yaml.safe_dump(data), "names.yaml")
        with pytest.raises(ConfigError) as e:
            loader(path)
        msg = str(e.value)
        assert msg.startswith(f"{path}: 1 problem(s) in the config:\n  {loc}: "), msg
        assert "a plain file name" in msg and repr(bad) in msg, msg


def test_plain_dataset_names_are_kept(tmp_path):
    datasets = [{"kind": "shards", "root": "r", "name": n} for n in ("fs_laf", "demo-conditions", "ra21", "v1.2")]
    path = _write(tmp_path, yaml.safe_dump(EVAL | {"datasets": datasets}))
    assert [d.name for d in load_eval_config(path).datasets] == ["fs_laf", "demo-conditions", "ra21", "v1.2"]


# ---- 2a/2b. model files that are no model ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_raw_pickle_is_called_a_pickle(tmp_path, protocol):
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps({"a": 1, "w": [1.0, 2.0]}, protocol=protocol))
    for segmenter in (None, "espnetv2_demo"):
        with pytest.raises(BadInputError) as e:
            read_model_file(path, segmenter)
        assert str(e.value) == (
            f"{path}: a Python pickle, not a torch checkpoint (torch.save / TorchScript / a method model.pt)"
        )


def test_a_text_file_is_still_called_a_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not weights\n")
    with pytest.raises(BadInputError, match=r"notes.txt: a text file, neither a method checkpoint"):
        read_model_file(path)


def test_a_torch_save_without_tensors_says_so_and_lists_its_keys(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"epoch": 3, "lr": 0.01}, path)
    for segmenter in (None, "espnetv2_demo"):
        with pytest.raises(BadInputError) as e:
            read_model_file(path, segmenter)
        assert str(e.value) == f"{path}: holds no tensors (keys: epoch, lr) — not a model state dict or checkpoint"


# ---- 2c. weights that are NaN / inf ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_state():
    from models.segmenters import build_segmenter

    torch.manual_seed(0)
    return build_segmenter("espnetv2_demo").net.state_dict()


def _corrupt(sd: dict, key: str, n: int) -> dict:
    sd = {k: v.clone() for k, v in sd.items()}
    flat = sd[key].view(-1)
    flat[: n // 2] = float("nan")
    flat[n // 2 : n] = float("inf")
    return sd


def test_a_segmenter_checkpoint_with_non_finite_weights_is_named_corrupt_where_it_is_read(tmp_path, demo_state):
    key = "base_net.level1.conv.weight"
    path = save_atomic(_corrupt(demo_state, key, 12), tmp_path / "seg.pt")
    want = f"{path}: tensor '{key}' has 12 non-finite values (NaN/inf); the checkpoint is corrupt"
    with pytest.raises(BadInputError) as e:  # train's frozen segmenter, compare's, a method's
        frozen_segmenter(SegmenterConfig(name="espnetv2_demo", checkpoint=path))
    assert str(e.value) == want
    with pytest.raises(BadInputError) as e:  # eval --model seg.pt --segmenter espnetv2_demo
        read_model_file(path, "espnetv2_demo")
    assert str(e.value) == want
    # a wrapped checkpoint names the tensor as the file holds it
    wrapped = save_atomic({"state_dict": {f"module.{k}": v for k, v in _corrupt(demo_state, key, 1).items()}}, path)
    with pytest.raises(BadInputError, match=rf"tensor 'state_dict.module.{re.escape(key)}' has 1 non-finite value "):
        frozen_segmenter(SegmenterConfig(name="espnetv2_demo"), wrapped)
    # finite weights (integer buffers included) load
    good = save_atomic(demo_state, tmp_path / "good.pt")
    frozen_segmenter(SegmenterConfig(name="espnetv2_demo"), good)


def test_a_method_checkpoint_with_a_non_finite_head_is_named_corrupt(tmp_path):
    path = save_atomic(
        {"format": METHOD_FORMAT, "head": {"proj.weight": torch.tensor([1.0, float("-inf")]), "n": torch.tensor(3)}},
        tmp_path / "model.pt",
    )
    want = f"{path}: tensor 'head.proj.weight' has 1 non-finite value (NaN/inf); the checkpoint is corrupt"
    for read in (load_method, read_model_file, read_checkpoint):
        with pytest.raises(BadInputError) as e:
            read(path)
        assert str(e.value) == want, read


class Payload:
    """An arbitrary object: weights-only loading refuses it."""


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_torch_save_of_python_objects_is_no_pickle_but_a_refused_torch_file(tmp_path, zip_format):
    path = tmp_path / "obj.pt"
    torch.save({"x": Payload()}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(BadInputError) as e:
        read_model_file(path)
    assert str(e.value).startswith(
        f"{path}: a torch.save file holding Python objects that weights-only loading refuses, neither a method "
    ), str(e.value)


def test_a_method_checkpoint_without_its_parts_is_named_incomplete(tmp_path):
    path = save_atomic({"format": METHOD_FORMAT, "head": {"w": torch.zeros(2)}}, tmp_path / "model.pt")
    with pytest.raises(BadInputError) as e:
        load_method(path)
    assert str(e.value) == f"{path}: a method checkpoint without config, segmenter; the file is incomplete"


def test_a_model_directory_with_non_finite_weights_is_named_corrupt(tmp_path):
    from tests.helpers import tiny_mask2former

    net = tiny_mask2former().net
    name, param = next((k, v) for k, v in net.named_parameters() if v.is_floating_point())
    with torch.no_grad():
        param.view(-1)[:3] = float("nan")
    net.save_pretrained(tmp_path / "m2f")
    with pytest.raises(BadInputError) as e:
        frozen_segmenter(SegmenterConfig(name="mask2former"), tmp_path / "m2f")
    assert str(e.value) == (
        f"{tmp_path / 'm2f'}: tensor {name!r} has 3 non-finite values (NaN/inf); the checkpoint is corrupt"
    )
