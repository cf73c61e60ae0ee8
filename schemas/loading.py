"""Reading configs: YAML (``safe_load``), ``--set`` overrides, and one error naming the file and every problem."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from schemas.compare import AblationConfig, CompareConfig
from schemas.evaluation import EvalConfig, WeatheredBenchmarkConfig
from schemas.synth import SynthConfig, replace_scenes
from schemas.train import TrainConfig


class ConfigError(ValueError):
    """A config file that does not validate: the file's name and every field's problem, one per line."""


def validate_config(model: type[BaseModel], data: dict, path: str | Path):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{path}: {len(lines)} problem(s) in the config:\n  " + "\n  ".join(lines)) from None


class _DuplicateKey(Exception):
    def __init__(self, key, first: int, second: int):
        super().__init__(key, first, second)
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (still safe: the same constructors) that refuses a mapping with a key twice, at any
    level; PyYAML would keep the last value silently. Merge keys (``<<: *anchor``) are overridden, not duplicated."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # unhashable keys: PyYAML's own error follows
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, overrides: dict | None) -> dict:
    """The mapping of a YAML config file (safe loading); an empty file, one that is no mapping or has a key twice
    is a ``ConfigError`` naming the file."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe loading
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except _DuplicateKey as e:
        where = f"on line {e.first}" if e.first == e.second else f"(lines {e.first} and {e.second})"
        raise ConfigError(f"{path}: key {e.key!r} appears twice {where}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty (no settings, only comments or null)")
    if not isinstance(data, dict):
        what = "a list" if isinstance(data, list) else f"a single value ({str(data)[:40]!r})"
        raise ConfigError(f"{path}: a config file must be a mapping of settings (key: value lines), not {what}")
    return apply_overrides(data, overrides)


def apply_overrides(data: dict, overrides: dict | None) -> dict:
    """Dotted keys (``method.lam``) set inside the nested mapping; a bare name in the way becomes ``{name: ...}``."""
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            if isinstance(node.get(p), str):
                node[p] = {"name": node[p]}
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def load_config(path: str | Path, overrides: dict | None = None, scenes: str | Path | None = None) -> SynthConfig:
    """Read a YAML config; relative paths inside it stay relative to the working directory. ``scenes`` (the CLI's
    ``--scenes``) replaces its scene source first (``replace_scenes``), then ``overrides`` apply."""
    data = read_yaml(path, None)
    if scenes is not None:
        data["scenes"] = replace_scenes(data.get("scenes") or {}, scenes)
    return validate_config(SynthConfig, apply_overrides(data, overrides), path)


def load_eval_config(path: str | Path, overrides: dict | None = None) -> EvalConfig:
    return validate_config(EvalConfig, read_yaml(path, overrides), path)


def load_weathered_config(path: str | Path, overrides: dict | None = None) -> WeatheredBenchmarkConfig:
    return validate_config(WeatheredBenchmarkConfig, read_yaml(path, overrides), path)


def load_train_config(path: str | Path, overrides: dict | None = None, method: str | None = None) -> TrainConfig:
    """Read a training YAML. ``method`` (the CLI's ``--method``) keeps the file's ``method:`` section when it names
    that method and otherwise takes the method's defaults; ``overrides`` (``method.lam=...`` too) come after."""
    data = read_yaml(path, None)
    if method is not None:
        current = data.get("method")
        current_name = current.get("name") if isinstance(current, dict) else current
        if current_name != method:
            data["method"] = {"name": method}
    return validate_config(TrainConfig, apply_overrides(data, overrides), path)


def load_compare_config(path: str | Path, overrides: dict | None = None) -> CompareConfig:
    return validate_config(CompareConfig, read_yaml(path, overrides), path)


def load_ablation_config(path: str | Path, overrides: dict | None = None) -> AblationConfig:
    return validate_config(AblationConfig, read_yaml(path, overrides), path)
