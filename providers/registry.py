"""Finds providers by name through the `identify.providers` entry-point group.

Built-in providers are declared in this project's pyproject.toml exactly as a
third-party package would declare its own, so the core never names one."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from providers.base import Provider

ProviderClass = type[Provider[Any]]

GROUP = "identify.providers"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokenProvider:
    """A declared provider whose code could not be loaded."""

    name: str
    why: str


class Registry:
    def __init__(
        self, classes: dict[str, ProviderClass], broken: dict[str, BrokenProvider]
    ) -> None:
        self._classes = classes
        self._broken = broken

    @classmethod
    def discover(cls) -> Registry:
        classes: dict[str, ProviderClass] = {}
        broken: dict[str, BrokenProvider] = {}
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            loaded = _load(ep)
            if isinstance(loaded, BrokenProvider):
                broken[ep.name] = loaded
            else:
                classes[ep.name] = loaded
        return cls(classes, broken)

    def get(self, name: str) -> ProviderClass | None:
        return self._classes.get(name)

    def broken(self, name: str) -> BrokenProvider | None:
        return self._broken.get(name)

    def names(self) -> list[str]:
        return sorted(self._classes)


def _load(ep: EntryPoint) -> ProviderClass | BrokenProvider:
    try:
        obj = ep.load()
    except ImportError as exc:
        log.warning("provider %s is declared but cannot be imported: %s", ep.name, exc)
        return BrokenProvider(ep.name, "not implemented in this build")
    if not (isinstance(obj, type) and issubclass(obj, Provider)):
        log.warning("provider %s does not point at a Provider subclass", ep.name)
        return BrokenProvider(ep.name, "entry point is not a Provider")
    if obj.name != ep.name:
        log.warning("provider %s: class says name %r; the entry point name wins", ep.name, obj.name)
    return obj
