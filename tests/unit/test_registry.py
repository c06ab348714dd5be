"""The one registry type: flag-named errors, duplicates, lazy loading, test overrides."""

from __future__ import annotations

import sys
import types

import pytest

from megatron.config.fields import ConfigError
from megatron.registry import Registry


def test_unknown_name_names_the_flag_and_the_known_names():
    reg = Registry("colour", "--colour")
    reg.add("red", 1)
    reg.register("blue")(2)
    with pytest.raises(ConfigError, match=r"^--colour 'green': unknown colour; known: blue, red$"):
        reg.get("green")
    assert reg.get("red") == 1 and reg["blue"] == 2
    assert reg.names() == ["blue", "red"] and sorted(reg) == ["blue", "red"] and len(reg) == 2
    assert dict(reg.items()) == {"red": 1, "blue": 2}


def test_registering_twice_is_an_error():
    reg = Registry("colour", "--colour")
    reg.add("red", 1)
    with pytest.raises(ValueError, match="'red' registered twice"):
        reg.add("red", 2)


def test_loader_module_is_imported_once_before_the_first_lookup(monkeypatch):
    reg = Registry("colour", "--colour", loader="_registry_test_loader")
    imports = []

    def fake_import():
        imports.append(1)
        reg.add("red", 1)

    module = types.ModuleType("_registry_test_loader")
    monkeypatch.setitem(sys.modules, "_registry_test_loader", module)
    monkeypatch.setattr("importlib.import_module", lambda name: (fake_import(), module)[1])
    assert "red" in reg and reg.names() == ["red"] and reg.get("red") == 1
    assert imports == [1]


def test_override_restores_the_registry():
    reg = Registry("colour", "--colour")
    reg.add("red", 1)
    with reg.override("red", 5), reg.override("green", 3):
        assert reg.get("red") == 5 and reg.get("green") == 3
    assert dict(reg) == {"red": 1}
    with pytest.raises(RuntimeError), reg.override("red", 7):
        raise RuntimeError
    assert reg.get("red") == 1
