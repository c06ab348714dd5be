"""Every registry in megatron/ is a ``megatron.registry.Registry``: flag-named errors everywhere.

- each ``Registry`` instance (found in every module that constructs one) has a ``--flag`` and an
  unknown name raises the ``ConfigError`` that starts with that flag and lists the known names;
- no module defines a hand-rolled module-level ``NAME: dict[str, ...] = {}`` registry any more
  (the data tables below are keyed by foreign flags or values, where an unknown key is not an
  error but "not one of ours": they stay plain dicts).
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import re
import sys

import pytest

from megatron.config.fields import ConfigError
from megatron.registry import Registry

ROOT = pathlib.Path(__file__).resolve().parents[2]
MEGATRON = ROOT / "megatron"
DATA_TABLES = {
    # Megatron flag -> compat entry: an unknown flag is one of ours, passed through.
    "megatron/config/compat_registry.py": {"COMPAT", "REFUSED_VALUES"},
    # Knob flag -> why it is refused when set: a row of the compatibility table.
    "megatron/config/compat_table.py": {"REFUSED_KNOBS"},
}
CONVERTED = {
    "OPTIMIZERS", "OBJECTIVES", "SCHEDULES", "TOKENIZERS", "INPUT_FORMATS", "TRAINERS",
    "REPLAY_POLICIES", "META_SCHEDULES", "SCALING_RECIPES", "TOKEN_SPANS", "RENDERERS", "TEMPLATES",
    "LOCAL_RENDERERS", "TOKENIZER_WRITERS", "EXPORTERS", "SOURCE_FORMATS", "HF_FAMILIES",
}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _registries() -> dict[str, Registry]:
    """``module.NAME`` -> registry, for every module under megatron/ that constructs one."""
    found = {}
    for path in sorted(MEGATRON.rglob("*.py")):
        if path.name != "registry.py" or path.parent != MEGATRON:
            if re.search(r"\bRegistry\(", path.read_text(encoding="utf-8")):
                importlib.import_module(_module_name(path))
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("megatron.") and module is not None:
            for name, value in vars(module).items():
                if isinstance(value, Registry) and getattr(module, "__file__", None):
                    found.setdefault(id(value), (f"{module_name}.{name}", value))
    return dict(found.values())


REGISTRIES = _registries()


def test_every_converted_registry_is_found():
    assert {name.rsplit(".", 1)[1] for name in REGISTRIES} >= CONVERTED


INTERNAL = {"megatron.checkpointing.side_states.SIDE_STATES"}
"""Registries of hooks that all run in turn (no flag names an entry): flag None, KeyError."""


def test_internal_registries_are_declared_and_raise_key_error():
    internal = {where for where, registry in REGISTRIES.items() if registry.flag is None}
    assert internal == INTERNAL
    for where in internal:
        with pytest.raises(KeyError, match="unknown .* 'no-such-entry'; known: "):
            REGISTRIES[where].get("no-such-entry")


@pytest.mark.parametrize("where", sorted(set(REGISTRIES) - INTERNAL))
def test_unknown_name_raises_the_flag_named_config_error(where):
    registry = REGISTRIES[where]
    assert re.fullmatch(r"--[a-z][a-z0-9-]*", registry.flag), registry.flag
    known = registry.names()
    assert known, f"{where}: no entries (is its loader module right?)"
    with pytest.raises(ConfigError) as e:
        registry.get("no-such-entry")
    assert str(e.value).startswith(f"{registry.flag} 'no-such-entry': unknown ")
    assert str(e.value).endswith("known: " + ", ".join(known))
    with pytest.raises(ValueError, match="registered twice"):
        registry.add(known[0], registry.get(known[0]))


def _dict_registries(path: pathlib.Path) -> set[str]:
    """Module-level CAPS names bound to an empty dict (``NAME: dict[str, X] = {}`` / ``NAME = {}``)."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        elif isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        else:
            continue
        empty = isinstance(value, ast.Dict) and not value.keys or (
            isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict"
            and not value.args and not value.keywords)
        if empty:
            found |= {t.id for t in targets
                      if isinstance(t, ast.Name) and re.fullmatch(r"[A-Z][A-Z0-9_]*", t.id)}
    return found


def test_no_hand_rolled_dict_registries():
    offenders = {}
    for path in sorted(MEGATRON.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        names = _dict_registries(path) - DATA_TABLES.get(rel, set())
        if names:
            offenders[rel] = sorted(names)
    assert offenders == {}, "use megatron.registry.Registry(kind, flag, loader=...) for these"
    # The rule can fail: the allowed data tables are still found by it.
    assert _dict_registries(MEGATRON / "config" / "compat_registry.py") == DATA_TABLES["megatron/config/compat_registry.py"]
