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
    except yaml.YAMLError as e:
        raise error(f"{flag}: {path} is not valid {kind}: {e}") from None
    if not construct or node is None:
        return node, None  # the caller walks the node itself (and refuses duplicates there)
    refuse_duplicate_keys(node, path, flag, error)
    try:
        value = yaml.SafeLoader("").construct_document(node)
    except yaml.YAMLError as e:
        raise error(f"{flag}: {path} is not valid {kind}: {e}") from None
    return node, value


def refuse_duplicate_keys(node: Any, path: str, flag: str, error: type[ConfigError]) -> None:
    """A key given twice in one mapping is an error (YAML loaders keep the last one silently).

    Raises:
        error: Naming the key and both lines.
    """
    import yaml

    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode):
                    line = key.start_mark.line + 1
                    if key.value in seen:
                        raise error(f"{flag}: {path}:{line}: key {key.value!r} is given twice (first "
                                    f"at line {seen[key.value]}); keep one")
                    seen[key.value] = line
                stack.append(value)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
