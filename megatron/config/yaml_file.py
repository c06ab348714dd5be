"""Reading a YAML file (a ``--config`` layer, a stage plan) with errors that name the flag.

Parsed once: the composed node keeps line numbers for ``file:line`` messages, and the value is
constructed from it (safe tags only).
"""

from __future__ import annotations

from typing import Any

from megatron.config.fields import ConfigError


def read_yaml(
    path: str, flag: str, *, error: type[ConfigError] = ConfigError, kind: str = "YAML", construct: bool = True
) -> tuple[Any, Any]:
    """``(node, value)`` of the YAML file ``path``; both None for an empty file, value None
    without ``construct``.

    Raises:
        error: The file cannot be read, or is not valid ``kind``; the message starts with ``flag``.
    """
    import yaml

    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise error(f"{flag}: cannot read {path}: {e.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        value = yaml.SafeLoader("").construct_document(node) if construct and node is not None else None
    except yaml.YAMLError as e:
        raise error(f"{flag}: {path} is not valid {kind}: {e}") from None
    return node, value
