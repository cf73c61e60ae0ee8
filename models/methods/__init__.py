"""Anomaly methods as plug-ins: each is one file with its config class and spec, registered by name.

    from models.methods import get_method, method_names
    spec = get_method("eel"); cfg = spec.default_config()
    model = spec.build(cfg, segmenter); parts = spec.loss(cfg, model, images, labels, extras, generator, progress)

A new method is a new module here (config + spec + ``@register_method``) imported below, plus its tests; or a module
in another package, declared as an ``anomalyforge.methods`` entry point (README: "Plug-ins").
"""

# the built-in methods register themselves on import
from models.methods import eel, eel_mask, m2a, ovr, pebal, rba, rpl, rpl_corocl, sleeg  # noqa: E402, F401, I001
from models.methods.base import Inference, MethodConfig, MethodSpec, TrainingProgress, resize_logits
from models.methods.registry import get_method, method_config, method_names, register_method
from schemas.registries import METHODS

__all__ = [
    "METHODS",
    "Inference",
    "MethodConfig",
    "MethodSpec",
    "get_method",
    "method_config",
    "method_names",
    "register_method",
    "TrainingProgress",
    "resize_logits",
]
