"""Every importable format, registered by importing its module (the registry is in ``source``)."""

from __future__ import annotations

import megatron.checkpointing.importing.hf  # noqa: F401  (format "hf")
import megatron.checkpointing.importing.megatron_ds  # noqa: F401  (format "megatron-deepspeed")
from megatron.checkpointing.importing.source import SOURCE_FORMATS, detect_format
from megatron.checkpointing.metadata import CheckpointError
from megatron.config.fields import ConfigError

__all__ = ["SOURCE_FORMATS", "detect_format", "open_source"]


def open_source(path: str, fmt: str | None = None, **options: object):  # noqa: ANN201  (an ImportSource)
    """Open ``path`` as format ``fmt`` (detected when None).

    Raises:
        CheckpointError: Not a directory, or no format recognizes it.
        ConfigError: Unknown ``fmt``.
    """
    import os

    if not os.path.exists(path):
        raise CheckpointError(f"--input: {path} does not exist")
    if fmt is None:
        fmt = detect_format(path)
        if fmt is None:
            raise CheckpointError(f"--input: {path} is no format we import ({SOURCE_FORMATS.names()}); "
                                  "a Hugging Face directory needs config.json, name the format with --format")
    source_format = SOURCE_FORMATS.get(fmt)
    known = source_format.options
    for name, value in options.items():
        if value is not None and name not in known:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag}: the {fmt} format does not take it ({path} carries what it needs)")
    return source_format.open(path, **{k: v for k, v in options.items() if v is not None})
