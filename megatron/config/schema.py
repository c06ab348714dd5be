"""Walk the config dataclasses as a flat list of knobs, and build a ``Config`` from values.

A knob is one leaf field: its path in the tree, its flag, aliases, type, default and help. The
CLI, the ``--config`` file loader, the dry-run printer and the flag snapshot test all use this
one walk, so the CLI cannot drift from the dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from megatron.config.fields import (
    ConfigError,
    attribute_docs,
    call_ref,
    flag_name,
    registered_names,
)
from megatron.config.root import Config

Path = tuple[str, ...]
OPTIONS_FIELD = ("optim", "options")
OPTION_SECTIONS = "megatron.optimizer.registry:option_sections"  # {optimizer: options dataclass}


@dataclass(frozen=True, slots=True)
class Knob:
    """One configurable leaf.

    Attributes:
        path: Location in the tree, e.g. ``("optim", "lr")`` or
            ``("optim", "options", "muon", "momentum")``.
        flag: Canonical flag, e.g. ``--lr`` or ``--muon-momentum``.
        aliases: Other accepted spellings.
        kind: ``bool``, ``int``, ``float``, ``str`` or ``choice``.
        choices: Allowed values for ``choice``.
        optional: True when None is a valid value (the default means "derive it").
        default: Default value.
        help: Attribute docstring.
    """

    path: Path
    flag: str
    aliases: tuple[str, ...]
    kind: str
    choices: tuple[Any, ...]
    optional: bool
    default: Any
    help: str

    @property
    def name(self) -> str:
        """The flag without dashes, underscored: the ``--config`` file key."""
        return self.flag[2:].replace("-", "_")


def _classify(annotation: Any) -> tuple[str, tuple[Any, ...], bool]:
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) != 1:
            raise TypeError(f"unsupported config annotation {annotation!r}")
        annotation = args[0]
    if typing.get_origin(annotation) is Literal:
        return "choice", typing.get_args(annotation), optional
    if annotation in (bool, int, float, str):
        return annotation.__name__, (), optional
    raise TypeError(f"unsupported config annotation {annotation!r}")


def _section_knobs(cls: type, path: Path, prefix: str = "") -> list[Knob]:
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    knobs = []
    for f in dataclasses.fields(cls):
        if path + (f.name,) == OPTIONS_FIELD:
            continue
        kind, choices, optional = _classify(hints[f.name])
        if f.metadata.get("names"):
            choices = registered_names(f.metadata["names"])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        knobs.append(
            Knob(
                path=path + (f.name,),
                flag=flag_name(f.name, prefix),
                aliases=tuple(f.metadata.get("aliases", ())),
                kind=kind,
                choices=choices,
                optional=optional,
                default=default,
                help=docs.get(f.name, ""),
            )
        )
    return knobs


@functools.cache
def iter_knobs() -> tuple[Knob, ...]:
    """Every knob of ``Config``, sections first, then per-optimizer option sections."""
    knobs: list[Knob] = []
    for section in dataclasses.fields(Config):
        knobs += _section_knobs(typing.get_type_hints(Config)[section.name], (section.name,))
    for name, cls in sorted(call_ref(OPTION_SECTIONS).items()):
        knobs += _section_knobs(cls, OPTIONS_FIELD + (name,), prefix=name)
    flags = [k.flag for k in knobs] + [a for k in knobs for a in k.aliases]
    duplicates = {f for f in flags if flags.count(f) > 1}
    if duplicates:
        raise TypeError(f"config flags defined twice: {sorted(duplicates)}")
    return tuple(knobs)


def knob_by_flag() -> dict[str, Knob]:
    """Flag or alias (canonical dashed spelling) -> knob."""
    table = {}
    for k in iter_knobs():
        table[k.flag] = k
        for alias in k.aliases:
            table[normalize_flag(alias)] = k
    return table


def suggest_flag(flag: str) -> str:
    """'; did you mean --x?' for a near miss of a known flag, else ''."""
    close = difflib.get_close_matches(normalize_flag(flag), list(knob_by_flag()), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def normalize_flag(token: str) -> str:
    """``--lr_constant_plus_cooldown`` -> ``--lr-constant-plus-cooldown`` (value part kept)."""
    if not token.startswith("--"):
        return token
    name, sep, value = token.partition("=")
    return name.replace("_", "-") + sep + value


def convert(knob: Knob, value: Any) -> Any:
    """Convert a CLI string or a config-file value to the knob's type.

    Raises:
        ConfigError: The value does not parse; the message names the flag.
    """
    if value is None:
        if knob.optional:
            return None
        raise ConfigError(f"{knob.flag}: a value is required")
    try:
        if knob.kind == "bool":
            if isinstance(value, bool):
                return value
            lowered = str(value).lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if knob.kind == "int":
            return _to_int(value)
        if knob.kind == "float":
            return float(value)
        if knob.kind == "str":
            return str(value)  # registry names (knob.choices) are checked by the section
    except (TypeError, ValueError):
        raise ConfigError(f"{knob.flag}: invalid {knob.kind} value {value!r}") from None
    # choice: compare as the choices' own type
    for choice in knob.choices:
        if str(choice) == str(value):
            return choice
    raise ConfigError(f"{knob.flag}: {value!r} is not one of {list(knob.choices)}")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    text = str(value).replace("_", "")
    try:
        return int(text)
    except ValueError:
        number = float(text)  # 2e10 tokens is a whole number
        if not number.is_integer():
            raise
        return int(number)


def build_config(values: dict[Path, Any]) -> Config:
    """Build a ``Config`` from defaults overridden by ``values`` (path -> typed value).

    Raises:
        ConfigError: A section's own validation failed.
    """
    by_section: dict[str, dict[str, Any]] = {}
    options: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        if path[:2] == OPTIONS_FIELD:
            options.setdefault(path[2], {})[path[3]] = value
        else:
            by_section.setdefault(path[0], {})[path[1]] = value
    hints = typing.get_type_hints(Config)
    sections = {}
    for section in dataclasses.fields(Config):
        kwargs = by_section.get(section.name, {})
        if section.name == "optim":
            kwargs["options"] = {
                name: cls(**options.get(name, {})) for name, cls in call_ref(OPTION_SECTIONS).items()
            }
        sections[section.name] = hints[section.name](**kwargs)
    return Config(**sections)


def config_values(cfg: Config) -> dict[Path, Any]:
    """Every knob's value in ``cfg`` (the inverse of ``build_config``)."""
    values = {}
    for knob in iter_knobs():
        node: Any = cfg
        for part in knob.path:
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        values[knob.path] = node
    return values
