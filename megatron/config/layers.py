"""Layered configuration with provenance: every value knows where it came from.

Layers, lowest first (a later layer overrides an earlier one, key by key):

1. dataclass defaults (no source recorded);
2. launcher defaults (``--launcher-default save=auto``): ``train_alcf.sh``'s fallbacks, used only
   when nothing below sets the value;
3. the checkpoint being loaded: model shape and tokenizer, for the values no file, variable or
   flag gives (a given value that differs is an error naming both);
4. ``--config`` files, merged in the order given;
5. flags: from the launcher's environment variables (``LR`` -> ``--lr``) and typed by the user.
   The two cannot disagree (a flag repeated with another value is an error).

Torch-free: ``--help`` and ``--dry-run`` use it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from megatron.config.checkpoint_files import locate_metadata
from megatron.config.fields import ConfigError
from megatron.config.schema import Knob, Path, convert, knob_by_flag, normalize_flag, suggest_flag
from megatron.config.yaml_file import read_yaml

LAUNCHER_SOURCE = "train_alcf.sh default"


@dataclass(frozen=True, slots=True)
class Setting:
    """A value and where it came from (``file.yaml:3``, ``LR``, ``--lr``, ``checkpoint DIR``)."""

    value: Any
    source: str


Settings = dict[Path, Setting]


def merge(*layers: Settings) -> Settings:
    """Key-by-key merge; later layers win."""
    out: Settings = {}
    for layer in layers:
        out.update(layer)
    return out


def _lookup(key: str, where: str) -> Knob:
    knob = knob_by_flag().get(normalize_flag("--" + key))
    if knob is None:
        raise ConfigError(f"--config: unknown key {key!r} at {where}{suggest_flag('--' + key)}")
    return knob


def read_config_file(path: str) -> Settings:
    """A ``--config`` file (YAML, or JSON: a YAML subset) of flag names and values.

    Raises:
        ConfigError: Unreadable or malformed file, an unknown key, a key given twice or a bad
            value; the message names ``file:line``.
    """
    import yaml

    root, _ = read_yaml(path, "--config", kind="YAML/JSON", construct=False)
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"--config: {path} must hold a mapping of flag names to values")
    loader = yaml.SafeLoader("")
    settings: Settings = {}
    for key_node, value_node in root.value:
        where = f"{path}:{key_node.start_mark.line + 1}"
        knob = _lookup(str(key_node.value), where)
        if knob.path in settings:
            raise ConfigError(
                f"{knob.flag}: given twice in {path} ({settings[knob.path].source} and line "
                f"{key_node.start_mark.line + 1})"
            )
        raw = loader.construct_object(value_node, deep=True)
        try:
            value = convert(knob, raw)
        except ConfigError as e:
            raise ConfigError(f"{e} (at {where})") from None
        settings[knob.path] = Setting(value, where)
    return settings


def parse_launcher_defaults(items: list[str]) -> Settings:
    """``--launcher-default key=value`` items (lowest-priority values set by train_alcf.sh)."""
    settings: Settings = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--launcher-default: expected key=value, got {item!r}")
        knob = _lookup(key, "--launcher-default")
        settings[knob.path] = Setting(convert(knob, raw), LAUNCHER_SOURCE)
    return settings


# Values a checkpoint fixes: its weights' shapes and the meaning of its token ids. A run that
# loads it takes them from the checkpoint unless it gives them; --seq-length may change (context
# extension) and so is inherited but never an error.
INHERITED_KEYS = (
    "--num-layers",
    "--hidden-size",
    "--ffn-hidden-size",
    "--num-attention-heads",
    "--num-key-value-heads",
    "--kv-channels",
    "--max-position-embeddings",
    "--use-rotary-position-embeddings",
    "--rotary-base",
    "--normalization",
    "--norm-epsilon",
    "--swiglu",
    "--disable-bias-linear",
    "--untie-embeddings-and-output-weights",
    "--make-vocab-size-divisible-by",
    "--rotary-percent",
    "--add-qkv-bias",
    "--use-rope-scaling",
    "--rope-scaling-factor",
    "--rotary-seq-len-interpolation-factor",
    "--use-parallel-residual",
    "--openai-gelu",
    "--qk-layernorm",
    "--qk-layernorm-scope",
    "--norm-placement",
    "--tokenizer-type",
    "--tokenizer-model",
    "--vocab-file",
    "--merge-file",
)
FREE_KEYS = ("--seq-length",)


def checkpoint_config(load: str, universal: bool) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """The flat ``{flag: value}`` config stored with the checkpoint ``--load`` would load.

    Returns:
        (config, limits, the metadata file), with limits the ``{flag: {"max", "why"}}`` bounds an
        import records (``ImportSource.limits``: a sliding window); or None when there is no
        checkpoint (yet) or it carries no readable metadata (the trainer's own checks then
        report what is wrong).
    """
    path = locate_metadata(load, universal)
    if path is None:
        return None
    try:
        with open(path) as f:
            document = json.load(f)
    except (OSError, ValueError):
        return None
    return document.get("config") or {}, document.get("limits") or {}, path


def _check_limits(limits: dict[str, Any], given: Settings, table: dict[str, Knob], where: str) -> None:
    for flag, limit in limits.items():
        setting = given.get(table[flag].path) if flag in table else None
        if setting is not None and setting.value > limit["max"]:
            raise ConfigError(
                f"{flag}: {setting.value} (from {setting.source}) is longer than the {limit['max']} the "
                f"checkpoint being loaded ({where}) allows: {limit['why']}; give {flag} {limit['max']} "
                "or less"
            )


def checkpoint_layer(load: str, universal: bool, given: Settings) -> Settings:
    """Model shape and tokenizer from the checkpoint for every value ``given`` does not set.

    Raises:
        ConfigError: A given shape/tokenizer value differs from the checkpoint's; names both.
    """
    found = checkpoint_config(load, universal)
    if found is None:
        return {}
    saved, limits, path = found
    table = knob_by_flag()
    where = f"checkpoint {os.path.dirname(path)}"
    _check_limits(limits, given, table, os.path.dirname(path))
    settings: Settings = {}
    for flag in INHERITED_KEYS + FREE_KEYS:
        if flag not in saved or flag not in table:
            continue
        knob = table[flag]
        value = convert(knob, saved[flag])
        if knob.path not in given:
            settings[knob.path] = Setting(value, where)
        elif flag in INHERITED_KEYS and given[knob.path].value != value:
            raise ConfigError(
                f"{flag}: {given[knob.path].value!r} (from {given[knob.path].source}) differs from "
                f"the {value!r} of the checkpoint being loaded ({os.path.dirname(path)}); drop the "
                "value to take the checkpoint's, or load another checkpoint"
            )
    return settings


def provenance(settings: Settings) -> dict[str, dict[str, Any]]:
    """``{flag: {"value", "source"}}`` for every value some layer set, in flag order."""
    table = {k.path: k for k in knob_by_flag().values()}
    rows = {table[path].flag: {"value": s.value, "source": s.source} for path, s in settings.items()}
    return dict(sorted(rows.items()))
