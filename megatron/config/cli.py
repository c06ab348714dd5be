"""The command line, generated from the config dataclasses.

Precedence (``megatron/config/layers.py``): dataclass defaults < launcher defaults < the loaded
checkpoint's shape and tokenizer < ``--config`` files in order (YAML/JSON, our keys only) <
flags. Every value set by a layer keeps its source, printed by ``--dry-run`` and the run record.
Flags accept ``_`` or ``-`` (``--lr_constant_plus_cooldown`` is ``--lr-constant-plus-cooldown``).
A flag given twice with different values is an error (the launcher turns env vars into flags
before the user's own, so this catches ``LR=1e-4 ... --lr 3e-4``). Unknown flags are errors with
a suggestion.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from megatron.config.compat import translate_argv
from megatron.config.env import launcher_flag_sources
from megatron.config.fields import ConfigError
from megatron.config.layers import (
    LAUNCHER_SOURCE,
    Setting,
    Settings,
    checkpoint_layer,
    merge,
    parse_launcher_defaults,
    provenance,
    read_config_file,
)
from megatron.config.root import Config
from megatron.config.schema import (
    Knob,
    Path,
    build_config,
    convert,
    iter_knobs,
    knob_by_flag,
    normalize_flag,
    suggest_flag,
)

_UNSET = object()


@dataclass(frozen=True, slots=True)
class ParsedArgs:
    """The result of parsing a command line.

    Attributes:
        config: The typed config.
        explicit: Values given as flags (path -> value).
        config_files: The ``--config`` files, in the order they were merged.
        settings: Every value some layer set, with its source (see ``layers.py``).
        dry_run: Print the plan and DeepSpeed dict, then exit.
        dry_run_file: Also write that JSON to this file (implies ``dry_run``).
    """

    config: Config
    explicit: dict[Path, Any]
    config_files: tuple[str, ...]
    settings: Settings
    dry_run: bool
    dry_run_file: str | None = None

    def sources(self) -> dict[str, dict[str, Any]]:
        """``{flag: {"value", "source"}}`` of every value that is not a dataclass default."""
        return provenance(self.settings)


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
                # The negated spelling is "--no-" + a positive one; a switch whose own name starts
                # with --no- (--no-load-optim) is positive when typed as such.
                positive = {knob.flag, *(normalize_flag(a) for a in knob.aliases)}
                value = option_string in positive or not (option_string or "").startswith("--no-")
            else:
                value = convert(knob, values)
            previous = getattr(namespace, self.dest, _UNSET)
            if previous is not _UNSET and previous.value != value:
                raise ConfigError(
                    f"{knob.flag}: given twice with different values ({previous.value!r} from "
                    f"{previous.source} and {value!r} from {option_string}); if one comes from a "
                    "launcher environment variable, unset it or drop the flag"
                )
            source = launcher_flag_sources().get(knob.flag, option_string or knob.flag)
            if previous is _UNSET:
                setattr(namespace, self.dest, Setting(value, source))

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
    parser.add_argument(
        "--config",
        action="append",
        help="YAML or JSON file of flag-name: value pairs; may be repeated (later files override "
        "earlier ones key by key; flags override files)",
    )
    parser.add_argument(
        "--launcher-default",
        action="append",
        metavar="KEY=VALUE",
        help="a fallback value used only when no file, variable or flag sets KEY (train_alcf.sh "
        "passes save=auto and tensorboard_dir=auto)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved plan and DeepSpeed dict, exit"
    )
    parser.add_argument(
        "--dry-run-file",
        metavar="PATH",
        help="--dry-run that also writes its JSON to PATH (for programs: read the file, not stdout)",
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


def _launcher_precision_yields(settings: Settings) -> Settings:
    """The launcher's bf16 default (a bf16 accelerator) gives way to --fp16 from any other layer."""
    bf16, fp16 = settings.get(("train", "bf16")), settings.get(("train", "fp16"))
    if bf16 is not None and bf16.source == LAUNCHER_SOURCE and fp16 is not None and fp16.value:
        return {path: s for path, s in settings.items() if path != ("train", "bf16")}
    return settings


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
    argv = translate_argv(argv)  # Megatron(-DeepSpeed) flags: mapped, no-op or refused
    parser = build_parser(prog)
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        first = unknown[0]
        if first.startswith("-"):
            raise ConfigError(f"{first.split('=')[0]}: unknown flag{suggest_flag(first.split('=')[0])}")
        raise ConfigError(f"unexpected argument {first!r} (every option is a --flag)")
    given = vars(namespace)
    config_files = tuple(given.pop("config", None) or ())
    launcher = parse_launcher_defaults(given.pop("launcher_default", None) or [])
    dry_run_file = given.pop("dry_run_file", None)
    dry_run = bool(given.pop("dry_run", False)) or dry_run_file is not None
    given.pop("deepspeed", None)
    flags: Settings = {tuple(dest.split(".")): setting for dest, setting in given.items()}
    files = [read_config_file(path) for path in config_files]
    settings = merge(launcher, *files, flags)
    load = settings.get(("checkpoint", "load"))
    if load is not None and load.value:
        universal = settings.get(("checkpoint", "universal_checkpoint"), Setting(False, ""))
        inherited = checkpoint_layer(load.value, universal.value, settings)
        settings = merge(launcher, inherited, *files, flags)
    settings = _launcher_precision_yields(settings)
    return ParsedArgs(
        config=build_config({path: s.value for path, s in settings.items()}),
        explicit={path: s.value for path, s in flags.items()},
        config_files=config_files,
        settings=settings,
        dry_run=dry_run,
        dry_run_file=dry_run_file,
    )
