"""One registry for every kind of extension: rules, pathways, models, datasets, trackers,
reproduction targets.

A :class:`Registry` maps names to objects of one kind.  Registering a second object under a
taken name is an error (the same object again, e.g. a module imported twice, is not); looking
up an unknown name is one line naming the nearest known name and the known ones, raised as the
kind's own error class.  ``module:attr`` names an object by import path, for kinds that allow
it (a user's rule or model from a config).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


def import_path(obj: object) -> str:
    """``module:qualname`` of a class or function (its identity across re-imports)."""
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"


class Registry(dict):
    """Name -> object of one ``kind`` ("rule", "dataset", ...), read like a dict, entered through
    :meth:`register`; its errors are ``error``'s."""

    def __init__(self, kind: str, error: type[Exception] = KeyError, items: dict | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.error = error
        for name, obj in (items or {}).items():
            self.register(name, obj)

    def register(self, name: str, obj: T, *, identity: Callable[[object], str] = import_path) -> T:
        """Enter ``obj`` under ``name``; returns it.  A name taken by another object (compared by
        ``identity``, the import path by default) is an error."""
        if not isinstance(name, str) or not name:
            raise self.error(f"a {self.kind} name must be a non-empty string, not {name!r}")
        old = dict.get(self, name)
        if old is not None and identity(old) != identity(obj):
            raise self.error(f"{self.kind} name '{name}' is already registered by {identity(old)}")
        dict.__setitem__(self, name, obj)
        return obj

    def __setitem__(self, name: str, obj: object) -> None:
        self.register(name, obj)

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")``: register the decorated object under ``name``."""
        return lambda obj: self.register(name, obj)

    def lookup(self, name: str) -> T:
        """The object registered under ``name``; unknown: one line naming the nearest known name
        and every known one."""
        if name in self:
            return self[name]
        near = difflib.get_close_matches(str(name), list(self), n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise self.error(f"unknown {self.kind} '{name}'{hint} (known: {', '.join(self)})")

    def resolve(self, path: str) -> object:
        """The object a ``module:attr`` import path names (one line when it cannot be imported)."""
        module, _, attr = path.partition(":")
        try:
            obj: object = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError, ValueError) as err:
            raise self.error(f"{self.kind} '{path}': cannot import it ({err})") from None
        return obj

    def names(self) -> list[str]:
        return sorted(self)

    def copy(self) -> Registry:
        """Another registry of the same kind holding the same entries (a test's scratch copy)."""
        new = Registry(self.kind, self.error)
        dict.update(new, self)
        return new
