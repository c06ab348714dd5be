"""Side files that training callbacks write into a checkpoint, and how a universal conversion
carries them.

A callback's ``on_save`` may write files into ``global_stepN/`` (EWC's anchor and LwF's teacher:
``continual/tp{t}_pp{p}_dp{d}.pt``). The universal converter does not know their layout: each
kind registers a ``SideState`` here (its module is the registry's loader), and the converter runs
every entry's ``convert`` after the weights and its ``verify`` in the verification pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from megatron.checkpointing.reader import SavedCheckpoint
from megatron.registry import Registry


@dataclass(frozen=True, slots=True)
class SideState:
    """How one kind of side file goes through a universal conversion.

    Attributes:
        convert: ``convert(source checkpoint, universal directory)`` writes the merged files and
            returns what it carried (names for the conversion report; empty when the source
            holds none).
        verify: ``verify(universal directory, source checkpoint)`` raises ``CheckpointError`` on
            the first difference from the source.
    """

    convert: Callable[[SavedCheckpoint, str], list[str]]
    verify: Callable[[str, SavedCheckpoint], None]


SIDE_STATES: Registry[SideState] = Registry(
    "checkpoint side state", None, loader="megatron.continual.universal_state")
"""Every kind of side file a universal conversion carries, by name (internal: the converter runs
every entry; no flag names one)."""
