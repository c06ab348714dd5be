"""The command line, generated from the config dataclasses.

Precedence: dataclass defaults < ``--config FILE`` (YAML/JSON, our keys only) < explicit flags.
Flags accept ``_`` or ``-`` (``--lr_constant_plus_cooldown`` is ``--lr-constant-plus-cooldown``).
A flag given twice with different values is an error (the launcher turns env vars into flags
before the user's own, so this catches ``LR=1e-4 ... --lr 3e-4``). Unknown flags are errors with
a suggestion.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from megatron.config.fields import ConfigError
from megatron.config.root import Config
from megatron.config.schema import (
    Knob,
    Path,
    build_config,
    convert,
    iter_knobs,
    knob_by_flag,
    normalize_flag,
)

_UNSET = object()


@dataclass(frozen=True, slots=True)
class ParsedArgs:
    """The result of parsing a command line.

    Attributes:
        config: The typed config.
        explicit: Values given on the command line (path -> value), for logging.
        config_file: The ``--config`` file, if any.
        dry_run: Print the plan and DeepSpeed dict, then exit.
    """

    config: Config
    explicit: dict[Path, Any]
    config_file: str | None
    dry_run: bool


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # "argument --lr: invalid float value: 'x'" -> "--lr: invalid float value: 'x'"
        raise ConfigError(message.removeprefix("argument "))


def _dest(knob: Knob) -> str:
    return ".".join(knob.path)


def _make_action(knob: Knob, base: type[argparse.Action]) -> type[argparse.Action]:
    """An action that stores the converted value and rejects a conflicting repeat."""

    class Record(base):  # type: ignore[misc, valid-type]
        def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
            if base is argparse.BooleanOptionalAction:
                value = not (option_string or "").startswith("--no-")
            else:
                value = convert(knob, values)
            previous = getattr(namespace, self.dest, _UNSET)
            if previous is not _UNSET and previous != value:
                raise ConfigError(
                    f"{knob.flag}: given twice with different values ({previous!r} and "
                    f"{value!r}); if one comes from a launcher environment variable, "
                    "unset it or drop the flag"
                )
            setattr(namespace, self.dest, value)

    return Record


def build_parser(prog: str = "pretrain_gpt.py") -> argparse.ArgumentParser:
    """The argparse parser for every knob, plus ``--config``, ``--dry-run``, ``--deepspeed``."""
    parser = _Parser(
        prog=prog,
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
        description="GPT pretraining on megatron-core tensor-parallel layers and DeepSpeed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="YAML or JSON file of flag-name: value pairs")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved plan and DeepSpeed dict, exit"
    )
    parser.add_argument(
        "--deepspeed",
        action="store_true",
        help="accepted for Megatron-DeepSpeed scripts; DeepSpeed is always used",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for knob in iter_knobs():
        title = knob.path[2] + " options" if knob.path[0] == "optim" and len(knob.path) > 2 else knob.path[0]
        group = groups.setdefault(title, parser.add_argument_group(title))
        flags = [knob.flag, *(normalize_flag(a) for a in knob.aliases)]
        help_text = (knob.help or " ").replace("%", "%%")
        if knob.kind == "bool":
            group.add_argument(
                *flags,
                dest=_dest(knob),
                action=_make_action(knob, argparse.BooleanOptionalAction),
                help=help_text + f" (default: {knob.default})",
            )
        else:
            metavar = "{" + ",".join(map(str, knob.choices)) + "}" if knob.choices else knob.kind.upper()
            group.add_argument(
                *flags,
                dest=_dest(knob),
                action=_make_action(knob, argparse.Action),
                metavar=metavar,
                help=help_text + f" (default: {knob.default})",
            )
    return parser


def load_config_file(path: str) -> dict[Path, Any]:
    """Read a ``--config`` file: a flat mapping of flag names (``lr`` or ``lr-warmup-iters``).

    Raises:
        ConfigError: Unreadable file or a key that is not one of our flags.
    """
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path}: {e.strerror}") from None
    if path.endswith(".json"):
        raw = json.loads(text)
    else:
        import yaml

        raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of flag names to values")
    table = knob_by_flag()
    values: dict[Path, Any] = {}
    for key, value in raw.items():
        knob = table.get(normalize_flag("--" + str(key)))
        if knob is None:
            raise ConfigError(f"--config: unknown key {key!r} in {path}{_suggest('--' + str(key))}")
        values[knob.path] = convert(knob, value)
    return values


def _suggest(flag: str) -> str:
    close = difflib.get_close_matches(normalize_flag(flag), list(knob_by_flag()), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def _explicit_bools(argv: list[str]) -> list[str]:
    """``--switch=False`` -> ``--no-switch`` (and ``=True`` -> ``--switch``): scripts written for
    argparse's ``type=bool`` (the ALCF fork's ``--mup-coord-check=True``) pass a value, which is
    parsed here, never read as truthy text."""
    table = knob_by_flag()
    out = []
    for token in argv:
        name, sep, value = token.partition("=")
        knob = table.get(name) if sep and not name.startswith("--no-") else None
        if knob is not None and knob.kind == "bool":
            token = name if convert(knob, value) else "--no-" + name[2:]
        out.append(token)
    return out


def parse_args(argv: Sequence[str] | None = None, prog: str = "pretrain_gpt.py") -> ParsedArgs:
    """Parse a command line into a typed config.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).
        prog: Program name for ``--help``.

    Returns:
        The parsed config and what was given explicitly.

    Raises:
        ConfigError: Unknown flag, bad value, conflicting repeat, or failed validation.
    """
    argv = _explicit_bools([normalize_flag(a) for a in (sys.argv[1:] if argv is None else argv)])
    parser = build_parser(prog)
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        first = unknown[0]
        if first.startswith("-"):
            raise ConfigError(f"{first.split('=')[0]}: unknown flag{_suggest(first.split('=')[0])}")
        raise ConfigError(f"unexpected argument {first!r} (every option is a --flag)")
    given = vars(namespace)
    config_file = given.pop("config", None)
    dry_run = bool(given.pop("dry_run", False))
    given.pop("deepspeed", None)
    explicit = {tuple(dest.split(".")): value for dest, value in given.items()}
    values = load_config_file(config_file) if config_file else {}
    values.update(explicit)
    return ParsedArgs(
        config=build_config(values), explicit=explicit, config_file=config_file, dry_run=dry_run
    )
