"""The one registry of anomaly methods (like timm's ``register_model`` / ``create_model``): a method is registered
once, by decorating its spec class; configs, the CLI, the trainer and the docs read the names from here."""

from __future__ import annotations

from models.methods.base import MethodConfig, MethodSpec

METHODS: dict[str, MethodSpec] = {}


def register_method(cls: type[MethodSpec]) -> type[MethodSpec]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    name = cls.name
    if name in METHODS and type(METHODS[name]) is not cls:
        raise ValueError(f"method {name!r} is registered twice ({type(METHODS[name]).__name__} and {cls.__name__})")
    default_name = cls.config.model_fields["name"].default
    if default_name != name:
        raise ValueError(f"{cls.__name__}.config must default name to {name!r}, not {default_name!r}")
    METHODS[name] = cls()
    return cls


def unregister_method(name: str) -> None:
    METHODS.pop(name, None)


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(METHODS) or 'none'}") from None


def method_config(data) -> MethodConfig:
    """A method config from its dict (``{name: eel, lam: 0.05}``), a bare name (``"eel"``: that method's defaults)
    or an instance; validated by the named method's own config class."""
    if isinstance(data, MethodConfig):
        data = data.model_dump()
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict) or "name" not in data:
        raise ValueError(f"method must be a name or a mapping with a name (one of {', '.join(METHODS)}), got {data!r}")
    return get_method(data["name"]).config.model_validate(data)
