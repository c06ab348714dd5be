"""The tables of foreign flags and values (``compat.py`` translates command lines with them).

``compat.py`` registers Megatron's flags here and ``compat_peers.py`` the argonne fork's and
TiC-LM's; importing ``megatron.config.compat`` fills every table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Status = Literal["implemented", "alias", "mapped", "no-op", "refused"]
Translate = Callable[[list[str], list[str]], list[str]]
"""(values given to the flag, the whole command line) -> our flags that replace it."""

@dataclass(frozen=True, kw_only=True, slots=True)
class CompatEntry:
    """One foreign flag.

    Attributes:
        flag: The flag as Megatron spells it (dashes).
        status: What we do with it.
        note: The target flag (alias, mapped) or the reason (no-op, refused), for the table.
        nargs: Values it takes: 0, 1, or ``"*"`` (every following token up to the next flag).
        translate: For ``mapped`` and ``no-op`` entries: values -> our flags (``[]`` drops it).
    """

    flag: str
    status: Status
    note: str
    nargs: int | Literal["*"] = 0
    translate: Translate | None = None


COMPAT: dict[str, CompatEntry] = {}
"""Foreign flag -> entry (mapped, no-op and refused flags; knobs are not in here)."""


def register_compat(entry: CompatEntry) -> CompatEntry:
    """Add ``entry`` to ``COMPAT`` (a flag registered twice is a programming error)."""
    if entry.flag in COMPAT:
        raise ValueError(f"compat flag {entry.flag} registered twice")
    COMPAT[entry.flag] = entry
    return entry


def mapped(flag: str, note: str, nargs: int | Literal["*"] = 1) -> Callable[[Translate], Translate]:
    """Decorator registering ``translate`` as the mapping of ``flag``."""

    def decorate(fn: Translate) -> Translate:
        register_compat(
            CompatEntry(flag=flag, status="mapped", note=note, nargs=nargs, translate=fn)
        )
        return fn

    return decorate


def no_op(flag: str, reason: str, nargs: int | Literal["*"] = 0) -> None:
    """Register ``flag`` as accepted and ignored because of ``reason``."""
    register_compat(
        CompatEntry(flag=flag, status="no-op", note=reason, nargs=nargs, translate=lambda v, a: [])
    )


def refuse(flag: str, reason: str, nargs: int | Literal["*"] = 0) -> None:
    """Register ``flag`` as refused: ``reason`` says why and what to use instead."""
    register_compat(CompatEntry(flag=flag, status="refused", note=reason, nargs=nargs))


VALUE_ALIASES: dict[str, dict[str, str]] = {
    "--tokenizer-type": {
        "GPT2BPETokenizer": "gpt2bpe",
        "SentencePieceTokenizer": "sentencepiece",
        "Llama2Tokenizer": "sentencepiece",
        "HuggingFaceTokenizer": "hf",
        "NullTokenizer": "null",
    },
}
"""Megatron's names for values of our flags (flag -> Megatron value -> ours)."""

REFUSED_VALUES: dict[str, dict[str, str]] = {}
"""Values of our flags that Megatron(-DeepSpeed) users type and we refuse: flag -> value -> reason."""
