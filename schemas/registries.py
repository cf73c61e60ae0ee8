"""Every extension point of anomalyforge, one ``Registry`` each (``schemas/registry.py``).

The registries are declared here, at the bottom layer, so a config can check a name against one (``HarmonizeConfig``
takes ``method`` from ``HARMONIZERS``, ``TrainConfig.method`` its config class from ``METHODS``) without importing
the layers that fill them. Entries are registered by the modules that define them (``@METHODS.register(...)`` in
``models/methods/eel.py``, ...); those modules are found through the ``anomalyforge.*`` entry points of
``pyproject.toml``, and a separate package adds its own the same way (see the README's "Plug-ins").

``anomalyforge list [KIND]`` prints any of them.
"""

from __future__ import annotations

from typing import Any

from schemas.registry import Registry


def _config_defaults(field: str):
    """An entry's config class must default ``field`` to the entry's name (``name: eel``, ``kind: cityscapes``), so
    a section that only says the name validates to that entry's defaults."""

    def check(name: str, entry: Any, config: Any) -> None:
        if config is None:
            raise ValueError(f"{name!r} is registered without its config class")
        default = config.model_fields[field].default
        if default != name:
            raise ValueError(f"{config.__name__} must default {field} to {name!r}, not {default!r}")

    return check


#: anomaly methods trained over a frozen segmenter: a ``MethodSpec`` instance, with its ``MethodConfig`` subclass
METHODS: Registry = Registry("method", "anomalyforge.methods", check=_config_defaults("name"))
#: frozen segmenters: a constructor ``(**options) -> FrozenSegmenter``
SEGMENTERS: Registry = Registry("segmenter", "anomalyforge.segmenters")
#: post-hoc anomaly scores: ``(logits (B,C,H,W)) -> (B,H,W)``, higher = more anomalous
SCORES: Registry = Registry("score", "anomalyforge.scores")
#: scene sources of the synth flow: a ``SceneSource``, with its ``ScenesConfig`` subclass
SCENE_SOURCES: Registry = Registry("scene source", "anomalyforge.scene_sources", check=_config_defaults("kind"))
#: object sources of the object bank: an ``ObjectSource``, with its config class
OBJECT_SOURCES: Registry = Registry("object source", "anomalyforge.object_sources")
#: adverse conditions: an ``Effect`` (its render function and options); ``clear`` is no entry
WEATHER: Registry = Registry("weather condition", "anomalyforge.weather")
#: object harmonizers: a class built from ``HarmonizeConfig``
HARMONIZERS: Registry = Registry("harmonizer", "anomalyforge.harmonizers")
#: diffusers schedulers: ``(pipeline) -> scheduler``
SCHEDULERS: Registry = Registry("scheduler", "anomalyforge.schedulers")
#: evaluation dataset readers: ``(root, name, split, val_fraction) -> dataset``
BENCHMARKS: Registry = Registry("benchmark", "anomalyforge.benchmarks")
#: label encodings of scene datasets: a ``LabelEncoding`` (id -> trainId table)
LABEL_ENCODINGS: Registry = Registry("label encoding", "anomalyforge.label_encodings")
#: optimizers a method config can name: ``(param groups, method config, weight decay) -> Optimizer``
OPTIMIZERS: Registry = Registry("optimizer", "anomalyforge.optimizers")
#: extra per-step training data a method asks for: an ``ExtraData`` class
EXTRA_DATA: Registry = Registry("extra training data", "anomalyforge.extra_data")

#: ``anomalyforge list KIND``: the registries by the name the CLI takes
ALL: dict[str, Registry] = {
    "methods": METHODS,
    "segmenters": SEGMENTERS,
    "scores": SCORES,
    "scene_sources": SCENE_SOURCES,
    "object_sources": OBJECT_SOURCES,
    "weather": WEATHER,
    "harmonizers": HARMONIZERS,
    "schedulers": SCHEDULERS,
    "benchmarks": BENCHMARKS,
    "label_encodings": LABEL_ENCODINGS,
    "optimizers": OPTIMIZERS,
    "extra_data": EXTRA_DATA,
}
