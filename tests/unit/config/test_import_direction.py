"""Registries know nothing of config classes; config sections validate names against registries.

The rule that removed the config <-> registry import circles, kept by walking every import
statement (module level, function level and TYPE_CHECKING blocks) of the registry modules.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[3] / "megatron"
REGISTRIES = [*sorted((ROOT / "optimizer").glob("*.py")), *sorted((ROOT / "schedules").glob("*.py")),
              ROOT / "data" / "tokenizers.py"]
ALLOWED = {"megatron.config.fields"}  # errors and field helpers: no config classes


def _imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_registries_do_not_import_config_sections():
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in _imports(path)
                                            if m.startswith("megatron.config") and m not in ALLOWED)
        for path in REGISTRIES
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(REGISTRIES) > 10


def test_config_sections_validate_names_against_the_registries():
    # The other direction exists (so the rule above is the one that breaks the circles).
    from megatron.config.data import DataConfig
    from megatron.config.fields import registered_names

    ref = DataConfig.__dataclass_fields__["tokenizer_type"].metadata["names"]
    assert ref.startswith("megatron.data.tokenizers:")
    assert "byte" in registered_names(ref)
