"""Logging setup: one line format for every module, INFO only on the reporting rank."""

from __future__ import annotations

import logging
import sys

_FORMAT = "[%(asctime)s] %(message)s"


def setup_logging(verbose: bool) -> None:
    """Configure the root logger (idempotent).

    Args:
        verbose: Show INFO messages (the reporting rank); other ranks show warnings only.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    # DeepSpeed logs a lot at INFO through its own logger; keep its warnings only.
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    # megatron-core's dataset readers narrate every index they open.
    logging.getLogger("megatron.core").setLevel(logging.WARNING)
    try:
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
    except ImportError:
        pass
