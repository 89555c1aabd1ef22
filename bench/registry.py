"""Name -> object registries shared by methods, tasks, backbones and datasets.

One small class so every lookup fails the same way: an unknown name lists the
closest known ones, and registering a name twice is refused instead of silently
shadowing the earlier entry.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate registry name; str() is the user-facing message."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """A dict of named entries with a register decorator and did-you-mean errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, entry: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
        """Register ``entry`` under ``name`` (default: its ``name`` attribute); usable as a decorator."""

        def add(obj: T) -> T:
            key = name or getattr(obj, "name", None)
            if not isinstance(key, str) or not key:
                raise RegistryError(f"cannot register {obj!r} as a {self.kind}: it has no 'name'")
            if key in self._entries and self._entries[key] is not obj:
                raise RegistryError(
                    f"{self.kind} {key!r} is already registered by {_origin(self._entries[key])}; "
                    f"pick another name for {_origin(obj)}"
                )
            self._entries[key] = obj
            return obj

        return add if entry is None else add(entry)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        hint = did_you_mean(name, self._entries)
        return f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._entries)) or 'none'}."

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """" Did you mean 'x' or 'y'?" for the known names closest to ``name``; "" when none is close."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _origin(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", type(obj).__qualname__)
    return f"{module}.{qualname}" if module else qualname


METHODS: Registry = Registry("method")
TASKS: Registry = Registry("task")
BACKBONES: Registry = Registry("backbone")
DATASETS: Registry = Registry("dataset")
