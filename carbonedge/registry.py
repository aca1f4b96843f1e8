"""Named registries for everything pluggable: models, intensity providers, plan strategies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from carbonedge.errors import CarbonEdgeError, ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, filled by a decorator; an unknown name is an error listing the known."""

    def __init__(self, kind: str, *, unknown: type[CarbonEdgeError] = ConfigError,
                 field: str | None = None) -> None:
        self.kind = kind
        self._unknown = unknown
        self._field = field
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its target under ``name`` (a duplicate is a ConfigError)."""

        def decorate(item: T) -> T:
            if name in self._items:
                raise ConfigError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return decorate

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: object) -> T:
        item = self._items.get(name) if isinstance(name, str) else None
        if item is None:
            raise self._unknown(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}", field=self._field
            )
        return item

    def __contains__(self, name: object) -> bool:
        return name in self._items
