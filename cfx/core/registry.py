"""Registries: named kinds that code looks up instead of branching on names.

Every extensible family of cfx (model spec kinds, data source kinds, trust scores, editors, re-rendering worlds,
reporters) is a :class:`Registry`. Built-in kinds register themselves where they are defined; plugins register
theirs from the top of the layer stack, so no core module imports them. A plugin is found in two ways:

- it is imported (``import cfx.demo`` registers the ``demo:`` kinds);
- it is installed with an entry point in the ``cfx.plugins`` group, naming a callable that registers its kinds.
  When a registry is asked for a name it does not know, it loads every such entry point once and looks again, so
  ``load_classifier("demo:shapes")`` works from plain Python without importing the demo first.

A third-party package registers its own kinds the same way, in its ``pyproject.toml``::

    [project.entry-points."cfx.plugins"]
    mykinds = "mypackage.cfx_plugin:register"
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

__all__ = ["PLUGIN_GROUP", "Registry", "load_plugins"]

T = TypeVar("T")

PLUGIN_GROUP = "cfx.plugins"
_plugins_loaded = False
_plugins_lock = threading.Lock()


def load_plugins() -> list[str]:
    """Load every ``cfx.plugins`` entry point once (calling it when it is a callable); returns their names.

    A plugin that fails to load is reported with a warning and skipped, so one broken package never stops cfx.
    """
    global _plugins_loaded
    with _plugins_lock:
        if _plugins_loaded:
            return []
        _plugins_loaded = True
        loaded = []
        for ep in entry_points(group=PLUGIN_GROUP):
            try:
                target = ep.load()
                if callable(target):
                    target()
                loaded.append(ep.name)
            except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not stop cfx
                import warnings

                warnings.warn(f"cfx plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}",
                              RuntimeWarning, stacklevel=2)
        return loaded


class Registry(Generic[T]):
    """Name → object, in registration order. ``kind`` names the family in error messages ("model spec kind")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T | None = None, *, replace: bool = False):
        """Register ``item`` under ``name``; without ``item``, a decorator. A name is taken once unless
        ``replace=True``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")

        def add(obj: T) -> T:
            if name in self._items and not replace and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered; pass replace=True to override it")
            self._items[name] = obj
            return obj

        if item is None:
            return add
        return add(item)

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        """The object registered as ``name``; loads the ``cfx.plugins`` entry points once before giving up."""
        if name not in self._items:
            load_plugins()
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self._items) or '(none)'}") from None

    def find(self, name: str) -> T | None:
        """Like :meth:`get`, but ``None`` for an unknown name."""
        try:
            return self.get(name)
        except KeyError:
            return None

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def values(self) -> list[T]:
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"

