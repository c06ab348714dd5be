"""Field helpers for config dataclasses: aliases, attribute docstrings, errors.

Every config field is a knob with one owner. Its flag is the field name with dashes; its help text
is the attribute docstring written under it (read once with ``ast``); aliases exist only for
spellings our users already type (seed documents, Megatron-DeepSpeed scripts).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import textwrap
from typing import Any

SECTION = {"frozen": True, "kw_only": True, "slots": True}
"""Keyword arguments shared by every config section's ``@dataclass``."""


class ConfigError(ValueError):
    """A user-facing configuration error. The message starts with the flag it is about."""


def knob(
    default: Any = dataclasses.MISSING,
    *,
    aliases: tuple[str, ...] = (),
    names: str | None = None,
    **kw: Any,
) -> Any:
    """A dataclass field with CLI aliases.

    Args:
        default: The default value.
        aliases: Extra flag spellings (with leading dashes) that set this field.
        names: ``"module:function"`` returning the registered names a ``str`` field accepts
            (listed by ``--help``; imported only when the CLI is built or the value checked).
        **kw: Passed to ``dataclasses.field`` (e.g. ``default_factory``).

    Returns:
        A ``dataclasses.Field``.
    """
    return dataclasses.field(default=default, metadata={"aliases": aliases, "names": names}, **kw)


def _names_target(ref: str) -> Any:
    """The ``"module:REGISTRY"`` (a ``megatron.registry.Registry``) or ``"module:function"`` of a
    ``knob(names=...)`` field. Config refers to a registry only this way (imported when the value
    is needed), so ``megatron.config`` imports no registry module."""
    import importlib

    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def call_ref(ref: str) -> Any:
    """Call the ``"module:function"`` ``ref`` names (imported when the value is needed)."""
    return _names_target(ref)()


def registered_names(ref: str) -> tuple[str, ...]:
    """The names a ``knob(names=...)`` field accepts."""
    target = _names_target(ref)
    return tuple(getattr(target, "names", target)())


def require_registered(obj: Any, name: str, what: str = "value") -> None:
    """Check that field ``name`` of ``obj`` is one of its registry's names (``knob(names=...)``);
    a registry raises its own flag-named error, a names function's error says "unknown <what>"."""
    ref = next(f for f in dataclasses.fields(obj) if f.name == name).metadata["names"]
    target, value = _names_target(ref), getattr(obj, name)
    if hasattr(target, "names"):
        target.get(value)  # ConfigError: "--flag 'value': unknown <kind>; known: ..."
        return
    known = tuple(target())
    if value not in known:
        raise ConfigError(f"{flag_name(name)}: unknown {what} {value!r}; known: {list(known)}")


def flag_name(field_name: str, prefix: str = "") -> str:
    """The canonical CLI flag of a field: ``lr_warmup_iters`` -> ``--lr-warmup-iters``."""
    name = f"{prefix}_{field_name}" if prefix else field_name
    return "--" + name.replace("_", "-")


@functools.cache
def attribute_docs(cls: type) -> dict[str, str]:
    """Map field name -> the docstring written under it in the class body.

    Args:
        cls: A dataclass whose source is available.

    Returns:
        The attribute docstrings, whitespace-normalised; fields without one are absent.
    """
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0]
    docs: dict[str, str] = {}
    assert isinstance(body, ast.ClassDef)
    statements = body.body
    for stmt, nxt in zip(statements, statements[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def require(condition: bool, flag: str, reason: str) -> None:
    """Raise ``ConfigError("--flag: reason")`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{flag}: {reason}")


def require_positive(obj: Any, *names: str) -> None:
    """Check that the named integer/float fields of ``obj`` are > 0 (None is allowed)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None:
            require(value > 0, flag_name(name), f"must be > 0, got {value}")  # NaN fails here too
            # inf would pass `> 0` and turn the run into NaNs at the first step.
            require(math.isfinite(value), flag_name(name), f"must be finite, got {value}")


def require_ratio(obj: Any, *names: str, closed: bool = True) -> None:
    """Check that the named fields of ``obj`` lie in [0, 1] (or [0, 1) when not ``closed``)."""
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        ok = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
        interval = "[0, 1]" if closed else "[0, 1)"
        require(ok, flag_name(name), f"must be in {interval}, got {value}")
