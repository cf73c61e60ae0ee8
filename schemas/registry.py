"""One registry shape for every extension point (timm's ``register_model`` / ``list_models``, pytest's entry-point
plug-ins).

    SCORES = Registry("score", group="anomalyforge.scores")

    @SCORES.register("energy")                     # a function, a class or an instance; optionally its config
    def energy(logits): ...

    SCORES.get("energy"); SCORES.names(); SCORES.config("energy"); "energy" in SCORES

Entries come from two places, filled the same way:

* modules that decorate their entries, once imported;
* package entry points of the registry's ``group`` (``importlib.metadata``): each entry point names a module (or an
  object in it) that registers its entries when loaded. The project declares its own built-in modules this way in
  ``pyproject.toml``, so a separate package adds a method, score, scene source, ... by declaring the same kind of
  entry point, without touching this project. Entry points are loaded on the first lookup (``get``, ``names``,
  ``in``, iteration), never at import time: this module imports nothing of ours, so configs (``schemas``) can check
  a name against a registry without importing the layers that fill it.

An unknown name raises ``UnknownNameError`` (a ``ValueError``, so pydantic reports it as a field error) listing the
registered names and suggesting the closest.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: the distribution whose entry points are the built-ins (loaded first, so registry order stays the code's order)
PROJECT = "anomalyforge"


class UnknownNameError(ValueError, LookupError):
    """A name that no entry of a registry has: the message lists the registered names and the closest one."""

    def __init__(self, kind: str, name: object, names: list[str]):
        self.kind, self.name, self.names = kind, name, names
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        listed = ", ".join(names) or "none (the built-ins are entry points: is anomalyforge installed? make install)"
        super().__init__(f"unknown {kind} {name!r}{hint}; registered: {listed}")


class PluginError(RuntimeError):
    """An entry point that cannot be loaded (its module fails to import): names the plug-in and the error."""


class Registry(Generic[T]):
    """Name -> entry (with an optional pydantic config class per entry), in registration order.

    ``kind`` is the singular noun used in messages (``method``, ``scene source``); ``group`` the entry-point group
    (default ``anomalyforge.<kind>s``, spaces as underscores). ``check(entry)``, if given, validates an entry when it
    is registered (a method's config must default its name, ...)."""

    def __init__(self, kind: str, group: str | None = None, check: Callable[[str, Any, Any], None] | None = None):
        self.kind = kind
        self.group = group or f"anomalyforge.{kind.replace(' ', '_')}s"
        self._check = check
        self._entries: dict[str, T] = {}
        self._configs: dict[str, Any] = {}
        self._loaded = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ filling
    def register(self, name: str, entry: T | None = None, *, config: Any = None):
        """``register(name, entry, config=C)``, or as a decorator ``@register(name, config=C)``. Registering the
        same object again is a no-op; another object under a taken name is an error (two plug-ins collide)."""
        if entry is None:

            def deco(obj: T) -> T:
                self.register(name, obj, config=config)
                return obj

            return deco
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names are non-empty strings, got {name!r}")
        with self._lock:
            old = self._entries.get(name)
            if old is not None and old is not entry and _qualname(old) != _qualname(entry):
                raise ValueError(f"{self.kind} {name!r} is registered twice ({_qualname(old)} and {_qualname(entry)})")
            if self._check is not None:
                self._check(name, entry, config)
            self._entries[name] = entry
            if config is not None:
                self._configs[name] = config
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and plug-in authors replacing an entry); unknown names are ignored."""
        with self._lock:
            self._entries.pop(name, None)
            self._configs.pop(name, None)

    def load_plugins(self) -> None:
        """Load every entry point of ``group`` once: the project's own first, then other distributions by name."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True  # set first: a module being loaded may look names up
            eps = importlib.metadata.entry_points(group=self.group)
            for ep in sorted(eps, key=_entry_point_order):
                try:
                    ep.load()
                except Exception as e:
                    self._loaded = False  # every later lookup fails the same way, never on a partial registry
                    dist = ep.dist.name if ep.dist is not None else "?"
                    raise PluginError(
                        f"{self.kind} plug-in {ep.name!r} ({ep.value}, from {dist}) failed to load: "
                        f"{type(e).__name__}: {e}"
                    ) from e

    # ------------------------------------------------------------------ reading
    def get(self, name: str) -> T:
        self.load_plugins()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, name, self.names()) from None

    def config(self, name: str) -> Any:
        """The entry's config class (``None`` when it was registered without one)."""
        self.get(name)
        return self._configs.get(name)

    def names(self) -> list[str]:
        self.load_plugins()
        return list(self._entries)

    def check_name(self, name: str) -> str:
        """``name`` if registered, else ``UnknownNameError``: for pydantic field validators."""
        self.get(name)
        return name

    def items(self) -> list[tuple[str, T]]:
        self.load_plugins()
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


def _qualname(obj: object) -> str:
    target = obj if callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"


def _entry_point_order(ep: importlib.metadata.EntryPoint) -> tuple[bool, str, str]:
    dist = ep.dist.name if ep.dist is not None else ""
    return (dist != PROJECT, dist, ep.name)
