"""Methods in the one registry of methods (``schemas.registries.METHODS``, like timm's ``register_model``): a method
is registered once, by decorating its spec class; configs, the CLI, the trainer and the docs read the names there."""

from __future__ import annotations

from models.methods.base import MethodSpec
from schemas import method_config
from schemas.registries import METHODS

__all__ = ["get_method", "method_config", "method_names", "register_method"]


def register_method(cls: type[MethodSpec]) -> type[MethodSpec]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``, with ``cls.config`` as its config class
    (which must default ``name`` to ``cls.name``). Specs are stateless, so one instance serves every caller."""
    METHODS.register(cls.name, cls(), config=cls.config)
    return cls


def get_method(name: str) -> MethodSpec:
    return METHODS.get(name)


def method_names() -> list[str]:
    return METHODS.names()
