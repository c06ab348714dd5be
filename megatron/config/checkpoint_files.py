"""The names of the files a checkpoint directory holds, and where a checkpoint's run metadata is.

The config layer reads a checkpoint's stored flags (``--load`` inherits its model shape and
tokenizer) and the checkpointing package writes them: both take the file names from here.
"""

from __future__ import annotations

import os

LATEST_FILE = "latest"
LATEST_ITERATION_FILE = "latest_checkpointed_iteration.txt"
LATEST_UNIVERSAL_FILE = "latest_universal"
METADATA_FILE = "run_metadata.json"


def locate_metadata(load: str, universal: bool) -> str | None:
    """The ``run_metadata.json`` of the checkpoint ``--load`` names, or None when there is none
    (no checkpoint yet, or a universal one converted by DeepSpeed's own tool)."""
    if universal:
        candidates = [load]
        pointer = os.path.join(load, LATEST_UNIVERSAL_FILE)
        if os.path.isfile(pointer):
            with open(pointer) as f:
                candidates.insert(0, os.path.join(load, f.read().strip()))
    else:
        pointer = os.path.join(load, LATEST_FILE)
        if not os.path.isfile(pointer):
            return None
        with open(pointer) as f:
            candidates = [os.path.join(load, f.read().strip())]
    for directory in candidates:
        path = os.path.join(directory, METADATA_FILE)
        if os.path.isfile(path):
            return path
    return None
