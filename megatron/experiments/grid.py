"""Sweep grids: ``--grid 'lr=1e-4,3e-4'`` axes over config keys, expanded into named runs.

A grid key is a ``--config`` file key (a flag without dashes, underscored: ``adam_beta2``); the
flag spelling (``--adam-beta2``) is accepted too. Keys and values are checked against the config
schema before anything runs: an unknown key, an empty axis, a repeated key or a value of the
wrong type is a one-line error naming the ``--grid`` it came from. Torch-free.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field
from typing import Any

from megatron.config.fields import ConfigError
from megatron.config.schema import Knob, convert, iter_knobs, knob_by_flag, normalize_flag


@dataclass(frozen=True, slots=True)
class Axis:
    """One swept knob and its values (typed, in the order given)."""

    knob: Knob
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One run of a sweep.

    Attributes:
        name: Directory name, derived from the overrides (deterministic, filesystem-safe).
        overrides: Config key -> value, in axis order.
        flags: The trainer flags the overrides become (``--lr 0.0003 ...``).
        configs: Extra ``--config`` files (after the base), e.g. an architecture preset.
        labels: Extra columns for the results (an isoFLOP run's budget and rung).
    """

    name: str
    overrides: dict[str, Any]
    flags: tuple[str, ...]
    configs: tuple[str, ...] = field(default=())
    labels: dict[str, Any] = field(default_factory=dict)


def find_knob(key: str, where: str) -> Knob:
    """The knob a grid key names (``lr``, ``adam_beta2`` or ``--adam-beta2``).

    Raises:
        ConfigError: No such knob; the message names ``where`` and suggests close names.
    """
    flag = normalize_flag(key if key.startswith("--") else "--" + key.replace("_", "-"))
    knob = knob_by_flag().get(flag)
    if knob is None:
        names = sorted(k.name for k in iter_knobs())
        close = [n for n in names if key.strip("-").replace("-", "_") in n][:5]
        hint = f"; did you mean {', '.join(close)}?" if close else "; keys are the --config file keys (e.g. lr)"
        raise ConfigError(f"{where}: unknown config key {key!r}{hint}")
    return knob


def parse_axis(text: str) -> Axis:
    """``'lr=1e-4,3e-4'`` -> an axis with typed values.

    Raises:
        ConfigError: Malformed, unknown key, empty or repeated values, or a bad value.
    """
    where = f"--grid {text!r}"
    key, sep, values = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{where}: expected KEY=V1,V2,... (e.g. lr=1e-4,3e-4)")
    knob = find_knob(key.strip(), where)
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"{where}: no values for {knob.name}; give at least one (KEY=V1,V2)")
    try:
        typed = tuple(convert(knob, v) for v in items)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if len(set(map(str, typed))) != len(typed):
        raise ConfigError(f"{where}: a value is repeated")
    return Axis(knob, typed)


def parse_axes(texts: list[str]) -> list[Axis]:
    """All ``--grid`` axes; a knob swept twice is an error."""
    if not texts:
        raise ConfigError("--grid: give at least one axis (e.g. --grid lr=1e-4,3e-4)")
    axes = [parse_axis(t) for t in texts]
    seen: dict[str, str] = {}
    for axis, text in zip(axes, texts, strict=True):
        if axis.knob.flag in seen:
            raise ConfigError(f"--grid {text!r}: {axis.knob.name} is already swept by --grid {seen[axis.knob.flag]!r}")
        seen[axis.knob.flag] = text
    return axes


def format_value(value: Any) -> str:
    """A value as the flag's text: floats in ``%g`` style with full precision, bools 1/0."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if float(f"{value:g}") != value else f"{value:g}"
    return str(value)


def run_name(overrides: dict[str, Any]) -> str:
    """``{'lr': 0.0003, 'adam_beta2': 0.95}`` -> ``lr-0.0003__adam_beta2-0.95``."""
    parts = [f"{key}-{format_value(value)}" for key, value in overrides.items()]
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", "__".join(parts)) or "base"


def override_flags(overrides: dict[str, Any]) -> tuple[str, ...]:
    """Trainer flags for ``{key: value}`` (bools as ``--flag`` / ``--no-flag``)."""
    flags: list[str] = []
    for key, value in overrides.items():
        knob = find_knob(key, f"override {key}")
        if knob.kind == "bool":
            flags.append(knob.flag if value else "--no-" + knob.flag[2:])
        else:
            flags += [knob.flag, format_value(value)]
    return tuple(flags)


def make_run(overrides: dict[str, Any], configs: tuple[str, ...] = (), name: str | None = None) -> RunSpec:
    """A run from its overrides (and extra ``--config`` files)."""
    return RunSpec(name=name or run_name(overrides), overrides=dict(overrides),
                   flags=override_flags(overrides), configs=configs)


def expand(axes: list[Axis], random_count: int | None = None, seed: int = 0) -> list[RunSpec]:
    """The grid's runs: the full product, or ``random_count`` distinct points of it drawn with
    ``seed`` (random search over the grid; the same seed draws the same runs).

    Raises:
        ConfigError: ``random_count`` not in 1..size of the grid.
    """
    points = [dict(zip((a.knob.name for a in axes), combo, strict=True))
              for combo in itertools.product(*(a.values for a in axes))]
    if random_count is not None:
        if not 1 <= random_count <= len(points):
            raise ConfigError(f"--random: {random_count} is not in 1..{len(points)} (the grid's size)")
        picked = sorted(random.Random(seed).sample(range(len(points)), random_count))
        points = [points[i] for i in picked]
    return [make_run(p) for p in points]
