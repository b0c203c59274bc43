"""Name -> entry registries filled by a decorator, so a new strategy, dataset, source or model is one new entry.

An entry may declare the options it reads (a dataclass of `config.option` fields with `validate()`): each becomes
a run option (CLI flag, TOML key, sweep axis), recorded in every run's config.json.

>>> from ambig_bench.registry import Registry
>>> shapes = Registry("shape")
>>> @shapes.register("square")
... class Square:
...     "Four equal sides."
>>> shapes.names(), shapes.options("square")
(['square'], None)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from ambig_bench.errors import UserError
from ambig_bench.shown import brief

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, family: Callable[[str], T | None] | None = None) -> None:
        self.kind = kind  # "strategy", "dataset", ...: used in error messages
        self._items: dict[str, T] = {}
        self._options: dict[str, type] = {}  # name -> the options dataclass its entry reads, where it declares one
        # Entries made on first use from a name pattern (e.g. `timm:<architecture>`); None for other names.
        self._family = family

    def register(self, name: str, options: type | None = None) -> Callable[[T], T]:
        """Add an entry under `name` (refused when the name is taken), with the options dataclass it reads."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            if options is not None:
                self._options[name] = options
            item.name = name
            return item

        return add

    def options(self, name: str) -> type | None:
        """The options dataclass the entry `name` reads; None when it reads none."""
        return self._options.get(name)

    def declared_options(self) -> dict[str, type]:
        """Every entry's options dataclass by entry name, for the entries that declare one, in registration order."""
        return dict(self._options)

    def get(self, name: str) -> T:
        if name not in self._items and self._family and (item := self._family(name)) is not None:
            self.register(name)(item)
        if name not in self._items:
            raise unknown(self.kind, name, self.names())
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def describe(self) -> dict[str, str]:
        """One line per entry: the first line of its docstring."""
        return {n: (item.__doc__ or "").strip().splitlines()[0] for n, item in self._items.items()}

    def parse_list(self, text: str) -> list[str]:
        return parse_names(text, self.names(), self.kind)


def parse_names(text: str, known: list[str], kind: str) -> list[str]:
    """`"soft,partial"` -> ["soft", "partial"]; `"all"` -> every known name, in registration order."""
    if text.strip() == "all":
        return list(known)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"no {kind} given")
    for n in names:
        if n not in known:
            raise unknown(kind, n, known)
    return list(dict.fromkeys(names))


def unknown(kind: str, name: str, known: list[str]) -> UserError:
    return UserError(f"unknown {kind} {brief(name)}; choose from: {', '.join(known)}")
