"""One registry type for every pluggable choice: optimizers, schedules, objectives, ...

A registry maps the value a user types after one flag (``--optimizer muon``) to a registered
entry. Every registry behaves the same way:

- an unknown name raises ``ConfigError`` whose message starts with the flag and lists the known
  names (the user typed it, so the user gets the flag-named error);
- registering a name twice raises ``ValueError`` (a programming error, caught by import);
- entries that live in modules imported on demand are loaded once, on the first lookup, from the
  ``loader`` module (the package whose ``__init__`` imports every entry's module);
- tests replace or add an entry only through ``override``, which restores the registry after.

The registry is a read-only ``Mapping``: ``name in REG``, ``REG[name]``, ``sorted(REG)`` and
``REG.items()`` work as on the plain dicts they replace.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from megatron.config.fields import ConfigError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Named entries chosen by one flag.

    Args:
        kind: What an entry is, in words ("optimizer", "LR schedule"); used in messages.
        flag: The flag whose value names an entry (``--optimizer``); unknown names are reported
            against it. None for an internal registry whose entries are hooks that all run in
            turn (nobody types their names): an unknown name there is a programming error
            (``KeyError``).
        loader: Module imported (once) before the first lookup so that every entry is registered,
            or None when the registering modules are always imported with the registry.
    """

    def __init__(self, kind: str, flag: str | None, *, loader: str | None = None) -> None:
        self.kind = kind
        self.flag = flag
        self._loader = loader
        self._loaded = loader is None
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name`` and return it.

        Raises:
            ValueError: ``name`` is already registered.
        """
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice ({self.flag or 'internal'})")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of ``add``: ``@REG.register("name")`` over a function or class."""

        def decorate(entry: T) -> T:
            return self.add(name, entry)

        return decorate

    def get(self, name: str, default: object = None) -> T:  # type: ignore[override]
        """The entry registered as ``name``.

        Raises:
            ConfigError: Unknown name, naming the flag and the known names (``default`` is
                accepted for ``Mapping`` compatibility only when given explicitly).
        """
        self._ensure_loaded()
        if name in self._entries:
            return self._entries[name]
        if default is not None:
            return default  # type: ignore[return-value]
        known = ", ".join(self.names()) or "(none)"
        if self.flag is None:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}")
        raise ConfigError(f"{self.flag} {name!r}: unknown {self.kind}; known: {known}")

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._ensure_loaded()
        return sorted(self._entries)

    @contextlib.contextmanager
    def override(self, name: str, entry: T) -> Iterator[T]:
        """Test helper: register or replace ``name`` for the duration of a ``with`` block."""
        self._ensure_loaded()
        missing = object()
        before = self._entries.get(name, missing)
        self._entries[name] = entry
        try:
            yield entry
        finally:
            if before is missing:
                del self._entries[name]
            else:
                self._entries[name] = before  # type: ignore[assignment]

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True  # set first: the loader's own imports may look names up
            try:
                importlib.import_module(self._loader)  # type: ignore[arg-type]
            except BaseException:
                self._loaded = False
                raise

    def __getitem__(self, name: str) -> T:
        self._ensure_loaded()
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._ensure_loaded()
        return iter(self._entries)

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.flag!r}, {sorted(self._entries)})"
